"""Record the original BlazeFace's outputs as a test fixture (tests/data/blazeface_tfjs.npz),
once: the TF.js graph model run by the pure-JavaScript @tensorflow/tfjs in node (no native
binary), on three inputs that tests/test_blazeface.py rebuilds: an LFW photo, the middle of
the group photo, and a synthetic pattern.

    cd /tmp/tfjs && npm install @tensorflow/tfjs@4.22.0
    python tools/blazeface_fixture.py /tmp/package/models/blazeface-back.json /tmp/tfjs ../shared/data
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256
OUTPUTS = ("scores16", "scores8", "boxes16", "boxes8")   # the graph's Identity .. Identity_3


def equivalence_inputs(data_root: Path) -> np.ndarray:
    """3 x 256 x 256 x 3 float32 in -1..1, the network's input."""
    lfw = Image.open(data_root / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").convert("RGB")
    group = Image.open(data_root / "samples" / "group_photo.jpg").convert("RGB")
    side = min(group.size)
    left = (group.width - side) // 2
    group = group.crop((left, 0, left + side, side))
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    pattern = np.stack([np.sin(x / 7.0), np.cos(y / 11.0), np.sin((x + y) / 17.0)], -1)
    pictures = [np.asarray(picture.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 127.5 - 1
                for picture in (lfw, group)]
    return np.stack(pictures + [pattern]).astype(np.float32)


def main(model_json: str, tfjs_folder: str, data_root: str) -> None:
    inputs = equivalence_inputs(Path(data_root))
    script = Path(__file__).with_name("run_blazeface_tfjs.js")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "inputs.bin"
        raw.write_bytes(inputs.tobytes())
        subprocess.run(["node", str(script), model_json, str(raw), str(len(inputs)), f"{tmp}/out"],
                       check=True, env={"NODE_PATH": str(Path(tfjs_folder) / "node_modules"), "PATH": "/usr/bin:/bin"})
        outputs = {name: np.stack([np.fromfile(f"{tmp}/out_{i}_{j}.bin", np.float32) for i in range(len(inputs))])
                   for j, name in enumerate(OUTPUTS)}
    scores = np.concatenate([outputs["scores16"], outputs["scores8"]], 1)
    boxes = np.concatenate([outputs["boxes16"].reshape(len(inputs), -1, 16),
                            outputs["boxes8"].reshape(len(inputs), -1, 16)], 1)
    target = Path(__file__).resolve().parents[1] / "tests" / "data" / "blazeface_tfjs.npz"
    target.parent.mkdir(exist_ok=True)
    np.savez_compressed(target, scores=scores, boxes=boxes)
    print(f"wrote {target}: scores {scores.shape}, boxes {boxes.shape}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
