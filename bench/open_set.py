"""Open-set (1:N) identification as NIST FRVT measures it, on identities nothing was chosen on.

    trainer split ../shared/data/lfw/images --out runs/lfw-split          # train / choose / test, seed 0
    python bench/open_set.py --model human --data runs/lfw-split/test \\
        --distractors runs/lfw-split/train --choose runs/lfw-split/choose
    python bench/open_set.py --model dog --data runs/dog-split/test \\
        --distractors runs/dog-split/train --choose runs/dog-split/choose

The protocol (trainer.evaluate.open_set_protocol): of the --data identities, those with two
or more photos are enrolled (all photos but the first form the gallery; the first is a known
probe); those with one photo are strangers (where none has one, as in DogFaceNet, every
other enrolled identity becomes a stranger). The gallery is measured as it is and again
with every --distractors photo added (other identities: the gallery grows, the probes stay).

For each gallery it reports:
- FNIR at FPIR 0.10, 0.05, 0.01 with the nearest-neighbour rule, each threshold set on these
  very strangers (FRVT's measure of what the embedding allows, not a decision anyone ships);
- what `search identify` and the `match` flags of `search query` do, through their own code
  (faces.open_set.MatchRule and search.engine.decide over the 10 nearest faces): the FPIR
  they reach and the share of known people they name, by default (--fpir 0.04, aimed below
  the promise of 0.05), asked for 0.05 itself and at --fpir 0.01, and with the per-pair
  strict threshold for comparison;
- with face_recognition installed, the same for dlib's embeddings as its users run them
  (the nearest face within its tolerance, 0.6 by default, and 0.5), in the same run;
- `indexer cluster`'s grouping of the gallery as it is, at the strict threshold.

With --choose, the alternative decision scores (nearest distance, the nearest identity's mean
distance among the 10 nearest, the ratio to the nearest other identity, the nearest distance
over the mean of the 10 nearest, and each individual's stranger chance: faces^gamma x FAR of
its nearest face, gamma from the model's calibration) are compared on the choose
identities, where a rule may be chosen, as they are and with the --distractors added (never
on --data, whose people no rule may be chosen on); the stranger chance is also run as a rule
there (a threshold per individual from the calibration; not shipped) beside the shipped one.

--cache DIR keeps embeddings between runs (keyed by the model's sha256, the precision it
ran in and the folder).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faces.checkpoint import load_model  # noqa: E402
from faces.imaging import load_image  # noqa: E402
from faces.open_set import DEFAULT_FPIR, FPIR_PROMISE  # noqa: E402
from indexer.clustering import cluster_faces, cluster_scores  # noqa: E402
from search.engine import UNKNOWN, decide  # noqa: E402
from trainer.data import scan_identities  # noqa: E402
from trainer.evaluate import (fnir_at_fpir, nearest_neighbour_rates, nearest_neighbours,  # noqa: E402
                              open_set_protocol)

K = 10                      # `search identify`'s default neighbours
NEIGHBOURS = 100            # `indexer cluster`'s default
FRVT_FPIRS = (0.10, 0.05, 0.01)
RULE_FPIRS = (DEFAULT_FPIR, FPIR_PROMISE, 0.01)   # the default, the promise itself asked for, a stricter ask
SCORE_FPIRS = (0.05, 0.01)  # where the alternative decision scores are compared
CACHE_CHUNK = 256           # photos embedded and cached together


def folder_images(folder: str) -> tuple[list[Path], np.ndarray]:
    samples = scan_identities(folder)
    return [s.path for s in samples], np.array([s.identity for s in samples])


def embed_folder(folder: str, encode, key: str, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, identities) of every photo of a folder of identities; with a cache, kept
    a chunk at a time, so a run stopped halfway goes on from there."""
    from tqdm import tqdm
    paths, identities = folder_images(folder)
    bar = tqdm(total=len(paths), desc=f"embedding {folder}", unit="img", file=sys.stderr)
    vectors = []
    for start in range(0, len(paths), CACHE_CHUNK):
        chunk = paths[start:start + CACHE_CHUNK]
        cached = None
        if cache is not None:
            digest = hashlib.sha256("\n".join([key, *map(str, chunk)]).encode()).hexdigest()[:16]
            cached = cache / f"{digest}.npy"
        if cached is not None and cached.is_file():
            vectors.append(np.load(cached))
        else:
            vectors.append(encode(chunk))
            if cached is not None:
                cache.mkdir(parents=True, exist_ok=True)
                np.save(cached, vectors[-1])
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(vectors), identities


def cache_key(model) -> str:
    """What a model's cached embeddings are keyed by: its digest, and the precision it ran in."""
    return model.sha256 if model.precision == "float32" else f"{model.sha256}-{model.precision}"


def facesearch_encoder(model):
    def encode(paths):
        chunk, vectors = [], []
        for path in paths:
            chunk.append(load_image(path))
            if len(chunk) == 64:
                vectors.append(model.embed_cropped(chunk))
                chunk = []
        if chunk:
            vectors.append(model.embed_cropped(chunk))
        return np.concatenate(vectors)
    return encode


def face_recognition_encoder(face_recognition):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_face_recognition import encode as encode_one
    return lambda paths: np.array([encode_one(path, face_recognition) for path in paths])


class Setup:
    """The galleries and probes of one run, as rows into (data + distractors) embeddings."""

    def __init__(self, identities: np.ndarray, distractor_identities: np.ndarray):
        rows = open_set_protocol(identities)
        self.identities = np.concatenate([identities, np.char.add("distractor:", distractor_identities.astype(str))])
        self.known, self.strangers = rows["known"], rows["strangers"]
        extra = np.arange(len(identities), len(self.identities))
        self.galleries = {"as is": rows["gallery"], "with distractors": np.concatenate([rows["gallery"], extra])}
        if len(extra) == 0:
            del self.galleries["with distractors"]

    def size(self, gallery: np.ndarray) -> dict:
        return {"faces": int(len(gallery)), "individuals": int(len(np.unique(self.identities[gallery])))}


def nearest_rule(embeddings, setup: Setup, gallery: np.ndarray) -> dict:
    """FRVT's FNIR at fixed FPIR for the nearest-neighbour rule; thresholds set on the strangers."""
    rows = {"gallery": gallery, "known": setup.known, "strangers": setup.strangers}
    rates = nearest_neighbour_rates(embeddings, setup.identities, rows, FRVT_FPIRS)
    return {name: round(value, 4) for name, value in rates.items()}


def answers(embeddings, setup: Setup, gallery: np.ndarray, judge) -> list[dict]:
    """Each probe's answer (known probes first, then strangers) by search.engine.decide over
    its K nearest gallery faces, each judged by `judge(distance)`."""
    names = setup.identities[gallery]
    probes = np.concatenate([setup.known, setup.strangers])
    order, distances = nearest_neighbours(embeddings[probes], embeddings[gallery], K)
    return [decide([{"identity": str(names[j]), "distance": float(d), **judge(float(d))}
                    for j, d in zip(row, row_distances)])
            for row, row_distances in zip(order, distances)]


def rates(decided: list[dict], setup: Setup) -> dict:
    """Known people named rightly; strangers named (FPIR), with the 95% interval (exact,
    Clopper-Pearson) of the FPIR behind so many named of so many strangers: a few hundred
    strangers measure 0.05 only to about ±0.01-0.02."""
    from scipy.stats import binomtest
    known = [d["identity"] == setup.identities[row] for d, row in zip(decided, setup.known)]
    strangers = decided[len(setup.known):]
    named = sum(d["identity"] != UNKNOWN for d in strangers)
    interval = binomtest(named, len(strangers)).proportion_ci(0.95)
    return {"known_named": round(float(np.mean(known)), 4),
            "fpir": round(named / len(strangers), 4),
            "fpir_95": [round(interval.low, 4), round(interval.high, 4)],
            "strangers": len(strangers)}


def alternative_scores(embeddings: np.ndarray, setup: Setup, gallery: np.ndarray, calibration) -> dict:
    """FNIR at FPIR 0.05 and 0.01 of each candidate decision score (smaller = surer) over each
    probe's K nearest faces of one gallery, thresholds set on its strangers. All but the last
    name the identity of the nearest face; the last names the individual whose nearest face
    strangers would come as near least often, counting its photos as the calibration does
    (n^gamma chances for an individual with n faces in the gallery)."""
    names = setup.identities[gallery]
    photos = dict(zip(*np.unique(names, return_counts=True)))
    probes = np.concatenate([setup.known, setup.strangers])
    order, distances = nearest_neighbours(embeddings[probes], embeddings[gallery], K)
    neighbour_names = names[order]
    first = neighbour_names[:, 0]
    same = neighbour_names == first[:, None]
    other = np.where(~same, distances, np.inf).min(1)
    other = np.where(np.isfinite(other), other, distances[:, -1] + 1e-6)
    # Each neighbour's individual's chance: its faces^gamma x FAR of its nearest face; an
    # individual's nearest face is its first among the neighbours, so the row minimum is it.
    chances = (np.vectorize(photos.get)(neighbour_names) ** calibration.gamma) * calibration.far_at(distances)
    chosen = chances.argmin(1)
    rows = np.arange(len(probes))
    candidates = {"nearest distance": (distances[:, 0], first),
                  "identity mean of its faces in the 10 nearest": ((distances * same).sum(1) / same.sum(1), first),
                  "ratio to the nearest other identity": (distances[:, 0] / other, first),
                  "nearest over mean of 10 nearest": (distances[:, 0] / distances.mean(1), first),
                  f"individual's stranger chance (faces^{calibration.gamma:.2f} x FAR)":
                      (chances[rows, chosen], neighbour_names[rows, chosen])}
    known = len(setup.known)
    truth = setup.identities[setup.known]
    return {name: {f"fnir_at_fpir_{f}": round(fnir_at_fpir(score[:known], named[:known] == truth,
                                                             score[known:], f)[0], 4)
                   for f in SCORE_FPIRS}
            for name, (score, named) in candidates.items()}


def stranger_chance_rule(embeddings: np.ndarray, setup: Setup, gallery: np.ndarray, model, fpir: float) -> dict:
    """What the stranger-chance score would do as a rule (not shipped): an individual with n
    faces matches within the threshold of a gallery of as many individuals with n faces each
    (from the model's calibration, so each individual is one equal chance for a stranger),
    and the matching individual whose stranger chance is smallest is named."""
    size = setup.size(gallery)
    calibration = model.open_set
    names = setup.identities[gallery]
    photos = dict(zip(*np.unique(names, return_counts=True)))
    thresholds = {n: calibration.threshold(fpir, size["individuals"], n * size["individuals"])
                  for n in set(photos.values())}
    probes = np.concatenate([setup.known, setup.strangers])
    order, distances = nearest_neighbours(embeddings[probes], embeddings[gallery], K)
    decided = []
    for row, row_distances in zip(names[order], distances):
        chances = {}
        for name, distance in zip(row, row_distances):
            if name not in chances and distance <= thresholds[photos[name]]:
                chances[name] = photos[name] ** calibration.gamma * calibration.far_at(distance)
        decided.append({"identity": min(chances, key=chances.get) if chances else UNKNOWN})
    return {"threshold_one_face": round(thresholds.get(1, float("nan")), 4), **rates(decided, setup)}


def rule_rows(embeddings, setup: Setup, gallery: np.ndarray, model, with_stranger_chance: bool = False) -> dict:
    """What `search identify` does on this gallery at each FPIR asked for (and, when asked,
    the stranger-chance rule beside it), and the per-pair strict threshold: each with its
    threshold, the known people named and the strangers named."""
    size = setup.size(gallery)
    row = {}
    for fpir in RULE_FPIRS:
        rule = model.match_rule(size["individuals"], size["faces"], fpir=fpir)
        row[f"rule_fpir_{fpir}"] = {"threshold": round(rule.threshold, 4),
                                    **rates(answers(embeddings, setup, gallery, rule.judge), setup)}
        if with_stranger_chance:
            chance = stranger_chance_rule(embeddings, setup, gallery, model, fpir)
            row[f"stranger_chance_rule_fpir_{fpir}"] = {"threshold": chance.pop("threshold_one_face"), **chance}
    strict = model.match_rule(size["individuals"], size["faces"], threshold="strict")
    row["per_pair_strict"] = {"threshold": round(strict.threshold, 4),
                              **rates(answers(embeddings, setup, gallery, strict.judge), setup)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="human", help="bundled model name or checkpoint path")
    parser.add_argument("--data", required=True, help="held-out identities (e.g. runs/lfw-split/test)")
    parser.add_argument("--distractors", nargs="*", default=[],
                        help="folders of other identities whose photos are added to the gallery")
    parser.add_argument("--choose", help="identities to compare decision scores on (e.g. runs/lfw-split/choose)")
    parser.add_argument("--cache", type=Path, help="folder to keep embeddings in between runs")
    parser.add_argument("--no-face-recognition", action="store_true", help="skip the dlib baseline")
    parser.add_argument("--json", action="store_true", help="one JSON object per result line")
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    if model.open_set is None:
        sys.exit(f"{args.model}: no gallery statistics; recalibrate it with `trainer calibrate`")
    started = time.perf_counter()
    encode = facesearch_encoder(model)
    key = cache_key(model)
    embeddings, identities = embed_folder(args.data, encode, key, args.cache)
    parts = [embed_folder(folder, encode, key, args.cache) for folder in args.distractors]
    everything = np.concatenate([embeddings] + [p[0] for p in parts])
    distractor_identities = np.concatenate([p[1] for p in parts]) if parts else np.array([], dtype=str)
    setup = Setup(identities, distractor_identities)
    print(f"{args.model}: {len(setup.known)} known probes, {len(setup.strangers)} strangers; galleries "
          + ", ".join(f"{name} {len(g):,} faces" for name, g in setup.galleries.items())
          + f" (embedded in {time.perf_counter() - started:.0f} s)", file=sys.stderr)

    for name, gallery in setup.galleries.items():
        row = {"system": f"facesearch {args.model}", "gallery": name, **setup.size(gallery),
               "nearest_neighbour": nearest_rule(everything, setup, gallery),
               **rule_rows(everything, setup, gallery, model)}
        if name == "as is":
            # Each face is its own nearest neighbour; cluster_faces skips it.
            clusters = cluster_faces(*nearest_neighbours(everything[gallery], everything[gallery], NEIGHBOURS + 1),
                                     row["per_pair_strict"]["threshold"])
            row["clusters_strict"] = {"clusters": int(len(set(clusters.tolist()))),
                                      **cluster_scores(setup.identities[gallery], clusters)}
        show(row, args.json)

    if not args.no_face_recognition and model.species == "human":
        try:
            import face_recognition
        except ImportError:
            face_recognition = None
            print("face_recognition is not installed: no dlib baseline in this run", file=sys.stderr)
        if face_recognition is not None:
            encode = face_recognition_encoder(face_recognition)
            dlib_parts = [embed_folder(folder, encode, "face_recognition", args.cache)
                          for folder in [args.data, *args.distractors]]
            dlib = np.concatenate([p[0] for p in dlib_parts])
            for name, gallery in setup.galleries.items():
                row = {"system": "face_recognition (dlib)", "gallery": name, **setup.size(gallery),
                       "nearest_neighbour": nearest_rule(dlib, setup, gallery)}
                for tolerance in (0.6, 0.5):
                    def within(distance, tolerance=tolerance):
                        return {"match": distance <= tolerance, "strength": "possible"}
                    row[f"tolerance_{tolerance}"] = {"threshold": tolerance,
                                                     **rates(answers(dlib, setup, gallery, within), setup)}
                show(row, args.json)

    if args.choose:
        choose_embeddings, choose_identities = embed_folder(args.choose, facesearch_encoder(model), key, args.cache)
        choose_setup = Setup(choose_identities, distractor_identities)
        choose_everything = np.concatenate([choose_embeddings, everything[len(identities):]])
        for name, gallery in choose_setup.galleries.items():
            show({"system": f"facesearch {args.model}", "decision scores on": f"{args.choose}, gallery {name}",
                  **choose_setup.size(gallery),
                  **alternative_scores(choose_everything, choose_setup, gallery, model.open_set)}, args.json)
            show({"system": f"facesearch {args.model}, on {args.choose}", "gallery": name,
                  **choose_setup.size(gallery),
                  "nearest_neighbour": nearest_rule(choose_everything, choose_setup, gallery),
                  **rule_rows(choose_everything, choose_setup, gallery, model, with_stranger_chance=True)}, args.json)


def show(row: dict, as_json: bool) -> None:
    print(json.dumps(row) if as_json else describe(row), flush=True)


def describe(row: dict) -> str:
    if "decision scores on" in row:
        lines = [f"{row['system']}: decision scores on {row['decision scores on']}, {row['faces']:,} faces of "
                 f"{row['individuals']:,} individuals (FNIR at FPIR 0.05 / 0.01)"]
        lines += [f"  {name:<46} {v['fnir_at_fpir_0.05']:.3f} / {v['fnir_at_fpir_0.01']:.3f}"
                  for name, v in row.items() if isinstance(v, dict)]
        return "\n".join(lines)
    nn = row["nearest_neighbour"]
    lines = [f"{row['system']}, gallery {row['gallery']}: {row['faces']:,} faces of {row['individuals']:,} individuals",
             f"  nearest neighbour: rank-1 {nn['rank1']:.3f}; FNIR at FPIR 0.10 {nn['fnir_at_fpir_0.1']:.3f}, "
             f"0.05 {nn['fnir_at_fpir_0.05']:.3f}, 0.01 {nn['fnir_at_fpir_0.01']:.3f}"]
    for name, v in row.items():
        if isinstance(v, dict) and "known_named" in v:
            lines.append(f"  {name:<20} threshold {v['threshold']:.4f}: known named {v['known_named']:.3f}, "
                         f"strangers named (FPIR) {v['fpir']:.3f} of {v['strangers']} "
                         f"(95%: {v['fpir_95'][0]:.3f}-{v['fpir_95'][1]:.3f})")
    if "clusters_strict" in row:
        c = row["clusters_strict"]
        lines.append(f"  indexer cluster (strict): {c['clusters']} clusters, pairwise P {c['pairwise_precision']:.3f} "
                     f"R {c['pairwise_recall']:.3f} F1 {c['pairwise_f1']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
