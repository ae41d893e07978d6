"""Grouping faces into individuals, and scoring a grouping against known identities.

`cluster_faces` is average-linkage agglomerative clustering (as FaceNet's clustering and
scikit-learn's `linkage="average"`): two groups merge while the mean distance over all pairs
of their faces is within the threshold, so a chain of look-alikes does not join two people
the way single linkage (connected components) does. Only each face's nearest neighbours
are looked up (memory grows with N·k, not N²); a pair that is in neither face's neighbour
list counts as `UNSEEN_DISTANCE` apart, which is never within a threshold, so groups only
merge when most of their pairs are known to be close.

(scikit-learn's own average linkage with a neighbour-graph connectivity averages over the
graph's edges only, i.e. over the nearest pairs: it merged all 9,525 LFW faces into one
cluster.)
"""
from __future__ import annotations

import heapq

import numpy as np

UNSEEN_DISTANCE = 2.0    # the largest distance between unit vectors


def cluster_faces(neighbours: np.ndarray, distances: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels (0..C-1, by first appearance) of N faces from their nearest neighbours:
    `neighbours[i]` the row numbers of face i's nearest faces (-1 for none), `distances[i]`
    their distances. Groups merge, closest first, while their average pair distance is
    <= `threshold`."""
    n = len(neighbours)
    links: list[dict[int, list[float]]] = [dict() for _ in range(n)]   # other -> [sum, count]
    for i, row in enumerate(neighbours.tolist()):
        for j, distance in zip(row, distances[i].tolist()):
            if j < 0 or j == i or i in links[j] and j in links[i]:
                continue
            links[i][j] = links[j][i] = [float(distance), 1]
    size = [1] * n
    # A pair missing from both neighbour lists is at least as far apart as either face's
    # farthest listed neighbour; a group's bound is the mean of its faces' bounds.
    found = neighbours >= 0
    full = found.sum(axis=1) >= min(neighbours.shape[1], n - 1)
    reach = np.where(full & (neighbours.shape[1] < n - 1),
                     np.where(found, distances, -np.inf).max(axis=1, initial=-np.inf), UNSEEN_DISTANCE)
    reach_sum = np.minimum(reach, UNSEEN_DISTANCE).tolist()
    version = [0] * n
    owner = list(range(n))          # merged groups point at the group that absorbed them

    def average(a: int, b: int) -> float:
        total, known = links[a][b]
        pairs = size[a] * size[b]
        unseen = max(reach_sum[a] / size[a], reach_sum[b] / size[b])
        return (total + unseen * (pairs - known)) / pairs

    heap = [(average(a, b), a, b, 0, 0) for a in range(n) for b in links[a] if a < b]
    heap = [entry for entry in heap if entry[0] <= threshold]
    heapq.heapify(heap)
    while heap:
        _, a, b, version_a, version_b = heapq.heappop(heap)
        if owner[a] != a or owner[b] != b or version[a] != version_a or version[b] != version_b:
            continue                 # a stale entry: one side has merged since
        if len(links[a]) < len(links[b]):
            a, b = b, a              # keep the group with more links, fold the other in
        del links[a][b], links[b][a]
        for other, (total, known) in links[b].items():
            del links[other][b]
            merged = links[a].setdefault(other, [0.0, 0])
            merged[0] += total
            merged[1] += known
            links[other][a] = merged
        links[b] = {}
        owner[b] = a
        size[a] += size[b]
        reach_sum[a] += reach_sum[b]
        version[a] += 1
        for other in links[a]:
            value = average(a, other)
            if value <= threshold:
                heapq.heappush(heap, (value, min(a, other), max(a, other),
                                      version[min(a, other)], version[max(a, other)]))
    roots = [_root(owner, i) for i in range(n)]
    _, labels = np.unique(roots, return_inverse=True)
    order = {label: number for number, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels.tolist()], dtype=np.int64)


def _root(owner: list[int], i: int) -> int:
    while owner[i] != i:
        owner[i] = owner[owner[i]]
        i = owner[i]
    return i


def cluster_scores(identities, clusters) -> dict:
    """How well clusters recover known identities. Pairwise: of the pairs of faces put in one
    cluster, the share that are one identity (precision); of the pairs of one identity, the
    share put in one cluster (recall); F1. And homogeneity, completeness, V-measure."""
    from sklearn.metrics import homogeneity_completeness_v_measure
    from sklearn.metrics.cluster import contingency_matrix
    counts = contingency_matrix(identities, clusters, sparse=True).tocsr()

    def pairs(values) -> int:
        values = np.asarray(values, dtype=np.int64)
        return int((values * (values - 1) // 2).sum())

    together = pairs(counts.data)
    same_cluster, same_identity = pairs(counts.sum(axis=0)), pairs(counts.sum(axis=1))
    precision = together / same_cluster if same_cluster else 1.0
    recall = together / same_identity if same_identity else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    homogeneity, completeness, v_measure = homogeneity_completeness_v_measure(identities, clusters)
    return {"identities": int(counts.shape[0]), "pairwise_precision": round(precision, 4),
            "pairwise_recall": round(recall, 4), "pairwise_f1": round(f1, 4),
            "homogeneity": round(homogeneity, 4), "completeness": round(completeness, 4),
            "v_measure": round(v_measure, 4)}
