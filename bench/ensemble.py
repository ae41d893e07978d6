"""Two models as one: each face's two embeddings concatenated (and scaled back to unit
length), against each model alone, with `trainer evaluate`'s numbers on the same faces.

Each model crops the faces as its own checkpoint asks (its input size), so a 224 px model
sees DogFaceNet's 224 px images, not a 150 px model's crops enlarged. The ensemble costs
both networks' passes: the speed cost is the two models' embedding times added.

    python bench/ensemble.py --models dog,runs/dog-bh-224sh/best.pt --data runs/dog-split/choose --pairs runs/dog-split/choose_pairs.txt [--flip]

The measurement that led to `trainer ensemble` (issue 20: an ensemble of two runs): it
tries a pair before a checkpoint is made of it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.checkpoint import load_model  # noqa: E402
from trainer.evaluate import (EvaluationInputs, EvaluationSet, low_far_metrics, open_set_metrics,  # noqa: E402
                              REPORT_FPIRS, search_metrics, verification_metrics)


def scores(inputs: EvaluationInputs) -> dict:
    verification = verification_metrics(inputs.pair_distances, inputs.pair_same)
    search = search_metrics(inputs.embeddings, inputs.labels)
    low = low_far_metrics(inputs)
    open_set = open_set_metrics(inputs.embeddings, inputs.labels, fpirs=REPORT_FPIRS)
    return {"accuracy": round(verification["accuracy"], 4), "auc": round(verification["auc"], 4),
            "tar_at_far_1e-3": round(low["tar_at_far_1e-3"], 4), "tar_at_far_1e-4": round(low["tar_at_far_1e-4"], 4),
            "rank1": round(search["rank1"], 4), "rank5": round(search["rank5"], 4), "map": round(search["map"], 4),
            "fnir_at_fpir_0.05": round(open_set["fnir_at_fpir_0.05"], 4),
            "fnir_at_fpir_0.01": round(open_set["fnir_at_fpir_0.01"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="two models, comma-separated")
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--flip", action="store_true", help="average each face with its mirror image in both models "
                                                           "(default: as each checkpoint says)")
    args = parser.parse_args()
    names = args.models.split(",")
    if len(names) != 2:
        parser.error("--models takes two models")
    parts = []
    for name in names:
        model = load_model(name)
        model.flip_average = model.flip_average or args.flip
        inputs = EvaluationSet(args.data, args.pairs, model.preprocess, progress=False).embed(model)
        print(json.dumps({"model": name, **scores(inputs)}), flush=True)
        parts.append(inputs)
    first, second = parts
    if not (np.array_equal(first.labels, second.labels) and np.array_equal(first.pair_same, second.pair_same)):
        raise SystemExit("the two models did not read the same faces")
    joined = np.concatenate([first.embeddings, second.embeddings], 1) / np.sqrt(2)
    # Unit vectors side by side: a pair's squared distance is the mean of the two models'.
    distances = np.sqrt((first.pair_distances ** 2 + second.pair_distances ** 2) / 2)
    print(json.dumps({"model": "+".join(names), **scores(
        EvaluationInputs(joined, first.labels, first.names, distances, first.pair_same))}), flush=True)


if __name__ == "__main__":
    main()
