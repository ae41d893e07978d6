"""Evaluation of an embedding model: LFW-protocol verification, one-shot identification,
retrieval, and the plots that go with them (ROC curve, PCA map of the embeddings)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faces.checkpoint import FaceModel
from faces.open_set import TAIL_FARS, GalleryCalibration
from .data import DataError, load_faces, read_pairs, scan_identities, write_split

log = logging.getLogger(__name__)

# The strict operating point's false accept rate. A search compares a stranger with every
# gallery face, so per-pair errors add up: on the 808 held-out LFW people (a gallery of 1,129
# faces) `human` at FAR 1e-3 let 17% of strangers be identified as someone, at 3e-4 6%
# (bench/open_set.py).
STRICT_FAR = 3e-4
# The rate at which evaluations report the true accept rate (the literature's TAR@FAR=1e-3).
REPORT_FAR = 1e-3
# The rates at which evaluations also report TAR over every stranger pair of the folder (a
# pairs file's 1,500 different pairs cannot resolve them), and the FPIRs of the 1:N test.
LOW_FARS = (1e-3, 1e-4)
REPORT_FPIRS = (0.05, 0.01)
# Stranger pairs for calibration: every pair of images of different identities among at most
# this many images (2,000 images give about 2 million pairs, so FAR 3e-4 rests on ~600 errors).
CALIBRATION_MAX_IMAGES = 2000


# --- verification -----------------------------------------------------------------------

def balanced_folds(same: np.ndarray, folds: int = 10) -> list[np.ndarray]:
    """Indices of `folds` folds, each with an equal share of same and different pairs,
    whatever order the pairs came in."""
    same_idx, diff_idx = np.flatnonzero(same), np.flatnonzero(~same)
    return [np.concatenate([s, d]) for s, d in
            zip(np.array_split(same_idx, folds), np.array_split(diff_idx, folds))]


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The distance threshold (same if d <= t) with the highest accuracy, and that accuracy."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    # Accepting the first i pairs: true accepts = cumsum(same), true rejects = diffs after i.
    true_accepts = np.concatenate([[0], np.cumsum(s)])
    true_rejects = (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    accuracy = (true_accepts + true_rejects) / len(d)
    # Only cut between distinct distances; the cut sits halfway between neighbours.
    cuts = np.concatenate([[True], d[1:] != d[:-1], [True]])
    accuracy = np.where(cuts, accuracy, -1)
    i = int(np.argmax(accuracy))
    edges = np.concatenate([[d[0] - 1e-6], (d[1:] + d[:-1]) / 2, [d[-1] + 1e-6]])
    return float(edges[i]), float(accuracy[i])


def operating_points(distances: np.ndarray, same: np.ndarray, far_target: float = STRICT_FAR) -> dict:
    """The thresholds a model ships with, chosen on pairs of held-out identities (same if d <= t).

    strict: the largest threshold whose false accept rate (different pairs accepted) is at
    most `far_target`, i.e. the most true accepts within it; balanced: the best balanced
    accuracy, (TAR + 1 - FAR) / 2, which is plain accuracy when same and different pairs are
    equally many. Each gives {"threshold", "tar", "far"} measured on these pairs; the counts
    say how much the rates can be trusted (a FAR of 1e-3 needs many thousands of strangers)."""
    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise DataError("operating points need both same and different pairs")
    order = np.argsort(distances, kind="stable")
    d, s = np.asarray(distances, dtype=np.float64)[order], same[order]
    # Cut i accepts the i nearest pairs; it sits halfway between pairs i-1 and i.
    tar = np.concatenate([[0], np.cumsum(s)]) / s.sum()
    far = np.concatenate([[0], np.cumsum(~s)]) / (~s).sum()
    cuts = np.concatenate([[True], d[1:] != d[:-1], [True]])
    edges = np.concatenate([[d[0] - 1e-6], (d[1:] + d[:-1]) / 2, [d[-1] + 1e-6]])
    strict = int(np.flatnonzero(cuts & (far <= far_target))[-1])   # cut 0 (accept none) qualifies
    balanced = int(np.argmax(np.where(cuts, (tar + 1 - far) / 2, -1)))

    def point(i: int) -> dict:
        return {"threshold": float(edges[i]), "tar": float(tar[i]), "far": float(far[i])}

    return {"strict": point(strict), "balanced": point(balanced), "far_target": far_target,
            "same_pairs": int(s.sum()), "different_pairs": int((~s).sum())}


def stranger_distances(embeddings: np.ndarray, labels: np.ndarray,
                       max_images: int = CALIBRATION_MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """Distances of every pair of images of different identities (among `max_images` images
    drawn at random when there are more)."""
    if len(labels) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_images, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    upper = np.triu_indices(len(labels), k=1)
    different = labels[upper[0]] != labels[upper[1]]
    return distance_matrix(embeddings, embeddings)[upper][different]


# Galleries drawn from the calibration identities to see how a stranger's nearest face
# behaves as a gallery grows: this many draws of each of this many sizes, in each of two
# compositions (any identities; only those with two or more photos).
GALLERY_DRAWS = 12
GALLERY_SIZES = 8
GALLERY_FPIRS = (0.01, 0.02, 0.05, 0.1, 0.2)
# The stored curve keeps FAR levels with at least this many stranger pairs under them.
TAIL_MIN_PAIRS = 10
# A probe's shift: its own quantile of distances to strangers, against the median probe's.
SHIFT_QUANTILE = 0.05
SHIFT_SAMPLES = 200


def probe_shifts(distances: np.ndarray, different: np.ndarray) -> np.ndarray:
    """How much nearer than the median probe each image sits to strangers in general."""
    location = np.array([np.quantile(row[mask], SHIFT_QUANTILE) for row, mask in zip(distances, different)])
    return location - np.median(location)


def far_curve(pair_distances: np.ndarray) -> dict:
    """FAR (share of pairs at or under a distance) at log-spaced levels, and the slope of
    log10 FAR in distance over the measured low end, for extrapolating below it."""
    ordered = np.sort(pair_distances)
    pairs = len(ordered)
    fars = [far for far in TAIL_FARS if far * pairs >= TAIL_MIN_PAIRS]
    if len(fars) < 2:
        raise DataError(f"{pairs} stranger distances are too few to measure how near strangers come: "
                        f"calibrate on more identities")
    distances = [float(ordered[int(np.ceil(far * pairs)) - 1]) for far in fars]
    low = [i for i, far in enumerate(fars) if far <= 1e-4] or [0, 1]
    slope = float(np.polyfit(np.array(distances)[low], np.log10(np.array(fars)[low]), 1)[0])
    return {"distances": distances, "fars": [float(f) for f in fars], "tail_slope": slope, "pairs": pairs}


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(int(np.searchsorted(cumulative, q)), len(values) - 1)])


def drawn_galleries(embeddings: np.ndarray, labels: np.ndarray, filler_embeddings: np.ndarray | None = None,
                    filler_labels: np.ndarray | None = None, seed: int = 0) -> list[dict]:
    """Galleries drawn from half of the identities (grown with the filler identities, when
    given), whose photos the other half search as strangers, each stranger counted once
    however many photos it has: at each FPIR level, the distance under which that share of
    strangers finds a face. Drawn from all identities and again from those with two or more
    photos, so that faces per individual varies as in real galleries."""
    rng = np.random.default_rng(seed)
    if filler_embeddings is not None and len(filler_embeddings):
        embeddings = np.concatenate([embeddings, filler_embeddings])
        filler = np.char.add("filler:", np.asarray(filler_labels).astype(str))
        all_labels = np.concatenate([labels.astype(str), filler])
        filler_identities = np.unique(filler)
    else:
        all_labels, filler_identities = labels.astype(str), np.array([], dtype=str)
    members = {identity: np.flatnonzero(all_labels == identity) for identity in np.unique(all_labels)}
    own = np.unique(labels.astype(str))
    largest = len(labels) // 2 + len(all_labels) - len(labels)
    points = []
    for several_photos in (False, True):
        for size in np.unique(np.geomspace(16, max(17, largest), GALLERY_SIZES).astype(int)):
            nearest, weights, individuals, faces = [], [], [], []
            for _ in range(GALLERY_DRAWS):
                order = rng.permutation(own)
                strangers, pool = order[:len(order) // 2], np.concatenate([order[len(order) // 2:], filler_identities])
                if several_photos:
                    pool = pool[[len(members[i]) > 1 for i in pool]]
                pool = pool[rng.permutation(len(pool))]
                counts = np.cumsum([len(members[i]) for i in pool])
                if not len(pool) or not len(strangers) or counts[-1] < size:
                    continue
                chosen = pool[:int(np.searchsorted(counts, size)) + 1]
                gallery = np.concatenate([members[i] for i in chosen])
                probes = np.concatenate([members[i] for i in strangers])
                _, distances = nearest_neighbours(embeddings[probes], embeddings[gallery], 1)
                nearest.append(distances[:, 0])
                weights.append(np.concatenate([np.full(len(members[i]), 1 / len(members[i])) for i in strangers]))
                individuals.append(len(chosen))
                faces.append(len(gallery))
            if nearest:
                nearest, weights = np.concatenate(nearest), np.concatenate(weights)
                points.extend({"faces": float(np.mean(faces)), "individuals": float(np.mean(individuals)),
                               "fpir": fpir, "threshold": weighted_quantile(nearest, weights, fpir)}
                              for fpir in GALLERY_FPIRS)
    return points


def gallery_calibration(embeddings: np.ndarray, labels: np.ndarray, data: str = "", seed: int = 0,
                        filler: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """What faces.open_set.GalleryCalibration needs, measured on held-out identities: the
    shift-corrected stranger-pair curve, the probes' shifts, and n_eff = alpha * M ** beta *
    (F / M) ** gamma fitted so that its FPIR matches the drawn galleries' (least squares in
    log FPIR). `filler`, (embeddings, labels) of more identities the model never trained
    on, only grows the drawn galleries."""
    from scipy.optimize import minimize
    if len(labels) > CALIBRATION_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), CALIBRATION_MAX_IMAGES, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    distances = distance_matrix(embeddings, embeddings)
    different = labels[:, None] != labels[None, :]
    if not different.any():
        raise DataError("gallery statistics need at least two identities")
    shifts = probe_shifts(distances, different)
    first, second = np.triu_indices(len(labels), k=1)
    pairs = different[first, second]
    # Each pair seen from both of its probes, less that probe's shift.
    corrected = np.concatenate([(distances[first, second] - shifts[first])[pairs],
                                (distances[first, second] - shifts[second])[pairs]])
    curve = {**far_curve(corrected), "pairs": int(pairs.sum())}   # distinct pairs, each seen twice
    shift_sample = [float(v) for v in np.quantile(shifts, (np.arange(SHIFT_SAMPLES) + 0.5) / SHIFT_SAMPLES)]
    points = drawn_galleries(embeddings, labels, *(filler or (None, None)), seed=seed)

    def fitted(x):
        # gamma within [0, 1]: another photo of an individual is worth at most another individual
        return GalleryCalibration.from_dict({**curve, "shifts": shift_sample, "alpha": float(np.exp(x[0])),
                                             "beta": float(x[1]), "gamma": float(np.clip(x[2], 0, 1)),
                                             "data": str(data)})

    def misfit(x):
        model = fitted(x)
        return sum((np.log(max(model.fpir_at(p["threshold"], p["individuals"], p["faces"]), 1e-9))
                    - np.log(p["fpir"])) ** 2 for p in points)

    # Too few identities to see a trend: each face counts as one independent stranger.
    trend = len({p["individuals"] for p in points}) > 1
    model = fitted(minimize(misfit, [0.0, 1.0, 0.5], method="Nelder-Mead").x if trend else [0.0, 1.0, 1.0])
    return {**model.to_dict(),
            "fit_points": [{**p, "fitted_fpir": model.fpir_at(p["threshold"], p["individuals"], p["faces"])}
                           for p in points]}


def calibration_pairs(inputs: "EvaluationInputs") -> tuple[np.ndarray, np.ndarray]:
    """(distances, same) to choose operating points on: the pairs file's same pairs, and as
    strangers every different-identity pair of the folder's images (a pairs file's 1,500
    different pairs cannot measure a FAR of 1e-3)."""
    genuine = inputs.pair_distances[inputs.pair_same]
    strangers = stranger_distances(inputs.embeddings, inputs.labels)
    return (np.concatenate([genuine, strangers]),
            np.concatenate([np.ones(len(genuine), bool), np.zeros(len(strangers), bool)]))


def embed_identities(model: FaceModel, data: str | Path, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, identity names) of every readable photo of a folder of identities."""
    samples = scan_identities(data)
    crops, kept, _ = load_faces([s.path for s in samples], model.preprocess, progress, desc=f"embedding {data}")
    return model.embed_crops(crops), np.array([samples[i].identity for i in kept])


def calibrate(model: FaceModel, data: str | Path, pairs_file: str | Path, progress: bool = True,
              grow_with: str | Path | None = None) -> dict:
    """The model's operating points on a folder of held-out identities and its pairs file,
    with the stranger statistics that gallery-size thresholds need (under "open_set");
    `grow_with`, a folder of more identities the model never trained on, grows the galleries
    those statistics are fitted on."""
    inputs = EvaluationSet(data, pairs_file, model.preprocess, progress).embed(model)
    filler = embed_identities(model, grow_with, progress) if grow_with else None
    open_set = gallery_calibration(inputs.embeddings, inputs.labels, data, filler=filler)
    if grow_with:
        open_set["grown_with"] = str(grow_with)
    return {**operating_points(*calibration_pairs(inputs)), "data": str(data), "pairs_file": str(pairs_file),
            "open_set": open_set}


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> float:
    """The largest share of same pairs accepted by a threshold that accepts at most `far` of
    the different pairs: same pairs nearer than the (k+1)-th nearest different pair, where
    k = floor(far x different pairs) different pairs may pass (a same pair tied with it fails)."""
    same = np.asarray(same, dtype=bool)
    genuine = np.sort(np.asarray(distances, dtype=np.float64)[same])
    impostor = np.sort(np.asarray(distances, dtype=np.float64)[~same])
    allowed = int(np.floor(far * len(impostor) + 1e-9))   # different pairs that may pass
    if allowed >= len(impostor):
        return 1.0
    # Accept d < the (allowed+1)-th nearest different pair: at most `allowed` of them pass.
    return float(np.searchsorted(genuine, impostor[allowed], side="left") / len(genuine))


def low_far_metrics(inputs: "EvaluationInputs", fars=LOW_FARS) -> dict:
    """TAR at small FARs: the pairs file's same pairs against every different-identity pair of
    the folder's images (calibration_pairs), so a FAR of 1e-4 rests on ~190 errors in ~1.9 M."""
    distances, same = calibration_pairs(inputs)
    return {**{f"tar_at_far_{far:.0e}".replace("e-0", "e-"): tar_at_far(distances, same, far) for far in fars},
            "same_pairs": int(same.sum()), "stranger_pairs": int((~same).sum())}


def verification_metrics(distances: np.ndarray, same: np.ndarray, folds: int = 10) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve
    same = same.astype(bool)
    if same.all() or not same.any():
        raise DataError("verification needs both same and different pairs")
    folds = min(folds, int(same.sum()), int((~same).sum()))
    fold_indices = balanced_folds(same, folds)
    accuracies = []
    for f, test in enumerate(fold_indices):
        train = np.concatenate([idx for g, idx in enumerate(fold_indices) if g != f])
        threshold, _ = best_threshold(distances[train], same[train])
        accuracies.append(float(((distances[test] <= threshold) == same[test]).mean()))
    threshold, _ = best_threshold(distances, same)
    far, tar, _ = roc_curve(same, -distances)
    within = far <= REPORT_FAR
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "folds": folds, "auc": float(roc_auc_score(same, -distances)),
            "tar_at_far_1e-3": float(tar[within].max()) if within.any() else 0.0,
            "threshold": threshold, "pairs": int(len(same)), "same_pairs": int(same.sum()),
            "roc": (far, tar)}


# --- identification and retrieval ----------------------------------------------------------

def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows (any length: baselines' vectors are not unit)."""
    squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def identification_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict:
    """One gallery image per identity (its first), every other image a probe."""
    _, first = np.unique(labels, return_index=True)
    probes = np.setdiff1d(np.arange(len(labels)), first)
    if len(probes) == 0:
        return {"rank1": None, "rank5": None, "probes": 0, "gallery": int(len(first))}
    distances = distance_matrix(embeddings[probes], embeddings[first])
    gallery_labels = labels[first]
    correct = distances[np.arange(len(probes)), np.searchsorted(gallery_labels, labels[probes])]
    rank = (distances < correct[:, None]).sum(1)   # 0 means the right identity came first
    return {"rank1": float((rank < 1).mean()), "rank5": float((rank < 5).mean()),
            "probes": int(len(probes)), "gallery": int(len(first))}


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks=(1, 5, 10),
                      chunk: int = 1024) -> dict:
    """Each image queries all the others: mAP and Recall@k over queries with a relevant image."""
    n = len(labels)
    average_precisions, hits = [], {k: [] for k in ks}
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        distances = distance_matrix(embeddings[rows], embeddings)
        distances[np.arange(len(rows)), rows] = np.inf
        order = np.argsort(distances, axis=1, kind="stable")[:, :-1]
        relevant = labels[order] == labels[rows][:, None]
        counts = relevant.sum(1)
        for r, count in zip(relevant, counts):
            if count == 0:
                continue
            positions = np.flatnonzero(r) + 1
            average_precisions.append(float((np.arange(1, count + 1) / positions).mean()))
            for k in ks:
                hits[k].append(bool(r[:k].any()))
    if not average_precisions:
        return {"map": None, **{f"recall@{k}": None for k in ks}, "queries": 0}
    return {"map": float(np.mean(average_precisions)),
            **{f"recall@{k}": float(np.mean(hits[k])) for k in ks},
            "queries": len(average_precisions)}


def search_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict:
    """Search as a user runs it: each identity's first image (of those with two or more)
    queries a gallery of every other non-query image; rank-1/5 and mAP over the queries."""
    _, first, counts = np.unique(labels, return_index=True, return_counts=True)
    queries = first[counts >= 2]
    gallery = np.setdiff1d(np.arange(len(labels)), queries)
    if len(queries) == 0:
        return {"rank1": None, "rank5": None, "map": None, "queries": 0, "gallery": int(len(gallery))}
    distances = distance_matrix(embeddings[queries], embeddings[gallery])
    order = np.argsort(distances, axis=1, kind="stable")
    relevant = labels[gallery][order] == labels[queries][:, None]
    first_hit = relevant.argmax(1)
    precisions = [float((np.arange(1, r.sum() + 1) / (np.flatnonzero(r) + 1)).mean()) for r in relevant]
    return {"rank1": float((first_hit < 1).mean()), "rank5": float((first_hit < 5).mean()),
            "map": float(np.mean(precisions)), "queries": int(len(queries)), "gallery": int(len(gallery))}


def open_set_protocol(labels: np.ndarray) -> dict:
    """Rows of an open-set (1:N) search test: identities with two or more images are enrolled
    (all but their first image form the gallery; the first is a known probe); identities with
    one image are strangers. Where no identity has a single image (DogFaceNet), every other
    enrolled identity in sorted order becomes a stranger instead: its first image the probe,
    none of its images in the gallery."""
    labels = np.asarray(labels)
    _, first, counts = np.unique(labels, return_index=True, return_counts=True)
    multi = first[counts >= 2]
    if (counts == 1).any():
        known, strangers = multi, first[counts == 1]
    else:
        known, strangers = multi[0::2], multi[1::2]
    stranger_labels = set(labels[strangers].tolist())
    gallery = np.setdiff1d(np.flatnonzero(~np.isin(labels, list(stranger_labels))), known)
    return {"gallery": gallery, "known": known, "strangers": strangers}


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 2048):
    """(indices, distances) of each query's k nearest gallery rows, nearest first."""
    k = min(k, len(gallery))
    indices, distances = [], []
    for start in range(0, len(queries), chunk):
        d = distance_matrix(queries[start:start + chunk], gallery)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, 1), axis=1, kind="stable"), 1)
        indices.append(order)
        distances.append(np.take_along_axis(d, order, 1))
    return np.concatenate(indices), np.concatenate(distances)


def fnir_at_fpir(known_scores: np.ndarray, known_correct: np.ndarray, stranger_scores: np.ndarray,
                 fpir: float) -> tuple[float, float]:
    """NIST FRVT 1:N at one false positive identification rate, for a rule whose score is a
    distance (smaller = surer): the threshold lets at most `fpir` of the strangers through;
    a known probe is missed unless its answer is right and passes. (FNIR, threshold)."""
    ordered = np.sort(stranger_scores)
    allowed = int(np.floor(fpir * len(ordered) + 1e-9))   # strangers that may pass
    threshold = ordered[allowed] if allowed < len(ordered) else np.inf   # pass = score < threshold
    hit = known_correct & (known_scores < threshold)
    return float(1.0 - hit.mean()), float(threshold)


def nearest_neighbour_rates(embeddings: np.ndarray, labels: np.ndarray, rows: dict, fpirs) -> dict:
    """Rank-1 and FNIR at each FPIR of the nearest-neighbour rule (the gallery face nearest
    the probe names it when within the threshold) for rows {"gallery", "known", "strangers"}."""
    gallery = embeddings[rows["gallery"]]
    known_index, known_distance = nearest_neighbours(embeddings[rows["known"]], gallery, 1)
    _, stranger_distance = nearest_neighbours(embeddings[rows["strangers"]], gallery, 1)
    correct = labels[rows["gallery"]][known_index[:, 0]] == labels[rows["known"]]
    return {"rank1": float(correct.mean()),
            **{f"fnir_at_fpir_{fpir}": fnir_at_fpir(known_distance[:, 0], correct, stranger_distance[:, 0], fpir)[0]
               for fpir in fpirs}}


def open_set_metrics(embeddings: np.ndarray, labels: np.ndarray, fpirs=(0.1, 0.05, 0.01)) -> dict:
    """1:N open-set identification with the nearest-neighbour rule on one folder's
    identities (open_set_protocol): rank-1 and FNIR at each FPIR."""
    rows = open_set_protocol(labels)
    counts = {part: int(len(rows[part])) for part in ("known", "strangers", "gallery")}
    if not all(counts.values()):
        return {**counts, **{f"fnir_at_fpir_{f}": None for f in fpirs}}
    return {**counts, **nearest_neighbour_rates(embeddings, labels, rows, fpirs)}


# --- plots ------------------------------------------------------------------------------------

def plot_roc(far: np.ndarray, tar: np.ndarray, auc: float, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5, 4.5))
    axis.plot(np.clip(far, 1e-5, 1), tar, lw=2, label=f"AUC = {auc:.4f}")
    axis.axvline(REPORT_FAR, color="grey", ls=":", label="FAR = 1e-3")
    axis.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false accept rate",
             ylabel="true accept rate", title=title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_embedding_map(embeddings: np.ndarray, labels: np.ndarray, names: list[str], title: str,
                       path: Path, max_identities: int = 12) -> None:
    """PCA of the embeddings of the identities with the most images, coloured by identity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values, counts = np.unique(labels, return_counts=True)
    chosen = values[np.argsort(-counts, kind="stable")[:max_identities]]
    mask = np.isin(labels, chosen)
    points = embeddings[mask] - embeddings[mask].mean(0)
    _, _, components = np.linalg.svd(points, full_matrices=False)
    projected = points @ components[:2].T
    figure, axis = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("tab20")
    for i, label in enumerate(chosen):
        at = labels[mask] == label
        axis.scatter(projected[at, 0], projected[at, 1], s=14, color=colours(i % 20), label=names[label])
    axis.set(title=title, xlabel="PC 1", ylabel="PC 2")
    axis.legend(fontsize=6, loc="best", markerscale=0.8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- the whole evaluation ----------------------------------------------------------------------

@dataclass
class EvaluationInputs:
    embeddings: np.ndarray   # of the folder's images
    labels: np.ndarray
    names: list[str]
    pair_distances: np.ndarray
    pair_same: np.ndarray


class EvaluationSet:
    """A folder of identities and a pairs file, decoded and cropped once, so it can be
    embedded again cheaply (the trainer validates on it every epoch)."""

    def __init__(self, data: str | Path, pairs_file: str | Path, preprocess, progress: bool = True):
        samples = scan_identities(data)
        pairs = read_pairs(pairs_file, data)
        paths = list(dict.fromkeys([s.path for s in samples] + [p.first for p in pairs]
                                   + [p.second for p in pairs]))
        self.crops, kept, errors = load_faces(paths, preprocess, progress, desc="loading eval")
        if not kept:
            raise DataError(f"{data}: none of the images could be read")
        self.skipped = [str(e) for e in errors]
        row = {paths[i]: r for r, i in enumerate(kept)}
        self.names = sorted({s.identity for s in samples})
        index = {n: i for i, n in enumerate(self.names)}
        folder = [(row[s.path], index[s.identity]) for s in samples if s.path in row]
        self.folder_rows = np.array([r for r, _ in folder])
        self.labels = np.array([label for _, label in folder])
        usable = [p for p in pairs if p.first in row and p.second in row]
        if not usable:
            raise DataError(f"{pairs_file}: none of the pairs' images could be read")
        self.pairs_unusable = len(pairs) - len(usable)
        self.first = np.array([row[p.first] for p in usable])
        self.second = np.array([row[p.second] for p in usable])
        self.same = np.array([p.same for p in usable])

    def embed(self, model: FaceModel, batch_size: int = 128) -> EvaluationInputs:
        return self.inputs(model.embed_crops(self.crops, batch_size))

    def inputs(self, embeddings: np.ndarray) -> EvaluationInputs:
        """What the metrics read, from an embedding of every crop (in `crops`' order)."""
        distances = np.linalg.norm(embeddings[self.first] - embeddings[self.second], axis=1)
        return EvaluationInputs(embeddings[self.folder_rows], self.labels, self.names,
                                distances, self.same)


def split_for_training(data: str | Path, out: Path, choose_fraction: float, test_fraction: float, seed: int,
                       preprocess, progress: bool = True) -> tuple[Path, EvaluationSet]:
    """A training run's three-way split of `data` written under OUT/split (data.write_split):
    the folder to train on, and the choose identities loaded to check the run on."""
    counts = write_split(data, out / "split", choose_fraction, test_fraction, seed)
    log.info("identity split: %s", counts)
    choose = EvaluationSet(out / "split" / "choose", out / "split" / "choose_pairs.txt", preprocess, progress)
    return out / "split" / "train", choose


def evaluate(model: FaceModel, data: str | Path, pairs_file: str | Path, out: Path | None = None,
             progress: bool = True) -> dict:
    evaluation_set = EvaluationSet(data, pairs_file, model.preprocess, progress)
    inputs = evaluation_set.embed(model)
    verification = verification_metrics(inputs.pair_distances, inputs.pair_same)
    far, tar = verification.pop("roc")
    result = {"model": model.name, "flip_average": model.flip_average, "data": str(data), "pairs_file": str(pairs_file),
              "images": int(len(inputs.labels)), "identities": len(inputs.names),
              "skipped": evaluation_set.skipped, "pairs_unusable": evaluation_set.pairs_unusable,
              "verification": verification,
              "identification": identification_metrics(inputs.embeddings, inputs.labels),
              "retrieval": retrieval_metrics(inputs.embeddings, inputs.labels),
              "search": search_metrics(inputs.embeddings, inputs.labels),
              "low_far": low_far_metrics(inputs),
              "open_set": open_set_metrics(inputs.embeddings, inputs.labels, fpirs=REPORT_FPIRS)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_roc(far, tar, verification["auc"], f"ROC: {model.name} on {Path(data).name}", out / "roc.png")
        plot_embedding_map(inputs.embeddings, inputs.labels, inputs.names,
                           f"Embeddings (PCA): {model.name}", out / "embeddings_pca.png")
        result["plots"] = [str(out / "roc.png"), str(out / "embeddings_pca.png")]
    return result
