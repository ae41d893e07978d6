"""The 'blazeface' detector: the PyTorch port against the original TF.js model's outputs,
recall on a few generated photos of held-out people, EXIF rotation and bad input."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LFW, REPO, SHARED_DATA
from faces.detectors import get_detector
from faces.detectors.blazeface_net import decode, grid_anchors, load_network
from faces.imaging import Preprocess, load_image

needs_data = pytest.mark.skipif(not LFW.is_dir(), reason="shared LFW data not present")
FIXTURE = REPO / "tests" / "data" / "blazeface_tfjs.npz"
WEIGHTS = REPO / "faces" / "bundled" / "blazeface.pt"


CHIP = Preprocess(150, 1.0, alignment="dlib_chip")       # the human model's alignment


@pytest.fixture(scope="module")
def detector():
    return get_detector("blazeface", CHIP)


@needs_data
def test_port_gives_the_original_models_outputs():
    """tools/blazeface_fixture.py ran the TF.js graph model (pure-JS tfjs) on these inputs."""
    sys.path.insert(0, str(REPO / "tools"))
    from blazeface_fixture import equivalence_inputs
    expected = np.load(FIXTURE)
    inputs = torch.from_numpy(equivalence_inputs(SHARED_DATA)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        scores, boxes = load_network(WEIGHTS)(inputs)
    np.testing.assert_allclose(scores.numpy(), expected["scores"], atol=1e-3)
    np.testing.assert_allclose(boxes.numpy(), expected["boxes"], atol=1e-2)
    probability, corners, _ = decode(expected["scores"][0], expected["boxes"][0])
    assert probability.max() > 0.8                      # the LFW face is found ...
    x0, y0, x1, y1 = corners[probability.argmax()] * 256
    assert 60 < (x0 + x1) / 2 < 200 and 60 < (y0 + y1) / 2 < 200    # ... in the middle


@needs_data
def test_fused_kernels_give_the_same_outputs():
    """oneDNN's fused convolution + shortcut + ReLU is the same arithmetic in float32; in
    bfloat16 (where it is used) the candidates' scores stay within a logit and the boxes
    within 3 px of float32's, as the plain bfloat16 network's do (0.31 and 1 px here)."""
    sys.path.insert(0, str(REPO / "tools"))
    from blazeface_fixture import equivalence_inputs
    inputs = torch.from_numpy(equivalence_inputs(SHARED_DATA)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        scores, boxes = load_network(WEIGHTS)(inputs)
        fused_scores, fused_boxes = load_network(WEIGHTS).fuse()(inputs)
        np.testing.assert_allclose(fused_scores.numpy(), scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(fused_boxes.numpy(), boxes.numpy(), atol=1e-3)
        fast_scores, fast_boxes = load_network(WEIGHTS).to(torch.bfloat16).fuse()(inputs.to(torch.bfloat16))
    candidates = scores > -3.0                 # the rest are far below the proposal threshold's -0.4
    assert candidates.sum() >= 1
    assert (fast_scores.float() - scores)[candidates].abs().max() < 1.0
    assert (fast_boxes.float() - boxes)[candidates].abs().max() < 3.0


def test_larger_grid_repeats_the_256_anchors():
    from faces.detectors.blazeface_net import ANCHORS
    np.testing.assert_allclose(grid_anchors(256, 256), ANCHORS * 256)
    assert len(grid_anchors(480, 640)) == (30 * 40 * 2 + 15 * 20 * 6)


@needs_data
def test_small_and_tilted_faces_of_held_out_people_are_found(detector):
    sys.path.insert(0, str(REPO / "bench"))
    from detection import make_scenes, matched, people_by_role
    roles = people_by_role(LFW)
    scenes, _ = make_scenes(LFW, roles["test"][:120], roles["train"][:50], 2, seed=5)
    placed = found = 0
    for scene, truth in scenes:
        boxes = [face.box for face in detector(scene)]
        placed += len(truth)
        found += sum(matched(t, boxes) is not None for t in truth)
    assert found / placed >= 0.85, f"{found} of {placed}"


@needs_data
def test_exif_rotation_is_honoured_and_finds_the_same_face(detector):
    upright = Image.open(LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").convert("RGB")
    [face] = detector(upright)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6                                  # "rotate 90 clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    [again] = detector(load_image(buffer.getvalue()))
    assert np.abs(np.array(again.box) - np.array(face.box)).max() <= 6


@pytest.mark.parametrize("size,mode", [((1, 1), "RGB"), ((4000, 3), "RGB"), ((3, 2000), "RGB"),
                                       ((300, 200), "L"), ((300, 200), "CMYK"), ((300, 200), "I;16")])
def test_odd_pictures_give_no_error(detector, size, mode):
    picture = Image.new(mode, size)
    buffer = io.BytesIO()
    picture.save(buffer, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    assert detector(load_image(buffer.getvalue())) == []


def test_forty_megapixels_give_no_error(detector):
    assert detector(Image.new("RGB", (8000, 5000), (90, 120, 150))) == []


def test_pyramid_levels():
    """One level for a photo the finest level holds whole; a 12 MP photo keeps its 40 px
    faces; the finest level stays within FINEST_MAX_PIXELS; each level fills its canvas."""
    from faces.detectors import blazeface as bf
    finder = bf.BlazeFaceDetector.__new__(bf.BlazeFaceDetector)
    finder.min_face = None
    [lfw] = finder.levels(150, 150)
    assert round(150 * lfw) == 96                                    # no padding in its 96 px canvas
    twelve = finder.levels(4000, 3000)
    assert 40 * twelve[0] >= bf.NETWORK_FACE * (1 - bf.FIT_SLACK)
    assert 4000 * 3000 * twelve[0] ** 2 <= bf.FINEST_MAX_PIXELS
    forty = finder.levels(8000, 5000)
    assert 8000 * 5000 * forty[0] ** 2 <= bf.FINEST_MAX_PIXELS * 1.01
    for size in ((4000, 3000), (8000, 5000), (1665, 2048), (1280, 960)):
        levels = finder.levels(*size)
        assert levels == sorted(levels, reverse=True) and max(size) * levels[-1] <= bf.COARSEST_SIDE


def portrait(small_side: int) -> Image.Image:
    """A 1700 x 2000 photo: one LFW photo enlarged to 1400 px (a face of about 700 px) and
    another shrunk to `small_side` px (a face of about half that) in a corner."""
    photo = Image.new("RGB", (1700, 2000), (120, 130, 140))
    photo.paste(Image.open(LFW / "Tony_Blair" / "Tony_Blair_0001.jpg").convert("RGB").resize((1400, 1400)), (150, 300))
    small = Image.open(LFW / "Colin_Powell" / "Colin_Powell_0001.jpg").convert("RGB")
    photo.paste(small.resize((small_side, small_side)), (20, 20))
    return photo


@needs_data
def test_coarse_to_fine_skips_faces_far_smaller_than_the_largest(detector, monkeypatch):
    """Levels run coarsest first; a finer level runs only to find faces of at least a tenth
    of the largest face found, so a portrait costs a fraction of the full pyramid while a
    smaller face beside a larger one is still found."""
    from faces.detectors import blazeface as bf
    inputs = []
    run = detector._run
    monkeypatch.setattr(detector, "_run", lambda batch, net: (inputs.append(batch.shape), run(batch, net))[1])
    width, height = 1700, 2000
    finest = detector.levels(width, height)[0]
    alone = detector(portrait(50))       # a face of ~25 px: under a tenth of ~700
    assert [f.box[2] - f.box[0] > 500 for f in alone] == [True]
    pyramid_pixels = sum(round(width * s) * round(height * s) for s in detector.levels(width, height))
    network_pixels = sum(n * h * w for n, h, w, _ in inputs if h > bf.REFINE_SIZE)
    assert network_pixels < 0.3 * pyramid_pixels
    assert all(h * w < 0.5 * width * height * finest ** 2 for _, h, w, _ in inputs)
    both = detector(portrait(200))       # a face of ~100 px: more than a tenth
    assert len(both) == 2 and sorted(f.box[2] - f.box[0] for f in both)[0] < 200


def test_weighted_suppression_merges_overlaps_and_survives_empty_boxes():
    from faces.detectors.blazeface import _non_overlapping
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [5, 5, 5, 5]], dtype=float)
    kept = _non_overlapping(np.array([0.9, 0.8, 0.7, 0.6]), boxes, np.zeros((4, 6, 2)))
    assert [round(score, 1) for score, _, _ in kept] == [0.9, 0.7, 0.6]
    np.testing.assert_allclose(kept[0][1], (boxes[0] * 0.9 + boxes[1] * 0.8) / 1.7)


def test_forked_build_worker_stays_on_the_cpu(monkeypatch):
    """A build's DataLoader workers are forked from a process whose model may be on the GPU:
    CUDA cannot start again there, so the detector runs on the CPU (no GPU needed to check)."""
    from faces.detectors import blazeface as bf
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    assert bf._device() == "cpu"
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    assert bf._device() == "cuda"


def test_canvas_shrinks_like_pils_antialiased_resize():
    """A level's input: box filter by the whole factor, then bilinear, is within a few grey
    levels of PIL's antialiased bilinear from the full photo (what it replaced)."""
    from faces.detectors.blazeface import BlazeFaceDetector, Reductions
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).resize((1600, 1280), Image.BICUBIC)
    for scale in (0.125, 0.2, 0.7):
        canvas = BlazeFaceDetector.canvas(Reductions(photo), scale)
        width, height = round(1600 * scale), round(1280 * scale)
        assert canvas.shape == (-(-height // 32) * 32, -(-width // 32) * 32, 3)
        expected = np.asarray(photo.resize((width, height), Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
        assert np.abs(canvas[:height, :width] - expected).mean() * 127.5 < 3, scale
        assert (canvas[height:] == 0).all() and (canvas[:, width:] == 0).all()


@pytest.mark.skipif(not (SHARED_DATA / "samples").is_dir(), reason="shared samples not present")
@needs_data
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_photo_is_detected_alike_in_a_batch_and_alone(monkeypatch, precision):
    """A build detects a batch of photos at once, a query one photo: the same faces, to the
    bit, so a gallery photo asked again finds itself at distance 0 (with bfloat16 only for
    batches it came back 0.04 away, 0.6 at worst)."""
    monkeypatch.setenv("FACESEARCH_PRECISION", precision)
    detector = get_detector("blazeface", CHIP)
    photos = [load_image(path) for path in sorted(LFW.glob("*/*.jpg"))[:8]]
    photos.append(load_image(SHARED_DATA / "samples" / "group_photo.jpg"))
    for together, alone in zip(detector.detect_many(photos), [detector(photo) for photo in photos]):
        assert [face.box for face in together] == [face.box for face in alone]
        for a, b in zip(together, alone):
            assert np.array_equal(a.landmarks, b.landmarks)
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_bfloat16_levels_find_the_same_faces(monkeypatch):
    """Where the CPU runs bfloat16 (or FACESEARCH_PRECISION asks for it), large pyramid levels
    run in it: the group photo's faces are the ones float32 finds, within a few pixels."""
    photo = load_image(SHARED_DATA / "samples" / "group_photo.jpg")
    found = {}
    for precision in ("float32", "bfloat16"):
        monkeypatch.setenv("FACESEARCH_PRECISION", precision)
        detector = get_detector("blazeface", CHIP)
        assert (next(detector.level_net.parameters()).dtype == torch.bfloat16) == (precision == "bfloat16")
        found[precision] = detector(photo)
    assert len(found["float32"]) == len(found["bfloat16"]) == 6
    for exact, fast in zip(found["float32"], found["bfloat16"]):
        side = exact.box[2] - exact.box[0]
        assert np.abs(np.subtract(exact.box, fast.box)).max() <= 0.05 * side
        assert np.abs(exact.landmarks - fast.landmarks).max() <= 0.03 * side


def test_reductions_are_made_once_and_match_one_reduce(monkeypatch):
    """A coarse level's 8x reduction is made through the 4x one, which a finer level or a
    large face then takes without reducing the photo again; the pixels are those of one
    reduce from the photo, to a grey level of rounding."""
    from faces.detectors.blazeface import Reductions
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).resize((1001, 1203), Image.BICUBIC)
    photos = Reductions(photo)
    eighth = photos.reduced(8)
    calls = []
    original = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    quarter = photos.reduced(4)
    assert calls == [] and photos.reduced(8) is eighth and photos.reduced(1) is photo
    assert photos.factors() == [1, 4, 8]
    fifth = photos.reduced(5)                         # not a multiple of a made one: from the photo
    assert calls == [(5,)] and np.array_equal(np.asarray(fifth), np.asarray(original(photo, 5)))
    for reduced, factor in ((eighth, 8), (quarter, 4)):
        direct = np.asarray(original(photo, factor), dtype=int)
        assert reduced.size == (-(-1001 // factor), -(-1203 // factor))
        assert np.abs(np.asarray(reduced, dtype=int) - direct).max() <= 1


@needs_data
def test_a_large_face_is_aligned_in_a_reduction_like_in_the_photo(detector):
    """A face over FACE_WORK_SIDE is aligned in a reduction the pyramid made (a 3-megapixel
    photo is not made an array for dlib): its landmarks, in the photo's pixels, and its
    embedding are those of the full-resolution alignment, within 2% of the face and 0.06 of
    distance (0.02 median, 0.04 at worst over 61 faces of about 400 px)."""
    from faces.checkpoint import load_model
    from faces.detectors.blazeface import DLIB_BOX_SCALE, FACE_WORK_SIDE, Reductions
    model = load_model("human")
    for path in sorted(LFW.glob("*/*.jpg"))[:3]:
        photo = load_image(path).resize((2048, 2048), Image.BICUBIC)
        reductions = Reductions(photo)
        found = max(detector.raw_detections([reductions])[0], key=lambda d: d[1][2] - d[1][0])
        [face] = detector.faces_of(reductions, [found])
        side = face.box[2] - face.box[0]
        assert any(f > 1 and side * DLIB_BOX_SCALE / f >= FACE_WORK_SIDE for f in reductions.factors())
        pixels = np.asarray(photo)
        landmarks, _ = detector._landmarks(pixels, photo, found[1], found[2])
        assert np.abs(face.landmarks - landmarks).max() <= 0.02 * side
        full = detector.landmarker.cut(pixels, photo, landmarks)
        a, b = model.embed_images([face.image, full])
        assert np.sqrt(max(0.0, 2 - 2 * float(a @ b))) < 0.06
