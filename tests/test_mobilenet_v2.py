"""MobileNetV2 as Keras builds it (faces/mobilenet_v2.py) and the converter of nsfwjs' weights."""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
import torch

from faces.checkpoint import load_model
from faces.mobilenet_v2 import MobileNetV2, SamePadding

REPO = Path(__file__).resolve().parents[1]


def test_a_stride_two_convolution_pads_as_tensorflow_same():
    # TF's "same": an even side gets its one pixel of padding after it, an odd side one each side.
    even = torch.arange(16.0).view(1, 1, 4, 4)
    assert SamePadding()(even)[0, 0, 0].tolist() == [0, 1, 2, 3, 0]
    assert SamePadding()(even).shape[-2:] == (5, 5)
    odd = torch.arange(9.0).view(1, 1, 3, 3)
    assert SamePadding()(odd)[0, 0, 1].tolist() == [0, 0, 1, 2, 0]


def test_the_backbone_gives_1280_features_at_any_size():
    net = MobileNetV2().eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 224, 224)).shape == (2, 1280)
        assert net(torch.rand(1, 3, 150, 150)).shape == (1, 1280)   # odd sides on the way down


def keras_weights(net: MobileNetV2) -> dict[str, np.ndarray]:
    """The network's weights under Keras' names and in TensorFlow's layouts."""
    sys.path.insert(0, str(REPO / "tools"))
    from convert_nsfwjs_mobilenet import keras_layers
    weights = {}
    for block, conv_name, bn_name in keras_layers(net):
        conv = next(m for m in block if isinstance(m, torch.nn.Conv2d))
        bn = next(m for m in block if isinstance(m, torch.nn.BatchNorm2d))
        kernel = conv.weight.detach().numpy()
        if conv.groups > 1:
            weights[f"{conv_name}/depthwise_kernel"] = kernel.transpose(2, 3, 0, 1)
        else:
            weights[f"{conv_name}/kernel"] = kernel.transpose(2, 3, 1, 0)
        for source, tensor in (("gamma", bn.weight), ("beta", bn.bias), ("moving_mean", bn.running_mean),
                               ("moving_variance", bn.running_var)):
            weights[f"{bn_name}/{source}"] = tensor.detach().numpy()
    return weights


def write_nsfwjs_folder(folder: Path, weights: dict[str, np.ndarray]) -> None:
    """The two JavaScript files nsfwjs ships a model as: a manifest of 8-bit weights, and
    their bytes as one base64 string."""
    entries, codes = [], []
    for name, array in weights.items():
        low, high = float(array.min()), float(array.max())
        scale = (high - low) / 255 or 1.0
        codes.append(np.round((array - low) / scale).astype(np.uint8).ravel())
        shape = ",".join(str(n) for n in array.shape)
        entries.append(f'{{name:"{name}",shape:[{shape}],dtype:"float32",'
                       f'quantization:{{min:{low!r},scale:{scale!r},dtype:"uint8"}}}}')
    folder.mkdir()
    (folder / "model.min.js").write_text("a.exports={modelTopology:{},weightsManifest:[{paths:[\"group1-shard1of1\"],"
                                         f"weights:[{','.join(entries)}]}}]}}")
    data = base64.b64encode(np.concatenate(codes).tobytes()).decode()
    (folder / "group1-shard1of1.min.js").write_text(f'!function(){{h.exports="{data}"}}')


def test_the_converter_places_every_keras_weight(tmp_path):
    torch.manual_seed(1)
    source = MobileNetV2().eval()
    for module in source.modules():   # batch norms that are not the identity, so misplacing them shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    write_nsfwjs_folder(tmp_path / "mobilenet_v2", keras_weights(source))
    from convert_nsfwjs_mobilenet import main
    out = tmp_path / "init.pt"
    main.main([str(tmp_path / "mobilenet_v2"), str(out)], standalone_mode=False)

    model = load_model(out)
    assert model.net.arch == "mobilenet_v2" and model.preprocess.input_size == 224
    assert model.preprocess.mean == (0.0, 0.0, 0.0) and model.preprocess.std == (1.0, 1.0, 1.0)
    converted = model.net.backbone.eval()
    for (name, a), b in zip(source.state_dict().items(), converted.state_dict().values()):
        if a.is_floating_point():
            # 8-bit codes: each value within half a step of its tensor's range
            step = float(a.max() - a.min()) / 255
            assert torch.allclose(a, b, atol=step / 2 + 1e-6), name
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = source(x), converted(x)
    assert torch.nn.functional.cosine_similarity(expected, got).min() > 0.99
