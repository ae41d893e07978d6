"""How a model's gallery calibration holds on people it never saw, measured on the choose
identities alone (cross-fitting), and the default FPIR aim that keeps "at most 5%".

    python bench/calibration_transfer.py --model human --choose runs/lfw-split/choose \\
        --distractors runs/lfw-split/train --grow-with-distractors
    python bench/calibration_transfer.py --model dog --choose runs/dog-split/choose \\
        --distractors runs/dog-split/train

`trainer calibrate` fits a model's stranger statistics on the choose identities, and every
search then meets strangers the calibration never saw. To see what that costs without
touching the test identities, each split draws half of the choose identities at random,
fits a calibration on them as `trainer calibrate` does (trainer.evaluate.gallery_calibration,
its galleries grown with the --distractors when --grow-with-distractors is given, as `trainer
calibrate --grow-with` does), and reads the FPIR its thresholds reach on the other half with
bench/open_set.py's protocol (the gallery as it is, and with the --distractors added), then
the halves swap. A stranger is named when its nearest gallery face is within the threshold,
which is what `search identify` and the `match` flags do.

The default FPIR asked for (faces.open_set.DEFAULT_FPIR) is the largest aim on the grid whose
reads average at most PROMISE_SHARE of the promise at every gallery: a calibration aimed at
the promise itself is right on average, so about half of all galleries of new people would
see more than the promise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faces.checkpoint import load_model  # noqa: E402
from faces.errors import ModelError  # noqa: E402
from faces.open_set import FPIR_PROMISE, GalleryCalibration  # noqa: E402
from open_set import Setup, cache_key, embed_folder, facesearch_encoder  # noqa: E402
from trainer.evaluate import gallery_calibration, nearest_neighbours  # noqa: E402

AIMS = (0.05, 0.045, 0.04, 0.035, 0.03, 0.01)
# The default aim: reads on unseen people average at most this share of the promise.
PROMISE_SHARE = 0.9


def reads(embeddings, identities, filler, halves, grow: bool, seed: int) -> list[dict]:
    """Fit on one half, read on the other, both ways: one row per (direction, gallery)."""
    rows = []
    for fit_half, read_half in ((0, 1), (1, 0)):
        fit, read = np.isin(identities, halves[fit_half]), np.isin(identities, halves[read_half])
        calibration = GalleryCalibration.from_dict(
            gallery_calibration(embeddings[fit], identities[fit], filler=filler if grow else None, seed=seed))
        setup = Setup(identities[read], filler[1])
        everything = np.concatenate([embeddings[read], filler[0]])
        for gallery_name, gallery in setup.galleries.items():
            size = setup.size(gallery)
            _, nearest = nearest_neighbours(everything[setup.strangers], everything[gallery], 1)
            row = {"split": seed, "fitted_on": fit_half, "gallery": gallery_name, **size,
                   "strangers": len(setup.strangers)}
            for aim in AIMS:
                try:
                    threshold = calibration.threshold(aim, size["individuals"], size["faces"])
                except ModelError:      # refused, as a search would be: no read
                    row[f"fpir_at_aim_{aim}"] = None
                    continue
                row[f"fpir_at_aim_{aim}"] = float(np.mean(nearest[:, 0] <= threshold))
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per gallery: each aim's mean read, its spread, and the share of reads over the promise;
    and the default aim the rule picks."""
    table = {}
    for gallery in dict.fromkeys(r["gallery"] for r in rows):
        chosen = [r for r in rows if r["gallery"] == gallery]
        table[gallery] = {"reads": len(chosen),
                          "faces": round(float(np.mean([r["faces"] for r in chosen]))),
                          "individuals": round(float(np.mean([r["individuals"] for r in chosen]))),
                          "strangers": round(float(np.mean([r["strangers"] for r in chosen])))}
        for aim in AIMS:
            values = np.array([r[f"fpir_at_aim_{aim}"] for r in chosen if r[f"fpir_at_aim_{aim}"] is not None])
            table[gallery][str(aim)] = ({"mean": round(float(values.mean()), 4), "sd": round(float(values.std()), 4),
                                         "over_promise": round(float(np.mean(values > FPIR_PROMISE)), 2),
                                         "refused": len(chosen) - len(values)}
                                        if len(values) else {"mean": None, "refused": len(chosen)})
    keeping = [aim for aim in AIMS if aim <= FPIR_PROMISE
               and all(t[str(aim)]["mean"] is not None and t[str(aim)]["mean"] <= PROMISE_SHARE * FPIR_PROMISE
                       for t in table.values())]
    return {"galleries": table, "default_aim": max(keeping) if keeping else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="human", help="bundled model name or checkpoint path")
    parser.add_argument("--choose", required=True, help="the identities choices are made on")
    parser.add_argument("--distractors", required=True, help="other identities that grow the read galleries")
    parser.add_argument("--grow-with-distractors", action="store_true",
                        help="grow the calibration's galleries with them too (as `trainer calibrate --grow-with`)")
    parser.add_argument("--splits", type=int, default=50, help="random halvings (each read both ways)")
    parser.add_argument("--cache", type=Path, help="folder to keep embeddings in between runs")
    parser.add_argument("--json", action="store_true", help="every read as a JSON line, then the summary")
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    encode = facesearch_encoder(model)
    key = cache_key(model)
    embeddings, identities = embed_folder(args.choose, encode, key, args.cache)
    filler = embed_folder(args.distractors, encode, key, args.cache)
    people = np.unique(identities)
    rows = []
    for split in range(args.splits):
        order = np.random.default_rng(split).permutation(people)
        read = reads(embeddings, identities, filler, (order[:len(order) // 2], order[len(order) // 2:]),
                     args.grow_with_distractors, split)
        rows += read
        if args.json:
            print("\n".join(json.dumps(r) for r in read), flush=True)
    result = summary(rows)
    if args.json:
        print(json.dumps(result))
        return
    for gallery, t in result["galleries"].items():
        print(f"{args.model}, gallery {gallery} (~{t['faces']:,} faces of ~{t['individuals']:,} individuals, "
              f"~{t['strangers']} strangers; {t['reads']} reads): FPIR reached, mean ± sd (share over "
              f"{FPIR_PROMISE})")
        for aim in AIMS:
            a = t[str(aim)]
            refused = f"; refused in {a['refused']} reads" if a["refused"] else ""
            print(f"  aim {aim:<6} " + (f"{a['mean']:.4f} ± {a['sd']:.4f}  ({a['over_promise']:.2f}){refused}"
                                        if a["mean"] is not None else f"refused in every read"))
    print(f"default aim for at most {FPIR_PROMISE}: {result['default_aim']} "
          f"(largest whose reads average at most {PROMISE_SHARE:.0%} of it at every gallery)")


if __name__ == "__main__":
    main()
