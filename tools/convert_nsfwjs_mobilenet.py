"""Convert the MobileNetV2 that npm's nsfwjs ships into a facesearch checkpoint to train from
(`trainer train --init`). Run once:

    cd /tmp && npm pack nsfwjs@4.4.0 && tar xzf nsfwjs-4.4.0.tgz
    python tools/convert_nsfwjs_mobilenet.py /tmp/package/dist/models/mobilenet_v2 runs/mobilenet-v2-imagenet.pt

nsfwjs (MIT licence, Infinite Red) is Keras' ImageNet MobileNetV2 with blocks 11-16 and a new
head trained to sort photos into five classes; blocks 0-10 were frozen there, so they are
Keras' ImageNet weights (stored as 8-bit codes: value = min + scale x code, per tensor). The
package stores the TF.js model as two JavaScript files: `model.min.js` holds the Keras
topology and the weight manifest, `group1-shard1of1.min.js` the weights as one base64 string.

The checkpoint holds the backbone (faces/mobilenet_v2.py) and a new, seeded embedding head;
nsfwjs' own head is left out. Its operating point is a placeholder: it is a starting point,
not a model to search with.

`--compare-tfjs DIR` (DIR holding node_modules with `npm install @tensorflow/tfjs@4.22.0`)
then runs the original TF.js model in node (tools/run_nsfwjs_mobilenet_tfjs.js) and the
converted backbone on two photos of ../shared/data and prints the largest difference of
their pooled features (measured: 1.6e-4).
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.checkpoint import save_checkpoint  # noqa: E402
from faces.imaging import Preprocess  # noqa: E402
from faces.mobilenet_v2 import MobileNetV2  # noqa: E402
from faces.models import EmbeddingNet  # noqa: E402

WEIGHT = re.compile(r'\{name:"([^"]+)",shape:\[([\d,]*)\],dtype:"float32",'
                    r'quantization:\{min:([-+.\de]+),scale:([-+.\de]+),dtype:"uint8"\}\}')
SHARD = re.compile(r'exports="([A-Za-z0-9+/=]+)"')


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every weight of the TF.js model, dequantized to float32, by its Keras name."""
    manifest = WEIGHT.findall((folder / "model.min.js").read_text())
    shards = sorted(folder.glob("group1-shard*of*.min.js"))
    data = b"".join(base64.b64decode(SHARD.search(shard.read_text()).group(1)) for shard in shards)
    weights, offset = {}, 0
    for name, shape, low, scale in manifest:
        shape = [int(n) for n in shape.split(",")] if shape else []
        count = int(np.prod(shape)) if shape else 1
        codes = np.frombuffer(data, np.uint8, count, offset)
        weights[name] = (float(low) + float(scale) * codes.astype(np.float32)).reshape(shape)
        offset += count
    if not manifest or offset != len(data):
        raise SystemExit(f"{folder}: {len(manifest)} weights read, {len(data) - offset} bytes left over; "
                         f"not the nsfwjs MobileNetV2 this tool knows")
    return weights


def keras_layers(net: MobileNetV2):
    """(convolution + batch norm block, Keras name of its convolution, of its batch norm), in order."""
    yield net.stem, "Conv1", "bn_Conv1"
    for i, block in enumerate(net.blocks):
        prefix = "expanded_conv" if i == 0 else f"block_{i}"
        if block.expand is not None:
            yield block.expand, f"{prefix}_expand", f"{prefix}_expand_BN"
        yield block.depthwise, f"{prefix}_depthwise", f"{prefix}_depthwise_BN"
        yield block.project, f"{prefix}_project", f"{prefix}_project_BN"
    yield net.last, "Conv_1", "Conv_1_bn"


def load_keras_weights(net: MobileNetV2, weights: dict[str, np.ndarray]) -> None:
    used = set()
    for block, conv_name, bn_name in keras_layers(net):
        conv = next(m for m in block if isinstance(m, torch.nn.Conv2d))
        bn = next(m for m in block if isinstance(m, torch.nn.BatchNorm2d))
        depthwise = conv.groups > 1
        key = f"{conv_name}/{'depthwise_kernel' if depthwise else 'kernel'}"
        # TF: H x W x in x out (depthwise: H x W x channels x 1) -> PyTorch: out x in x H x W.
        kernel = weights[key].transpose(2, 3, 0, 1) if depthwise else weights[key].transpose(3, 2, 0, 1)
        if tuple(kernel.shape) != tuple(conv.weight.shape):
            raise SystemExit(f"{key}: shape {kernel.shape}, expected {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        for target, source in ((bn.weight, "gamma"), (bn.bias, "beta"), (bn.running_mean, "moving_mean"),
                               (bn.running_var, "moving_variance")):
            target.data.copy_(torch.from_numpy(weights[f"{bn_name}/{source}"]))
        used |= {key} | {f"{bn_name}/{s}" for s in ("gamma", "beta", "moving_mean", "moving_variance")}
    left = sorted(name for name in weights if name not in used and not name.startswith("dense_"))
    if left:
        raise SystemExit(f"weights not placed: {', '.join(left)}")


def compare_with_tfjs(folder: Path, net: MobileNetV2, tfjs: Path, data: Path) -> float:
    """Largest difference between the TF.js model's pooled features and the backbone's, on a
    dog and a person of the shared data resized to 224 px (the same float inputs to both)."""
    from PIL import Image
    dog = sorted((data / "dogfacenet" / "images").glob("*/*.jpg"))[0]
    person = data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    inputs = np.stack([np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32)
                       / 255 for path in (dog, person)])
    with tempfile.TemporaryDirectory() as tmp:
        inputs.tofile(Path(tmp) / "in.bin")
        script = Path(__file__).with_name("run_nsfwjs_mobilenet_tfjs.js")
        subprocess.run(["node", str(script), str(folder.resolve()), str(Path(tmp) / "in.bin"), "2",
                        str(Path(tmp) / "out.bin")], cwd=tfjs, check=True, capture_output=True,
                       env={**os.environ, "NODE_PATH": str(tfjs.resolve() / "node_modules")})
        expected = np.fromfile(Path(tmp) / "out.bin", np.float32).reshape(2, -1)
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(inputs).permute(0, 3, 1, 2)).numpy()
    return float(np.abs(expected - got).max())


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--species", default="dog", show_default=True, help="species the network will be trained for")
@click.option("--embedding-dim", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True, help="seed of the new embedding head")
@click.option("--compare-tfjs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="folder with @tensorflow/tfjs installed: also run the original in node and compare")
@click.option("--data", default="../shared/data", show_default=True, type=click.Path(path_type=Path),
              help="the shared data, for --compare-tfjs's photos")
def main(folder: Path, out: Path, species: str, embedding_dim: int, seed: int, compare_tfjs: Path | None,
         data: Path) -> None:
    """FOLDER: nsfwjs' dist/models/mobilenet_v2; OUT: the checkpoint to write."""
    torch.manual_seed(seed)
    net = EmbeddingNet("mobilenet_v2", embedding_dim)
    load_keras_weights(net.backbone, read_weights(folder))
    # 0..1 input, as nsfwjs feeds it: the batch norms' running statistics were gathered so.
    preprocess = Preprocess(input_size=224, crop=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), alignment="lfw")
    save_checkpoint(out, net, preprocess, species, threshold=1.0, half=False,
                    training={"command": "python " + " ".join(sys.argv),
                              "source": "npm nsfwjs 4.4.0, dist/models/mobilenet_v2 (MIT, Infinite Red)"})
    click.echo(f"{out}: MobileNetV2 backbone from {folder}, new {embedding_dim}-D head (seed {seed})")
    if compare_tfjs is not None:
        difference = compare_with_tfjs(folder, net.backbone, compare_tfjs, data)
        click.echo(f"largest difference from the TF.js model's pooled features on two photos: {difference:.2g}")


if __name__ == "__main__":
    main()
