"""bench/calibration_transfer.py, which chooses faces.open_set.DEFAULT_FPIR: cross-fitted
reads on generated identities, and the rule that picks the default aim from them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faces.open_set import DEFAULT_FPIR, FPIR_PROMISE
from test_open_set import identities

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from calibration_transfer import AIMS, PROMISE_SHARE, reads, summary  # noqa: E402


def read_rows(gallery: str, means: dict) -> list[dict]:
    """Two reads of one gallery whose FPIR at each aim averages `means[aim]` (None: refused)."""
    return [{"gallery": gallery, "faces": 100, "individuals": 50, "strangers": 40,
             **{f"fpir_at_aim_{aim}": None if means.get(aim) is None else means[aim] + sign * 0.002
                for aim in AIMS}}
            for sign in (-1, 1)]


def test_the_default_aim_is_the_largest_whose_reads_average_under_the_share_of_the_promise_everywhere():
    near = {0.05: 0.056, 0.045: 0.049, 0.04: 0.043, 0.035: 0.036, 0.03: 0.03, 0.01: 0.008}
    far = {0.05: 0.037, 0.045: 0.033, 0.04: 0.029, 0.035: 0.025, 0.03: 0.022, 0.01: None}
    result = summary(read_rows("as is", near) + read_rows("with distractors", far))
    assert result["default_aim"] == 0.04
    assert all(near[a] > PROMISE_SHARE * FPIR_PROMISE for a in AIMS if a > 0.04)
    assert result["galleries"]["as is"]["0.05"]["over_promise"] == 1.0
    assert result["galleries"]["with distractors"]["0.01"] == {"mean": None, "refused": 2}
    # An aim refused in every read cannot be the default.
    assert summary(read_rows("as is", {0.01: 0.001}))["default_aim"] == 0.01
    assert summary(read_rows("as is", {}))["default_aim"] is None


def test_cross_fitted_reads_cover_both_galleries_and_rise_with_the_aim():
    vectors, labels = identities(240, np.random.default_rng(3).integers(1, 5, 240), seed=3)
    filler = identities(300, 2, seed=4)
    people = np.unique(labels)
    order = np.random.default_rng(0).permutation(people)
    rows = reads(vectors, labels, filler, (order[:120], order[120:]), grow=True, seed=0)
    assert [r["gallery"] for r in rows] == ["as is", "with distractors"] * 2
    for as_is, grown in (rows[0:2], rows[2:4]):
        assert grown["faces"] == as_is["faces"] + 600 and as_is["strangers"] == grown["strangers"] > 20
    for row in rows:
        fpirs = [row[f"fpir_at_aim_{aim}"] for aim in sorted(AIMS)]
        assert all(0 <= f <= 1 for f in fpirs) and fpirs == sorted(fpirs), row
    assert DEFAULT_FPIR in AIMS and DEFAULT_FPIR <= FPIR_PROMISE
