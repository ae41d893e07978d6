"""Trained models joined into one (`trainer ensemble`): the embedding is the members' side by
side, each at its own input size; bad joins are refused with the reason."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from faces.checkpoint import embedding_sha256, load_model, read_checkpoint, save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet
from trainer.cli import main

from conftest import identity_image, write_identity_folders


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def member(path, size, species="dog", seed=0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop=1.0, flip=True,
           alignment="lfw"):
    torch.manual_seed(seed)
    save_checkpoint(path, EmbeddingNet("small", 32).eval(), Preprocess(size, crop, mean=mean, std=std, alignment=alignment),
                    species, 0.6, flip_average=flip)
    return path


def test_ensemble_embedding_is_the_members_side_by_side(tmp_path):
    first, second = member(tmp_path / "a.pt", 32), member(tmp_path / "b.pt", 48, seed=1)
    result = run("ensemble", "--models", f"{first},{second}", "--out", tmp_path / "both.pt")
    assert result.exit_code == 0, result.output
    both, a, b = (load_model(path, "cpu", precision="float32") for path in (tmp_path / "both.pt", first, second))
    assert both.embedding_dim == 64 and both.preprocess.input_size == 48 and both.flip_average
    assert read_checkpoint(tmp_path / "both.pt")["members"] == [
        {"arch": "small", "embedding_dim": 32, "input_size": 32}, {"arch": "small", "embedding_dim": 32, "input_size": 48}]
    faces = torch.stack([both.preprocess.to_uint8(identity_image(i, 1, size=60)) for i in range(6)])
    vectors = both.embed_tensor(faces)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # The 32 px member sees the 48 px crop shrunk (antialiased), as the ensemble's forward does it.
    inputs = both.preprocess.normalise(faces)
    small = F.interpolate(inputs, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    with torch.inference_mode():
        expected = torch.cat([a.net(small) + a.net(small.flip(3)), b.net(inputs) + b.net(inputs.flip(3))], 1)
    assert np.allclose(vectors, F.normalize(expected, dim=1).numpy(), atol=1e-4)
    # Unit members side by side: a pair's squared distance is the mean of the members' squared distances.
    net = both.net
    with torch.inference_mode():
        parts = [m(F.interpolate(inputs, size=(s, s), mode="bilinear", antialias=True, align_corners=False))
                 for m, s in zip(net.members, net.input_sizes)]
        joined = net(inputs)
    squared = lambda v: ((v[0] - v[1]) ** 2).sum().item()  # noqa: E731
    assert squared(joined) == pytest.approx(np.mean([squared(p) for p in parts]), rel=1e-4)
    # In bfloat16 (a CPU with AMX) too, though its resizing runs in float32.
    fast = load_model(tmp_path / "both.pt", "cpu", precision="bfloat16").embed_tensor(faces)
    assert (fast * vectors).sum(1).min() > 0.99


def test_a_member_that_scales_pixels_otherwise_sees_them_as_it_was_trained_to(tmp_path):
    """A 0..1 member (nsfwjs' MobileNetV2) beside a -1..1 one: the ensemble's input is scaled as
    its first member's, and the other member's part is its own embedding of the same pixels."""
    first = member(tmp_path / "a.pt", 32)
    second = member(tmp_path / "b.pt", 32, seed=1, mean=(0.0, 0.1, 0.2), std=(1.0, 0.9, 0.8))
    result = run("ensemble", "--models", f"{first},{second}", "--out", tmp_path / "both.pt")
    assert result.exit_code == 0, result.output
    both, b = (load_model(path, "cpu", precision="float32") for path in (tmp_path / "both.pt", second))
    assert both.preprocess.mean == (0.5, 0.5, 0.5)
    assert "input_scale" not in read_checkpoint(tmp_path / "both.pt")["members"][0]
    faces = torch.stack([both.preprocess.to_uint8(identity_image(i, 1, size=40)) for i in range(4)])
    with torch.inference_mode():
        part = both.net(both.preprocess.normalise(faces))[:, 32:] * np.sqrt(2)
        own = b.net(b.preprocess.normalise(faces))
    assert torch.allclose(part, own, atol=1e-5)


def test_ensemble_is_searched_like_any_model(tmp_path):
    """Built, calibrated (placeholder threshold until then) and loaded by name of file."""
    first, second = member(tmp_path / "a.pt", 32), member(tmp_path / "b.pt", 40, seed=1)
    result = run("ensemble", "--models", f"{first},{second}", "--out", tmp_path / "both.pt", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["embedding_dim"] == 64 and not written["calibrated"]
    assert [m["input_size"] for m in written["members"]] == [32, 40]
    payload = read_checkpoint(tmp_path / "both.pt")
    assert payload["threshold"] == pytest.approx(0.6) and "operating_points" not in payload
    info = run("info", tmp_path / "both.pt")
    assert "small 32-D at 32 px + small 32-D at 40 px" in info.output
    # The members' input sizes are part of what the embeddings depend on.
    changed = dict(payload, members=[dict(m, input_size=36) if i == 0 else m for i, m in enumerate(payload["members"])])
    assert embedding_sha256(changed) != embedding_sha256(payload)
    data = write_identity_folders(tmp_path / "faces", identities=6, per_identity=3, size=40)
    refused = run("train", "--data", data, "--out", tmp_path / "run", "--init", tmp_path / "both.pt", "--epochs", 1,
                  "--no-progress", "--workers", 0)
    assert refused.exit_code != 0 and "an ensemble is not trained further" in refused.output


def test_weights_set_how_much_each_member_counts(tmp_path):
    # Without flip averaging, whose sum of two unit vectors would blur the identity below.
    first, second = member(tmp_path / "a.pt", 32, flip=False), member(tmp_path / "b.pt", 32, seed=1, flip=False)
    result = run("ensemble", "--models", f"{first},{second}", "--weights", "1,0.3", "--out", tmp_path / "w.pt")
    assert result.exit_code == 0, result.output
    assert [m.get("weight") for m in read_checkpoint(tmp_path / "w.pt")["members"]] == [1.0, 0.3]
    weighted, a, b = (load_model(path, "cpu", precision="float32") for path in (tmp_path / "w.pt", first, second))
    faces = torch.stack([weighted.preprocess.to_uint8(identity_image(i, 1, size=40)) for i in range(2)])
    x = weighted.embed_tensor(faces)
    parts = [m.embed_tensor(faces) for m in (a, b)]
    # Each member's unit vector scaled by w / sqrt(1 + 0.09): squared distances weigh 1 : 0.09.
    squared = lambda v: float(((v[0] - v[1]) ** 2).sum())  # noqa: E731
    assert squared(x) == pytest.approx((squared(parts[0]) + 0.09 * squared(parts[1])) / 1.09, rel=1e-4)
    assert np.allclose(x[:, :32], parts[0] / np.sqrt(1.09), atol=1e-5)
    # Equal weights are no weights: the same specs, the same digest as a plain join.
    run("ensemble", "--models", f"{first},{second}", "--out", tmp_path / "plain.pt")
    run("ensemble", "--models", f"{first},{second}", "--weights", "2,2", "--out", tmp_path / "same.pt")
    plain, same = read_checkpoint(tmp_path / "plain.pt"), read_checkpoint(tmp_path / "same.pt")
    assert "weight" not in plain["members"][0] and embedding_sha256(plain) == embedding_sha256(same)
    assert embedding_sha256(plain) != embedding_sha256(read_checkpoint(tmp_path / "w.pt"))


def test_members_with_tighter_crops_see_the_centre_of_the_widest(tmp_path):
    # a: the whole LFW-framed face at 32 px; b: its central half at 32 px. The ensemble takes
    # a's crop at 64 px, so b's half of it is 32 px: no member's part is enlarged.
    wide, tight = member(tmp_path / "a.pt", 32, flip=False), member(tmp_path / "b.pt", 32, seed=1, crop=0.5, flip=False)
    result = run("ensemble", "--models", f"{tight},{wide}", "--out", tmp_path / "both.pt")
    assert result.exit_code == 0, result.output
    payload = read_checkpoint(tmp_path / "both.pt")
    assert [m.get("view", 1.0) for m in payload["members"]] == [0.5, 1.0]
    both, b = load_model(tmp_path / "both.pt", "cpu", precision="float32"), load_model(tight, "cpu", precision="float32")
    assert both.preprocess.crop == 1.0 and both.preprocess.input_size == 64
    faces = [identity_image(i, 1, size=128) for i in range(3)]
    joined = both.embed_images(faces)
    own = b.embed_images(faces)           # b's own crop of each picture, as it was trained
    part = joined[:, :32] / np.linalg.norm(joined[:, :32], axis=1, keepdims=True)
    assert (part * own).sum(1).min() > 0.99


@pytest.mark.parametrize("weights", ["1", "1,0", "1,-2", "1,x", "1,inf"])
def test_bad_weights_are_refused_with_the_reason(tmp_path, weights):
    first, second = member(tmp_path / "a.pt", 32), member(tmp_path / "b.pt", 32, seed=1)
    result = run("ensemble", "--models", f"{first},{second}", "--weights", weights, "--out", tmp_path / "w.pt")
    assert result.exit_code != 0 and "expected 2 positive numbers" in result.output, result.output
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("case, reason", [
    ("one", "at least two models"),
    ("species", "a human model cannot join"),
    ("alignment", "its alignment differ"),
    ("nested", "already an ensemble"),
    ("missing", "no such model file"),
])
def test_bad_joins_are_refused_with_the_reason(tmp_path, case, reason):
    first = member(tmp_path / "a.pt", 32)
    other = {"one": None,
             "species": member(tmp_path / "h.pt", 32, species="human"),
             "alignment": member(tmp_path / "m.pt", 32, alignment="dlib_chip"),
             "nested": tmp_path / "both.pt",
             "missing": tmp_path / "absent.pt"}[case]
    if case == "nested":
        run("ensemble", "--models", f"{first},{member(tmp_path / 'b.pt', 40)}", "--out", other)
    models = str(first) if other is None else f"{first},{other}"
    result = run("ensemble", "--models", models, "--out", tmp_path / "out.pt")
    assert result.exit_code != 0 and reason in result.output, result.output
    assert not (tmp_path / "out.pt").exists()
