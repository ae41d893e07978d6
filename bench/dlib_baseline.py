"""face_recognition (dlib) on the same pairs `trainer evaluate` scores, with the same
10-fold protocol, so the bundled human model can be compared with what users would pick.

    python bench/dlib_baseline.py --data runs/human-long/split/val --pairs runs/human-long/split/val_pairs.txt

dlib finds the face with its HOG detector; where it finds none (LFW has a few hard
crops) it is given LFW's central box, so every pair is scored.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from trainer.data import read_pairs
from trainer.evaluate import verification_metrics
from faces.imaging import load_image


def encode(path, face_recognition) -> np.ndarray:
    array = np.asarray(load_image(path))
    boxes = face_recognition.face_locations(array) or [
        (array.shape[0] // 4, 3 * array.shape[1] // 4, 3 * array.shape[0] // 4, array.shape[1] // 4)]
    return face_recognition.face_encodings(array, boxes[:1])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", required=True)
    args = parser.parse_args()
    import face_recognition
    pairs = read_pairs(args.pairs, args.data)
    started = time.perf_counter()
    cache = {}
    for pair in pairs:
        for path in (pair.first, pair.second):
            if path not in cache:
                cache[path] = encode(path, face_recognition)
    distances = np.array([np.linalg.norm(cache[p.first] - cache[p.second]) for p in pairs])
    metrics = verification_metrics(distances, np.array([p.same for p in pairs]))
    metrics.pop("roc")
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"model": "face_recognition (dlib ResNet, 128-D)", **metrics}))


if __name__ == "__main__":
    main()
