"""Evaluation metrics on hand-made numbers, pairs parsing, and `trainer evaluate` end to end."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from faces.checkpoint import load_model, read_checkpoint, save_checkpoint, write_operating_points
from faces.errors import ModelError
from faces.open_set import DEFAULT_FPIR
from trainer.cli import main
from trainer.data import DataError, read_pairs
from trainer.evaluate import (balanced_folds, best_threshold, distance_matrix, identification_metrics,
                              operating_points, retrieval_metrics, search_metrics, stranger_distances,
                              tar_at_far, verification_metrics)
from faces.imaging import Preprocess
from faces.models import EmbeddingNet


def test_best_threshold_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.normal(0.8, 0.2, 200), rng.normal(1.2, 0.2, 200)])
    same = np.array([True] * 200 + [False] * 200)
    threshold, accuracy = best_threshold(distances, same)
    exhaustive = max(((distances <= t) == same).mean() for t in np.concatenate([distances, [-1.0]]))
    assert accuracy == pytest.approx(exhaustive)
    assert ((distances <= threshold) == same).mean() == pytest.approx(accuracy)


def test_operating_points_strict_and_balanced():
    rng = np.random.default_rng(3)
    genuine, strangers = rng.normal(0.6, 0.15, 2000), rng.normal(1.3, 0.15, 20000)
    distances = np.concatenate([genuine, strangers])
    same = np.arange(len(distances)) < len(genuine)
    points = operating_points(distances, same)
    strict, balanced = points["strict"], points["balanced"]
    assert points["same_pairs"] == 2000 and points["different_pairs"] == 20000
    # strict: the largest threshold that lets at most 3e-4 of the strangers (6) through.
    assert (strangers <= strict["threshold"]).sum() == 6 == round(strict["far"] * 20000)
    assert strict["tar"] == pytest.approx((genuine <= strict["threshold"]).mean())
    assert np.sort(strangers)[6] > strict["threshold"]
    # balanced: the best mean of TAR and 1 - FAR (between the two bumps, here near 0.95).
    exhaustive = max(((genuine <= t).mean() + (strangers > t).mean()) / 2 for t in distances)
    assert (balanced["tar"] + 1 - balanced["far"]) / 2 == pytest.approx(exhaustive)
    assert 0.85 < balanced["threshold"] < 1.05 and balanced["far"] > strict["far"]
    # Too few strangers to allow even one false accept: strict accepts no stranger.
    few = operating_points(np.array([0.1, 0.2, 0.3, 0.9]), np.array([True, True, False, False]))
    assert few["strict"]["far"] == 0 and few["strict"]["tar"] == 1.0 and 0.2 < few["strict"]["threshold"] < 0.3
    with pytest.raises(DataError, match="both same and different"):
        operating_points(np.array([0.1]), np.array([True]))


def test_stranger_distances_are_every_pair_of_different_identities():
    e = np.eye(4, dtype=np.float32)
    labels = np.array([0, 0, 1, 2])
    distances = stranger_distances(e, labels)
    assert len(distances) == 5 and np.allclose(distances, np.sqrt(2))     # 6 pairs less the one same
    assert len(stranger_distances(e, labels, max_images=3)) <= 3


def test_old_checkpoint_and_calibrated_operating_points(tmp_path):
    old = tmp_path / "old.pt"
    save_checkpoint(old, EmbeddingNet("small", 32).eval(), Preprocess(32, 1.0), "human", 0.7)
    model = load_model(old, device="cpu")
    assert model.threshold_for() == model.threshold_for("balanced") == model.threshold == pytest.approx(0.7)
    assert model.operating_point("strict") == {"name": "strict", "threshold": pytest.approx(0.7), "tar": None, "far": None}
    assert model.threshold_for("0.9") == 0.9 and model.operating_point(0.9)["name"] == "custom"
    for bad in ("loose", "0", "2.5", "nan"):
        with pytest.raises(ModelError, match="expected strict or balanced, or a distance between 0 and 2"):
            model.threshold_for(bad)
    points = {"strict": {"threshold": 0.4, "tar": 0.5, "far": 0.001},
              "balanced": {"threshold": 0.9, "tar": 0.9, "far": 0.1}, "different_pairs": 5000}
    new = write_operating_points(old, points, tmp_path / "new.pt")
    calibrated = load_model(new, device="cpu")
    assert calibrated.threshold == 0.4 and calibrated.threshold_for("balanced") == 0.9
    assert calibrated.operating_point("balanced") == {"name": "balanced", "threshold": 0.9, "tar": 0.9, "far": 0.1}
    assert read_checkpoint(new)["operating_points"]["different_pairs"] == 5000
    assert "operating_points" not in read_checkpoint(old)            # --out leaves the original alone
    with pytest.raises(ModelError, match="balanced missing"):
        write_operating_points(old, {"strict": points["strict"]})


def test_folds_are_balanced_whatever_the_order():
    same = np.array([True] * 30 + [False] * 30)
    np.random.default_rng(1).shuffle(same)
    folds = balanced_folds(same, 10)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    assert all(same[f].sum() == 3 and (~same[f]).sum() == 3 for f in folds)


def test_verification_separable_and_random():
    same = np.array([True] * 100 + [False] * 100)
    separable = verification_metrics(np.where(same, 0.3, 1.3), same)
    assert separable["accuracy"] == 1.0 and separable["auc"] == 1.0 and separable["tar_at_far_1e-3"] == 1.0
    assert 0.3 <= separable["threshold"] < 1.3
    noise = verification_metrics(np.random.default_rng(2).random(200), same)
    assert 0.35 < noise["accuracy"] < 0.65 and 0.35 < noise["auc"] < 0.65


def test_tar_at_far_lets_through_at_most_that_share_of_different_pairs():
    # 10,000 different pairs at 1.0 ... 1.9999; same pairs at 0.5, 1.00005 (beats all but the
    # nearest different pair) and 1.5.
    different = 1.0 + np.arange(10_000) / 10_000
    genuine = np.array([0.5, 1.00005, 1.5])
    distances = np.concatenate([genuine, different])
    same = np.concatenate([np.ones(3, bool), np.zeros(10_000, bool)])
    assert tar_at_far(distances, same, 1e-4) == pytest.approx(2 / 3)   # one different pair may pass
    assert tar_at_far(distances, same, 0.0) == pytest.approx(1 / 3)
    assert tar_at_far(distances, same, 0.6) == 1.0
    assert tar_at_far(distances, same, 1.0) == 1.0


def test_identification_and_retrieval_known_answers():
    # Identities 0 and 1 are tight clusters; the probe of identity 2 sits nearer identity 0.
    e = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0.1, 0.99, 0], [0, 0, 1], [0.95, 0, 0.31]])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2, 2])
    ident = identification_metrics(e, labels)
    assert ident["probes"] == 3 and ident["rank1"] == pytest.approx(2 / 3) and ident["rank5"] == 1.0
    retrieval = retrieval_metrics(e, labels)
    assert retrieval["queries"] == 6
    assert retrieval["recall@1"] == pytest.approx(5 / 6)   # only e5 finds identity 0 first
    assert 0 < retrieval["map"] < 1


def test_search_metrics_query_each_identitys_first_image_against_the_rest():
    e = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0.1, 0.99, 0], [0, 0, 1], [0.95, 0, 0.31],
                  [0.999, 0.04, 0]])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2, 2, 3])   # identity 3 has one image: a distractor only
    search = search_metrics(e, labels)
    assert search["queries"] == 3 and search["gallery"] == 4
    # Identity 0's query finds the distractor first, its own second image next.
    assert search["rank1"] == pytest.approx(2 / 3) and search["rank5"] == 1.0
    assert search["map"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_distance_matrix_is_euclidean_for_vectors_of_any_length():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), 3 * rng.normal(size=(4, 8))
    expected = np.linalg.norm(a[:, None] - b[None], axis=2)
    assert np.allclose(distance_matrix(a, b), expected, atol=1e-6)


def test_pairs_file_formats(tmp_path):
    (tmp_path / "Ann").mkdir()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\nAnn\t1\t2\nAnn 1 Bob 3\n1087  1087.0.jpg  1087.1.jpg\n")
    parsed = read_pairs(pairs, tmp_path)
    assert [p.same for p in parsed] == [True, False, True]
    assert parsed[0].first == tmp_path / "Ann" / "Ann_0001.jpg"
    assert parsed[1].second == tmp_path / "Bob" / "Bob_0003.jpg"
    assert parsed[2].second == tmp_path / "1087" / "1087.1.jpg"
    pairs.write_text("Ann 1\n")
    with pytest.raises(DataError, match="pairs.txt:1"):
        read_pairs(pairs, tmp_path)


@pytest.fixture
def untrained_model(tmp_path):
    path = tmp_path / "untrained.pt"
    save_checkpoint(path, EmbeddingNet("small", 32).eval(), Preprocess(32, 1.0), "human", 0.5)
    return path


def test_evaluate_cli_identical_same_pairs_scores_perfectly(tmp_path, identity_folders, untrained_model):
    """Same pairs of identical images are at distance 0; different identities are not: an
    untrained model must still reach accuracy 1.0 on such a set."""
    for folder in identity_folders.iterdir():
        first = sorted(folder.iterdir())[0]
        shutil.copy(first, folder / "copy.jpg")
    names = sorted(p.name for p in identity_folders.iterdir())
    lines = [f"{n}\t{n}_0001.jpg\tcopy.jpg" for n in names]
    lines += [f"{a}\t1\t{b}\t2" for a, b in zip(names, names[1:] + names[:1])]
    (tmp_path / "pairs.txt").write_text(f"{len(names)}\n" + "\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_model), "--data", str(identity_folders),
                                       "--pairs", str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "plots"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["verification"]["accuracy"] == 1.0
    assert report["verification"]["auc"] == 1.0
    assert report["identities"] == len(names) and report["images"] == len(names) * 6
    assert set(report["low_far"]) == {"tar_at_far_1e-3", "tar_at_far_1e-4", "same_pairs", "stranger_pairs"}
    assert report["low_far"]["same_pairs"] == len(names)
    assert {"fnir_at_fpir_0.05", "fnir_at_fpir_0.01", "known", "strangers"} <= set(report["open_set"])
    text = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_model), "--data", str(identity_folders),
                                     "--pairs", str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "plots")])
    assert text.exit_code == 0, text.output
    assert "TAR@FAR=1e-4" in text.output and "FNIR@FPIR=0.01" in text.output
    for plot in report["plots"]:
        assert (tmp_path / "plots").joinpath(plot.split("/")[-1]).stat().st_size > 5000


def test_calibrate_cli_writes_operating_points_that_info_shows(tmp_path, identity_folders, untrained_model):
    names = sorted(p.name for p in identity_folders.iterdir())
    lines = [f"{n}\t1\t2" for n in names] + [f"{a}\t1\t{b}\t2" for a, b in zip(names, names[1:] + names[:1])]
    (tmp_path / "pairs.txt").write_text(f"{len(names)}\n" + "\n".join(lines) + "\n")
    out = tmp_path / "calibrated.pt"
    result = CliRunner().invoke(main, ["calibrate", "--model", str(untrained_model), "--data", str(identity_folders),
                                       "--pairs", str(tmp_path / "pairs.txt"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.output.strip().splitlines()[-1])["operating_points"]
    # 6 identities x 5 images: every one of the 15 x 25 = 375 cross-identity pairs is a stranger pair.
    assert points["different_pairs"] == 375 and points["same_pairs"] == len(names)
    # The stranger statistics for searches are stored beside the operating points.
    open_set = points.pop("open_set")
    assert open_set["pairs"] == 375 and len(open_set["shifts"]) == 200 and open_set["data"] == str(identity_folders)
    assert read_checkpoint(out)["operating_points"] == points and read_checkpoint(out)["open_set"] == open_set
    calibrated = load_model(out, device="cpu")
    assert calibrated.threshold == points["strict"]["threshold"] and calibrated.open_set.alpha == open_set["alpha"]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0
    assert f"strict   threshold {points['strict']['threshold']:.4f}   TAR {points['strict']['tar']:.4f}" in info.output
    assert "on 6 same and 375 stranger pairs" in info.output
    assert f"searches (default fpir {DEFAULT_FPIR}: " in info.output
    assert f"1,000 individuals: threshold {calibrated.open_set.threshold(DEFAULT_FPIR, 1000):.4f}" in info.output
    old = CliRunner().invoke(main, ["info", str(untrained_model)])
    assert "none measured" in old.output and "no stranger statistics" in old.output


def test_calibrate_with_flip_stores_flip_averaging_and_its_own_points(tmp_path, identity_folders, untrained_model):
    """`calibrate --flip` switches flip averaging on in the written checkpoint, and the
    operating points are those of the flip-averaged embeddings, not of the plain ones."""
    names = sorted(p.name for p in identity_folders.iterdir())
    lines = [f"{n}\t1\t2" for n in names] + [f"{a}\t1\t{b}\t2" for a, b in zip(names, names[1:] + names[:1])]
    (tmp_path / "pairs.txt").write_text(f"{len(names)}\n" + "\n".join(lines) + "\n")
    common = ["calibrate", "--model", str(untrained_model), "--data", str(identity_folders),
              "--pairs", str(tmp_path / "pairs.txt"), "--json"]
    plain = CliRunner().invoke(main, common + ["--out", str(tmp_path / "plain.pt")])
    flipped = CliRunner().invoke(main, common + ["--out", str(tmp_path / "flip.pt"), "--flip"])
    assert plain.exit_code == 0 and flipped.exit_code == 0, flipped.output
    assert load_model(tmp_path / "plain.pt", device="cpu").flip_average is False
    flip_model = load_model(tmp_path / "flip.pt", device="cpu")
    assert flip_model.flip_average is True
    plain_points = json.loads(plain.output.strip().splitlines()[-1])["operating_points"]
    flip_points = json.loads(flipped.output.strip().splitlines()[-1])["operating_points"]
    assert flip_model.threshold == flip_points["strict"]["threshold"] != plain_points["strict"]["threshold"]
