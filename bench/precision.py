"""What bfloat16 embedding costs and changes, against float32, in one run.

The same model loaded twice (`load_model(..., precision=...)`) embeds the same LFW crops,
float32 and bfloat16 in turn, `--rounds` times, so a shared machine's load falls on both
alike. Printed: images/s of each (medians) and their ratio; how far each face's vector
moved (cosine to its float32 vector: minimum and mean); and how much the distance of every
pair of those faces changed (the number a threshold is compared with): largest and mean.

    python bench/precision.py [--model human] [--photos 256] [--threads 1] [--rounds 3] [--training]

--training adds what `trainer train` gets from its bfloat16 autocast on the CPU: a training
step (forward and backward of a batch of 64 of those faces, the trainable network as the
checkpoint holds it) in float32 and in bfloat16, interleaved, as steps/s and their ratio.

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
from faces.checkpoint import load_model  # noqa: E402
from faces.precision import compute_precision  # noqa: E402
from trainer.data import load_faces, scan_identities  # noqa: E402
from trainer.evaluate import distance_matrix  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default="human")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--training", action="store_true", help="also time training steps each way")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {precision: load_model(args.model, device="cpu", precision=precision)
              for precision in ("float32", "bfloat16")}
    paths = [sample.path for sample in scan_identities(args.data)[:args.photos]]
    crops, _, _ = load_faces(paths, models["float32"].preprocess, progress=False)
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
    change = np.abs(distance_matrix(vectors["float32"], vectors["float32"])[upper]
                    - distance_matrix(vectors["bfloat16"], vectors["bfloat16"])[upper])
    speed = {precision: round(statistics.median(r), 1) for precision, r in rates.items()}
    training = training_steps(models["float32"], crops[:64], args.rounds) if args.training else None
    print(json.dumps({
        "model": args.model, "faces": len(crops), "threads": args.threads, "rounds": args.rounds,
        "auto_here": compute_precision("cpu", "auto"),
        "images_per_s": speed, "bfloat16_speed_ratio": round(speed["bfloat16"] / speed["float32"], 2),
        "cosine_to_float32": {"min": round(float(cosine.min()), 6), "mean": round(float(cosine.mean()), 6)},
        "pair_distance_change": {"pairs": int(len(change)), "max": round(float(change.max()), 5),
                                 "mean": round(float(change.mean()), 6)},
        **({"training_steps_per_s": training,
            "training_bfloat16_speed_ratio": round(training["bfloat16"] / training["float32"], 2)} if training else {}),
    }, indent=1))


def training_steps(model, crops: torch.Tensor, rounds: int) -> dict[str, float]:
    """Forward and backward steps/s of the trainable network on one batch, float32 against
    bfloat16 autocast (as trainer.train runs it on such a CPU)."""
    net = model.net.train()
    inputs = model.preprocess.normalise(crops)
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for round_ in range(rounds + 1):
        for precision in rates:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                loss = net(inputs).float().pow(2).sum()
            loss.backward()
            net.zero_grad(set_to_none=True)
            if round_:                                # the first round warms up
                rates[precision].append(1.0 / (time.perf_counter() - started))
    net.eval()
    return {precision: round(statistics.median(r), 3) for precision, r in rates.items()}


if __name__ == "__main__":
    main()
