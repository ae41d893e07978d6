"""Open-set identification and clustering on people a model never trained on.

    python bench/open_set.py --model human --data runs/lfw-split/val   # imported: no training split recorded
    python bench/open_set.py --model dog --split-of ../shared/data/dogfacenet/images
    python bench/open_set.py --model runs/new/model.pt --data runs/new/split/val

The protocol (issue 11): of the held-out identities, those with two or more photos form the
gallery, less their first photo; each first photo is a known probe, which should be
identified as its identity; identities with a single photo are strangers, which should be
answered "unknown". Probes are answered exactly as `search identify` answers them
(search.engine.decide over the 10 nearest gallery faces) at the model's operating points,
and the gallery is clustered exactly as `indexer cluster` clusters it
(indexer.clustering.cluster_faces, 100 neighbours). `--split-of DATA` recomputes the
held-out identities from the seed and fraction the checkpoint records, as training made them.

When face_recognition (dlib) is importable, the same run scores it as its users run it:
the nearest gallery face if within the tolerance (0.6, its default, and 0.5), and dlib's
Chinese whispers clustering at the tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faces.checkpoint import load_model  # noqa: E402
from faces.imaging import load_image  # noqa: E402
from faces.thresholds import OPERATING_POINTS  # noqa: E402
from indexer.clustering import cluster_faces, cluster_scores  # noqa: E402
from search.engine import UNKNOWN, decide  # noqa: E402
from trainer.data import group_by_identity, scan_identities, split_identities  # noqa: E402

K = 10            # `search identify`'s default
NEIGHBOURS = 100  # `indexer cluster`'s default


def held_out_groups(args, model) -> dict:
    groups = group_by_identity(scan_identities(args.data or args.split_of))
    if args.split_of:
        config = model.info["config"]
        train, val = split_identities(list(groups), config["val_fraction"], config["seed"])
        if len(train) != model.info.get("identities"):
            sys.exit(f"{args.split_of}: its split has {len(train)} training identities, the model "
                     f"trained on {model.info.get('identities')}: not the data it was trained on")
        groups = {name: groups[name] for name in val}
    return groups


def protocol(groups: dict) -> dict:
    """Row numbers into `paths` of the gallery, the known probes and the strangers."""
    paths, identities, gallery, known, strangers = [], [], [], [], []
    for name in sorted(groups):
        rows = list(range(len(paths), len(paths) + len(groups[name])))
        paths.extend(sample.path for sample in groups[name])
        identities.extend([name] * len(rows))
        if len(rows) == 1:
            strangers.extend(rows)
        else:
            known.append(rows[0])
            gallery.extend(rows[1:])
    return {"paths": paths, "identities": np.array(identities), "gallery": np.array(gallery, dtype=np.int64),
            "known": np.array(known, dtype=np.int64), "strangers": np.array(strangers, dtype=np.int64)}


def distances_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0))


def nearest(a: np.ndarray, b: np.ndarray, k: int, skip_self: bool = False):
    distances = distances_between(a, b)
    if skip_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def answer_rates(answers: list, setup: dict) -> dict:
    names = setup["identities"]
    known = [answers[i] == names[row] for i, row in enumerate(setup["known"])]
    rejected = [answer == UNKNOWN for answer in answers[len(setup["known"]):]]
    return {"known_identified": round(float(np.mean(known)), 4),
            "strangers_rejected": round(float(np.mean(rejected)), 4) if rejected else None}


def score_facesearch(embeddings: np.ndarray, setup: dict, threshold: float) -> dict:
    """`search identify` and `indexer cluster`, on these embeddings at this threshold."""
    gallery = embeddings[setup["gallery"]]
    names = setup["identities"][setup["gallery"]]
    probes = np.concatenate([setup["known"], setup["strangers"]])
    order, distances = nearest(embeddings[probes], gallery, K)
    answers = [decide([{"identity": names[j], "distance": float(d), "match": bool(d <= threshold)}
                       for j, d in zip(row, row_distances)])["identity"]
               for row, row_distances in zip(order, distances)]
    clusters = cluster_faces(*nearest(gallery, gallery, NEIGHBOURS, skip_self=True), threshold)
    return {**answer_rates(answers, setup), "clusters": int(len(set(clusters.tolist()))),
            **cluster_scores(names, clusters)}


def score_dlib_as_users_do(embeddings: np.ndarray, setup: dict, tolerance: float) -> dict:
    """face_recognition's own recipe: the nearest known face if within the tolerance;
    dlib's Chinese whispers for clustering."""
    import dlib
    gallery = embeddings[setup["gallery"]]
    names = setup["identities"][setup["gallery"]]
    probes = np.concatenate([setup["known"], setup["strangers"]])
    order, distances = nearest(embeddings[probes], gallery, 1)
    answers = [names[row[0]] if row_distances[0] <= tolerance else UNKNOWN
               for row, row_distances in zip(order, distances)]
    clusters = np.array(dlib.chinese_whispers_clustering([dlib.vector(v.tolist()) for v in gallery], tolerance))
    return {**answer_rates(answers, setup), "clusters": int(len(set(clusters.tolist()))),
            **cluster_scores(names, clusters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="human", help="bundled model name or checkpoint path")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="a folder of held-out identities (e.g. RUN/split/val)")
    where.add_argument("--split-of", help="the data the model trained on; its held-out identities are used")
    parser.add_argument("--json", action="store_true", help="one JSON object per result line")
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    setup = protocol(held_out_groups(args, model))
    print(f"{args.model}: gallery {len(setup['gallery'])} faces of {len(setup['known'])} identities; "
          f"{len(setup['known'])} known probes; {len(setup['strangers'])} strangers", file=sys.stderr)
    started = time.perf_counter()
    embeddings = model.embed_cropped([load_image(path) for path in setup["paths"]])
    rows = []
    for name in OPERATING_POINTS:
        point = model.operating_point(name)
        rows.append({"system": f"facesearch {args.model}", "operating_point": name,
                     "threshold": round(point["threshold"], 4),
                     **score_facesearch(embeddings, setup, point["threshold"])})
    rows[0]["seconds"] = round(time.perf_counter() - started, 1)
    try:
        import face_recognition
    except ImportError:
        face_recognition = None
        print("face_recognition is not installed: no dlib baseline in this run", file=sys.stderr)
    if face_recognition is not None and model.species == "human":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from compare_face_recognition import encode
        started = time.perf_counter()
        dlib_embeddings = np.array([encode(path, face_recognition) for path in setup["paths"]])
        seconds = round(time.perf_counter() - started, 1)
        for tolerance in (0.6, 0.5):
            rows.append({"system": "face_recognition (dlib)", "operating_point": "nearest within tolerance",
                         "threshold": tolerance, **score_dlib_as_users_do(dlib_embeddings, setup, tolerance),
                         "seconds": seconds})
        # facesearch's decision and clustering with dlib's embeddings: what a strong network gives.
        rows.append({"system": "facesearch rules on dlib embeddings", "operating_point": "custom",
                     "threshold": 0.5, **score_facesearch(dlib_embeddings, setup, 0.5)})
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            rejected = "-" if row["strangers_rejected"] is None else f"{row['strangers_rejected']:.3f}"
            print(f"{row['system']:<38} {row['operating_point']:<25} t={row['threshold']:.4f}  "
                  f"known identified {row['known_identified']:.3f}  strangers rejected "
                  f"{rejected}  | clusters {row['clusters']}: pairwise P "
                  f"{row['pairwise_precision']:.3f} R {row['pairwise_recall']:.3f} F1 {row['pairwise_f1']:.3f}  "
                  f"V {row['v_measure']:.3f}")


if __name__ == "__main__":
    main()
