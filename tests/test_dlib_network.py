"""The dlib face recognition network read into PyTorch (`trainer import-dlib`) computes dlib's
own descriptors: the same chips through both give the same vectors and the same decisions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LFW, SHARED_DATA
from faces.detectors import get_detector
from faces.detectors.hog import HogDetector as DlibDetector
from faces.detectors.landmarks import bundled_dlib_model
from faces.errors import ModelError
from faces.imaging import Preprocess, load_image
from faces.models import add_prev
from trainer.data import read_pairs
from trainer.dlib_import import (DLIB_FILE, DLIB_THRESHOLD, dlib_preprocess, load_bundled_dlib_network,
                                 read_dlib_network, to_embedding_net)

dlib = pytest.importorskip("dlib")
PAIRS_PER_KIND = 100


@pytest.fixture(scope="module")
def network():
    return load_bundled_dlib_network()


@pytest.fixture(scope="module")
def lfw_pairs():
    """The first LFW training pairs of each kind, with dlib's face chip of every image."""
    pairs = read_pairs(SHARED_DATA / "lfw" / "pairsDevTrain.txt", LFW)
    chosen = [p for p in pairs if p.same][:PAIRS_PER_KIND] + [p for p in pairs if not p.same][:PAIRS_PER_KIND]
    cut = get_detector("none", dlib_preprocess(load_bundled_dlib_network()))
    paths = sorted({path for pair in chosen for path in (pair.first, pair.second)})
    chips = {path: np.asarray(cut(load_image(path))[0].image) for path in paths}
    return chosen, chips


def test_reads_dlibs_input_layer(network):
    assert network.input_size == 150
    assert network.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    kinds = [layer.kind for layer in network.layers]
    assert kinds.count("con_4") == 29 and kinds.count("affine_") == 29 and kinds.count("fc_2") == 1


def test_pytorch_network_gives_dlibs_descriptors_and_decisions(network, lfw_pairs):
    pairs, chips = lfw_pairs
    net = to_embedding_net(network)
    preprocess = dlib_preprocess(network)
    reference = dlib.face_recognition_model_v1(str(bundled_dlib_model(DLIB_FILE)))
    paths = list(chips)
    theirs = np.array([np.array(reference.compute_face_descriptor(chips[p])) for p in paths])
    batch = torch.from_numpy(np.stack([chips[p] for p in paths])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        ours = net.descriptor(preprocess.normalise(batch)).numpy()
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.9999, f"lowest cosine {cosine.min():.6f}"
    row = {p: i for i, p in enumerate(paths)}

    def decisions(vectors):
        return [np.linalg.norm(vectors[row[p.first]] - vectors[row[p.second]]) <= DLIB_THRESHOLD for p in pairs]
    assert decisions(ours) == decisions(theirs)
    # And the decisions are worth having: dlib's network separates these pairs well.
    assert np.mean([d == p.same for d, p in zip(decisions(ours), pairs)]) >= 0.9


def test_chip_is_dlibs_own_face_chip():
    image = load_image(LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    detector = DlibDetector("dlib_chip", 150)
    [face] = detector(image)
    pixels = np.asarray(image)
    rect = dlib.rectangle(*face.box)
    shape = dlib.shape_predictor(str(bundled_dlib_model("shape_predictor_5_face_landmarks.dat")))(pixels, rect)
    expected = dlib.get_face_chip(pixels, shape, size=150, padding=0.25)
    assert face.image.size == (150, 150)
    assert np.abs(np.asarray(face.image).astype(int) - expected.astype(int)).max() <= 1


def test_a_wider_chip_holds_dlibs_own_chip_at_its_centre():
    """A model may ask for a wider margin (Preprocess.chip_padding): a 240 px chip with padding
    0.7 spans 2.4 landmark extents, so its central 150 px are the 150 px chip with dlib's 0.25,
    which is how an ensemble's dlib network sees it (trainer ensemble's `view`)."""
    image = load_image(LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    [native] = DlibDetector("dlib_chip", 150)(image)
    [wide] = DlibDetector("dlib_chip", 240, chip_padding=0.7)(image)
    assert wide.image.size == (240, 240) and wide.box == native.box
    centre = np.asarray(wide.image).astype(int)[45:195, 45:195]
    difference = np.abs(centre - np.asarray(native.image).astype(int))
    assert difference.mean() < 2.0            # resampling only (measured: 0.8 of 255 over 40 faces)
    shifted = np.abs(np.asarray(wide.image).astype(int)[46:196, 46:196] - np.asarray(native.image).astype(int))
    assert shifted.mean() > 2 * difference.mean()     # and not any nearby square
    assert get_detector("none", Preprocess(240, 1.0, alignment="dlib_chip", chip_padding=0.7))(image)[0].image.size == (240, 240)
    # Stored only where it is not dlib's own, so older checkpoints' preprocessing and digests stay.
    assert "chip_padding" not in Preprocess(150, alignment="dlib_chip").to_dict()
    wider = Preprocess(240, alignment="dlib_chip", chip_padding=0.7)
    assert Preprocess.from_dict(wider.to_dict()) == wider


def test_crop_without_a_detectable_face_falls_back_to_the_centre():
    grey = load_image(LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").convert("L").convert("RGB")
    blank = grey.point(lambda _: 128)
    [face] = get_detector("none", dlib_preprocess(load_bundled_dlib_network()))(blank)
    assert face.image.size == (150, 150) and face.box is None


def test_add_prev_zero_fills_the_smaller_tensor_at_its_end():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 2.0)
    total = add_prev(a, b)
    assert total.shape == (1, 4, 4, 4)
    assert torch.all(total[:, :2, :3, :3] == 3) and torch.all(total[:, 2:] == 2)
    assert torch.all(total[:, :2, 3, :] == 2) and torch.all(total[:, :2, :, 3] == 2)


@pytest.mark.parametrize("content", [b"", b"\x01\x01\x01\rloss_metric_2", b"not a dlib file at all" * 10])
def test_a_file_that_is_not_dlibs_network_is_refused(tmp_path, content):
    path = tmp_path / "broken.dat"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="broken.dat"):
        to_embedding_net(read_dlib_network(path))


def test_a_cut_network_file_is_refused(tmp_path):
    data = bundled_dlib_model(DLIB_FILE).read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        to_embedding_net(read_dlib_network(path))


def test_import_dlib_writes_a_calibrated_float32_checkpoint(tmp_path, identity_folders):
    from click.testing import CliRunner
    from faces.checkpoint import load_model, read_checkpoint
    from trainer.cli import main
    from trainer.data import make_pairs, scan_identities, write_pairs
    write_pairs(make_pairs(scan_identities(identity_folders), 20, seed=1), tmp_path / "pairs.txt")
    out = tmp_path / "human.pt"
    result = CliRunner().invoke(main, ["import-dlib", "--out", str(out), "--data", str(identity_folders),
                                       "--pairs", str(tmp_path / "pairs.txt"), "--flip-average"])
    assert result.exit_code == 0, result.output
    payload = read_checkpoint(out)
    assert payload["arch"] == "dlib_resnet" and payload["preprocess"]["alignment"] == "dlib_chip"
    assert payload["flip_average"] and payload["training"]["command"].startswith("trainer import-dlib")
    assert all(v.dtype == torch.float32 for v in payload["state_dict"].values())
    points = payload["operating_points"]
    assert payload["threshold"] == points["strict"]["threshold"] <= points["balanced"]["threshold"]
    model = load_model(out, device="cpu")
    network = load_bundled_dlib_network()
    assert torch.equal(model.net.head.weight, to_embedding_net(network).head.weight)
    assert model.flip_average and "strict" in result.output
