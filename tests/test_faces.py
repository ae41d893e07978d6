"""The face pipeline: dlib detection on real photos, LFW-style alignment, whole-image mode."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from faces.detectors import Face, default_detector, get_detector
from faces.detectors.hog import HogDetector as DlibDetector
from faces.detectors.landmarks import ALIGNED_SIZE, LFW_LANDMARKS, align
from faces.imaging import load_image

from conftest import GROUP_PHOTO, LFW

LFW_FACE = LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"

needs_data = pytest.mark.skipif(not GROUP_PHOTO.is_file(), reason="shared sample photos not present")


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return get_detector("hog")


@pytest.fixture(scope="module")
def group_faces(detector) -> list[Face]:
    return detector(load_image(GROUP_PHOTO))


@needs_data
def test_group_photo_yields_six_faces_left_to_right(group_faces):
    assert len(group_faces) == 6
    lefts = [face.box[0] for face in group_faces]
    assert lefts == sorted(lefts)
    for face in group_faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= 1200 and 0 <= y0 < y1 <= 630
        assert 50 < x1 - x0 < 200          # faces in this photo are about 90 px wide
        assert face.image.size == (ALIGNED_SIZE, ALIGNED_SIZE)
        assert face.landmarks.shape == (5, 2)
        assert face.score > 0


@needs_data
def test_aligned_faces_are_framed_like_lfw(detector, group_faces):
    """Detecting again inside an aligned crop finds one face, eyes level, where LFW has it."""
    for face in group_faces:
        again = detector(face.image)
        assert len(again) == 1
        right_eye, left_eye = again[0].landmarks[0:2].mean(0), again[0].landmarks[2:4].mean(0)
        roll = math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
        assert abs(roll) < 5
        eyes_centre = (right_eye + left_eye) / 2 / ALIGNED_SIZE
        assert np.allclose(eyes_centre, LFW_LANDMARKS[:4].mean(0), atol=0.05)


@needs_data
def test_large_photo_is_downscaled_for_detection_and_boxes_map_back(detector, group_faces):
    photo = load_image(GROUP_PHOTO)
    big = photo.resize((photo.width * 3, photo.height * 3), Image.BILINEAR)
    faces = detector(big)
    assert len(faces) == 6
    for small, large in zip(group_faces, faces):
        assert np.allclose(np.array(large.box) / 3, small.box, atol=12)


@needs_data
def test_lfw_image_keeps_its_framing(detector):
    """An LFW image run through detection and alignment comes back framed about the same."""
    image = load_image(LFW_FACE).resize((ALIGNED_SIZE, ALIGNED_SIZE), Image.BILINEAR)
    [face] = detector(image)
    original = np.asarray(image, dtype=np.float32)
    aligned = np.asarray(face.image, dtype=np.float32)
    centre = slice(ALIGNED_SIZE // 4, 3 * ALIGNED_SIZE // 4)
    assert np.abs(original[centre, centre] - aligned[centre, centre]).mean() < 25


def test_align_puts_landmarks_on_the_lfw_template():
    """Dots drawn at rotated, scaled, shifted template points land back on the template."""
    angle, scale, shift = math.radians(25), 1.7, np.array([140.0, 60.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = (LFW_LANDMARKS * ALIGNED_SIZE) @ rotation.T * scale + shift
    photo = Image.new("RGB", (700, 700))
    draw = ImageDraw.Draw(photo)
    for x, y in landmarks:
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), fill=(255, 255, 255))
    aligned = np.asarray(align(photo, landmarks))
    for x, y in LFW_LANDMARKS * ALIGNED_SIZE:
        assert aligned[int(round(y)), int(round(x))].min() > 200
    assert aligned.mean() < 10      # nothing else of the dots' picture is bright


def test_align_shrinks_a_large_face_without_losing_it():
    landmarks = LFW_LANDMARKS * ALIGNED_SIZE * 6          # a face 6x larger than the output
    photo = Image.new("RGB", (1600, 1600), (200, 30, 30))
    aligned = align(photo, landmarks)
    assert aligned.size == (ALIGNED_SIZE, ALIGNED_SIZE)
    assert np.allclose(np.asarray(aligned)[100:150, 100:150], (200, 30, 30), atol=2)


def test_no_face_in_a_plain_picture(detector):
    assert detector(Image.new("RGB", (400, 300), (120, 160, 200))) == []


def test_whole_image_detector_and_defaults():
    image = Image.new("RGB", (224, 224))
    [face] = get_detector("none")(image)
    assert face.image is image and face.box is None
    assert default_detector("human") == "blazeface"
    assert default_detector("dog") == "dog"
    with pytest.raises(ValueError, match="unknown detector"):
        get_detector("mtcnn")
