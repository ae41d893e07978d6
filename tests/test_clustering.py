"""Clustering faces into individuals, and its scores, on hand-made points."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.clustering import cluster_faces, cluster_scores


def neighbour_lists(points: np.ndarray, k: int):
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def test_average_linkage_does_not_chain_look_alikes():
    # Ten points 0.3 apart on a line: each is within 0.35 of its neighbours, but the whole
    # chain is not one individual; single linkage (connected components) would join it all.
    line = np.stack([np.arange(10) * 0.3, np.zeros(10)], axis=1)
    labels = cluster_faces(*neighbour_lists(line, 9), threshold=0.35)
    assert len(set(labels.tolist())) >= 4
    assert all(np.ptp(line[labels == c, 0]) <= 0.35 * 2 for c in set(labels.tolist()))


def test_two_tight_groups_and_a_loner():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.05, (30, 2)), rng.normal(3, 0.05, (20, 2)), [[10, 10]]])
    labels = cluster_faces(*neighbour_lists(points, 50), threshold=0.5)
    assert labels.tolist() == [0] * 30 + [1] * 20 + [2]


def test_a_group_larger_than_the_neighbour_lists_stays_whole():
    """Pairs no neighbour list holds are bounded by the faces' farthest listed neighbours:
    a group of 60 with 10 neighbours each is still one group, and a far one stays apart."""
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.05, (60, 2)), rng.normal(2, 0.05, (15, 2))])
    labels = cluster_faces(*neighbour_lists(points, 10), threshold=0.5)
    assert labels.tolist() == [0] * 60 + [1] * 15


def test_missing_neighbours_and_one_face():
    assert cluster_faces(np.array([[-1]]), np.array([[0.0]]), 0.5).tolist() == [0]
    labels = cluster_faces(np.array([[1, -1], [0, -1], [-1, -1]]), np.array([[0.1, 0], [0.1, 0], [0, 0]]), 0.5)
    assert labels.tolist() == [0, 0, 1]


def test_cluster_scores_known_answers():
    identities = ["a", "a", "a", "b", "b", "c"]
    perfect = cluster_scores(identities, [0, 0, 0, 1, 1, 2])
    assert perfect["pairwise_f1"] == 1.0 and perfect["v_measure"] == 1.0 and perfect["identities"] == 3
    # One cluster: all 4 same-identity pairs of the 15 are together: precision 4/15, recall 1.
    lumped = cluster_scores(identities, [0] * 6)
    assert lumped["pairwise_precision"] == pytest.approx(4 / 15, abs=1e-4) and lumped["pairwise_recall"] == 1.0
    assert lumped["v_measure"] == 0.0
    # Every face alone: nothing put together, so recall 0 (and precision counts as 1).
    alone = cluster_scores(identities, list(range(6)))
    assert alone["pairwise_recall"] == 0.0 and alone["pairwise_f1"] == 0.0
