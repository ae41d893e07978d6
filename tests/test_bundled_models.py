"""The models shipped in faces/bundled/: they load by name with no network, carry what they need,
and verify faces of identities they never trained on. A trained model's held-out split is
recomputed from the seed and fraction its checkpoint records; the imported dlib network
never saw any LFW person, and is checked on the same held-out people."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DOGS, LFW, identity_image
from faces.checkpoint import BUNDLED_MODELS, embedding_sha256, load_model, read_checkpoint, save_checkpoint
from faces.imaging import Preprocess, load_image
from faces.models import EmbeddingNet
from indexer.writer import IndexWriter
from search.engine import QueryEngine
from trainer.data import (group_by_identity, make_pairs, read_pairs, scan_identities, split_identities,
                          write_pairs)

REPO = Path(__file__).resolve().parents[1]
# Held-out identities of a model without a training split (imported): LFW's choose and test, seed 0.
IMPORTED_HOLD_OUT = {"choose_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
# Least held-out verification accuracy on 200 pairs (faces/bundled/*.md give the full numbers):
# room for 200-pair noise below each model's validation accuracy.
MIN_ACCURACY = {"human": 0.95, "human-dlib": 0.95, "human-fast": 0.75, "dog": 0.75, "dog-fast": 0.75,
                "dog-2net": 0.75}
# 128-D a network; `dog` is three networks side by side, `dog-2net` two, `human` dlib's 128 and
# FaceRes' 256 (through its learned head).
EMBEDDING_DIM = {"dog": 384, "dog-2net": 256, "human": 384}


def data_of(model) -> object:
    return DOGS if model.species == "dog" else LFW


def held_out(model) -> tuple[list[str], list[str]]:
    groups = group_by_identity(scan_identities(data_of(model)))
    config = model.info.get("config", IMPORTED_HOLD_OUT)
    # Checkpoints trained before the three-way split held out "val_fraction" (what is now choose).
    split = split_identities(list(groups), config.get("choose_fraction", config.get("val_fraction")),
                             config.get("test_fraction", 0.0), config["seed"])
    return split.train, split.choose + split.test


def test_every_bundled_model_is_named():
    assert set(BUNDLED_MODELS) == set(MIN_ACCURACY)


def test_bundled_files_stay_under_the_repositorys_limit():
    sizes = {path.name: path.stat().st_size for path in (REPO / "faces" / "bundled").glob("*.pt")}
    assert sizes and all(size < 25_000_000 for size in sizes.values()), sizes


def test_a_deflated_checkpoint_loads_the_same_weights(tmp_path):
    """tools/deflate_checkpoint.py (how dog.pt stays under 25 MB): smaller, same weights, same digest."""
    sys.path.insert(0, str(REPO / "tools"))
    from deflate_checkpoint import deflate
    torch.manual_seed(0)
    net = EmbeddingNet("small", 32).eval()
    net.head[1].weight.data.zero_()        # a compressible tensor, as stored weights partly are
    save_checkpoint(tmp_path / "m.pt", net, Preprocess(32), "dog", 0.5)
    stored = read_checkpoint(tmp_path / "m.pt")
    before, after = deflate(tmp_path / "m.pt")
    deflated = read_checkpoint(tmp_path / "m.pt")
    assert after < before
    assert stored["state_dict"].keys() == deflated["state_dict"].keys()
    assert all(torch.equal(stored["state_dict"][k], deflated["state_dict"][k]) for k in stored["state_dict"])
    assert embedding_sha256(deflated) == embedding_sha256(stored)


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_model_card_quotes_the_recorded_command_and_the_operating_points(name):
    """Each card's numbers come from its recorded commands: the card shows the command the
    checkpoint records having made it, and the operating points the checkpoint carries."""
    import faces
    card = (Path(faces.__file__).parent / "bundled" / f"{name}.md").read_text()
    model = load_model(name, device="cpu")
    assert model.info["command"] in card
    for point in ("strict", "balanced"):
        assert f"{model.operating_points[point]['threshold']:.3f}" in card, point


def vectors_dim(model) -> int:
    return model.embed_images([identity_image(0, 0, size=model.preprocess.input_size)]).shape[1]


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_loads_with_everything_it_needs(name):
    model = load_model(name, device="cpu")
    assert model.species == name.split("-")[0]
    assert 0.0 < model.threshold < 2.0            # a distance between unit vectors
    assert model.embedding_dim == EMBEDDING_DIM.get(name, 128) == vectors_dim(model)
    assert model.info["command"].startswith("trainer ")
    size = model.preprocess.input_size
    vectors = model.embed_images([identity_image(0, 0, size=size), identity_image(1, 0, size=size)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_verifies_held_out_identities(name, tmp_path):
    model = load_model(name, device="cpu")
    if not data_of(model).is_dir():
        pytest.skip("shared data not present")
    train, val = held_out(model)
    assert not set(train) & set(val)
    if "config" in model.info:
        # The recomputed split is the one the model was trained on, so `val` is truly unseen.
        assert len(train) == model.info["identities"]
    groups = group_by_identity(scan_identities(data_of(model)))
    write_pairs(make_pairs([s for identity in val for s in groups[identity]], count=100, seed=12345),
                tmp_path / "pairs.txt")
    pairs = read_pairs(tmp_path / "pairs.txt", data_of(model))
    first = model.embed_cropped([load_image(pair.first) for pair in pairs])
    second = model.embed_cropped([load_image(pair.second) for pair in pairs])
    distances = np.linalg.norm(first - second, axis=1)
    same = np.array([pair.same for pair in pairs])
    accuracy = np.mean((distances <= model.threshold_for("balanced")) == same)
    assert accuracy >= MIN_ACCURACY[name], accuracy
    # The default (strict) operating point lets through 0.03% of strangers on the calibration
    # pairs; of these 100 stranger pairs one at most may pass.
    points = model.operating_points
    assert model.threshold == points["strict"]["threshold"] and points["different_pairs"] > 400_000
    assert np.sum(distances[~same] <= model.threshold) <= 1
    assert distances[same].mean() < distances[~same].mean()


def test_default_human_index_finds_held_out_people_in_lfw_crops(tmp_path):
    """`indexer build GALLERY --detector none` and `search query` with the default model,
    on LFW crops: each held-out person's first photo finds that person first."""
    if not LFW.is_dir():
        pytest.skip("shared data not present")
    model = load_model("human", device="cpu")
    groups = group_by_identity(scan_identities(LFW))
    people = [name for name in held_out(model)[1] if len(groups[name]) >= 3][:12]
    gallery = tmp_path / "gallery"
    for name in people:
        (gallery / name).mkdir(parents=True)
        for sample in groups[name][1:]:
            (gallery / name / sample.path.name).symlink_to(sample.path)
    with IndexWriter(tmp_path / "index", create=True, model="human", detector="none", progress=False) as writer:
        writer.build(gallery)
    engine = QueryEngine(tmp_path / "index", detector="none")
    firsts = [engine.query(groups[name][0].path, k=1)["faces"][0]["matches"][0]["identity"] for name in people]
    assert np.mean([found == name for found, name in zip(firsts, people)]) >= 11 / 12, list(zip(people, firsts))


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_trainer_info_reads_as_text(name):
    from click.testing import CliRunner
    from trainer.cli import main
    result = CliRunner().invoke(main, ["info", name])
    assert result.exit_code == 0, result.output
    assert "{" not in result.output and "}" not in result.output          # no raw Python dicts
    assert not re.search(r"\d\.\d{6,}", result.output), result.output      # no 16-digit floats
    assert re.search(r"^preprocess: input_size \d+, crop [\d.]+, mean \(", result.output, re.M)


def test_precision_is_asked_or_auto_and_a_bad_one_is_refused(monkeypatch):
    import torch
    from faces.precision import PRECISION_ENV, compute_precision
    from faces.errors import ModelError
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert compute_precision("cpu") == ("bfloat16" if has_amx else "float32")
    assert compute_precision("cuda") == "float32"
    monkeypatch.setenv(PRECISION_ENV, "Float32")
    assert compute_precision("cpu") == "float32"
    assert load_model("human", device="cpu").precision == "float32"
    assert compute_precision("cpu", "bfloat16") == "bfloat16"      # asked beats the environment
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ModelError, match=r"'half' \(FACESEARCH_PRECISION\): expected one of auto, float32, "):
        load_model("human", device="cpu")


def test_bfloat16_embeddings_keep_float32_decisions():
    """The same LFW faces embedded in bfloat16 and float32: unit vectors in float32 either way,
    each within 1e-3 of cosine, and every pair on the same side of the default threshold
    unless it lies within 0.02 of it."""
    if not LFW.is_dir():
        pytest.skip("shared data not present")
    paths = [sample.path for sample in scan_identities(LFW)[:24]]
    vectors = {}
    for precision in ("float32", "bfloat16"):
        model = load_model("human", device="cpu", precision=precision)
        assert model.precision == precision
        vectors[precision] = model.embed_cropped([load_image(path) for path in paths])
        assert vectors[precision].dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors[precision], axis=1), 1.0, atol=1e-5)
    assert (vectors["float32"] * vectors["bfloat16"]).sum(1).min() >= 0.999
    exact, fast = (np.linalg.norm(v[:, None] - v[None], axis=2) for v in (vectors["float32"], vectors["bfloat16"]))
    assert np.abs(exact - fast).max() < 0.02
    clear = np.abs(exact - model.threshold) > 0.02
    assert ((exact <= model.threshold) == (fast <= model.threshold))[clear].all()
    assert not np.array_equal(vectors["float32"], vectors["bfloat16"])    # bfloat16 did run
