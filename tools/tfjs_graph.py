"""Read a TF.js graph model (model.json and the .bin shards beside it), as npm packages ship
them: the graph and its weights by name. The converters in tools/ place those weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# How a weight may be stored: as itself, or quantized to float16 (read back as float32).
STORED = {"float32": np.float32, "int32": np.int32, "float16": np.float16}


def read_graph_model(model_json: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The graph (model.json as read) and every weight by name, float16 ones as float32."""
    graph = json.loads(model_json.read_text())
    weights: dict[str, np.ndarray] = {}
    for group in graph["weightsManifest"]:
        data = b"".join((model_json.parent / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            stored = spec.get("quantization", {}).get("dtype", spec["dtype"])
            if stored not in STORED:
                raise SystemExit(f"{spec['name']}: weights stored as {stored} are not handled")
            array = np.frombuffer(data, STORED[stored], count, offset)
            weights[spec["name"]] = (array.astype(np.float32) if stored == "float16" else array).reshape(spec["shape"])
            offset += count * np.dtype(STORED[stored]).itemsize
        if offset != len(data):
            raise SystemExit(f"{model_json}: {len(data) - offset} bytes of weights left over")
    return graph, weights
