"""What bfloat16 embedding costs and changes, against float32, in one run.

The same model loaded twice (`load_model(..., precision=...)`) embeds the same LFW crops,
float32 and bfloat16 in turn, `--rounds` times, so a shared machine's load falls on both
alike. Printed: images/s of each (medians) and their ratio; how far each face's vector
moved (cosine to its float32 vector: minimum and mean); and how much the distance of every
pair of those faces changed (the number a threshold is compared with): largest and mean.

    python bench/precision.py [--model human] [--photos 256] [--threads 1] [--rounds 3]

bfloat16 is faster only where the CPU has matrix units for it (AMX: Intel Sapphire Rapids
and later); elsewhere `FACESEARCH_PRECISION=auto` stays float32, and this benchmark shows
what forcing it would cost.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.checkpoint import embedding_precision, load_model  # noqa: E402
from faces.detectors import get_detector  # noqa: E402
from faces.imaging import load_image  # noqa: E402
from trainer.data import scan_identities  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default="human")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {precision: load_model(args.model, device="cpu", precision=precision)
              for precision in ("float32", "bfloat16")}
    crop = get_detector("none", models["float32"].preprocess)
    paths = [sample.path for sample in scan_identities(args.data)[:args.photos]]
    crops = torch.stack([models["float32"].preprocess.to_uint8(crop(load_image(path))[0].image) for path in paths])
    vectors, rates = {}, {precision: [] for precision in models}
    for precision, model in models.items():          # warm
        model.embed_crops(crops[:8])
    for _ in range(args.rounds):
        for precision, model in models.items():
            started = time.perf_counter()
            vectors[precision] = model.embed_crops(crops, batch_size=64)
            rates[precision].append(len(crops) / (time.perf_counter() - started))
    cosine = (vectors["float32"] * vectors["bfloat16"]).sum(1)
    upper = np.triu_indices(len(crops), 1)

    def distances(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(2 - 2 * (v @ v.T), 0, None))[upper]
    change = np.abs(distances(vectors["float32"]) - distances(vectors["bfloat16"]))
    speed = {precision: round(statistics.median(r), 1) for precision, r in rates.items()}
    print(json.dumps({
        "model": args.model, "faces": len(crops), "threads": args.threads, "rounds": args.rounds,
        "auto_here": embedding_precision("cpu", "auto"),
        "images_per_s": speed, "bfloat16_speed_ratio": round(speed["bfloat16"] / speed["float32"], 2),
        "cosine_to_float32": {"min": round(float(cosine.min()), 6), "mean": round(float(cosine.mean()), 6)},
        "pair_distance_change": {"pairs": int(len(change)), "max": round(float(change.max()), 5),
                                 "mean": round(float(change.mean()), 6)},
    }, indent=1))


if __name__ == "__main__":
    main()
