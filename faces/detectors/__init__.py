"""Face detectors: one module per detector, behind one small interface (base.py).

A detector takes an upright RGB PIL image and returns `Face`s, left to right, each cut as
the model's `Preprocess` wants (landmarks.py: dlib's 5-point landmarks, then an LFW-style
image or dlib's face chip).

- `blazeface` (blazeface.py, blazeface_net.py): human faces, MediaPipe's BlazeFace ported to
  PyTorch; small (from about 24 px) and tilted (to 45 degrees) ones too; batched.
- `hog` (hog.py): human faces, dlib's HOG detector.
- `dog` (dog.py): dog faces, facesearch's own small network; the default for dog models.
- `none` (whole.py): the whole image is the face (already-cropped galleries: LFW, DogFaceNet).
- `auto`: the default detector of the model's species: `blazeface` for humans, `dog` for dogs.

A user's box (`--box`, box.py) is cut by the chosen detector's `in_box`.

An index records the detector it was built with under its concrete name (never `auto`), and
queries use that one unless told otherwise (`resolve_detector`).
"""
from __future__ import annotations

from .base import Box, Detector, Face, clip_box
from .box import box_inside, parse_box


def _hog(alignment, size):
    from .hog import HogDetector
    return HogDetector(alignment, size)


def _blazeface(alignment, size):
    from .blazeface import BlazeFaceDetector     # torch and its network load with it
    return BlazeFaceDetector(alignment, size)


def _dog(alignment, size):
    from .dog import DogFaceDetector     # its network loads with it
    return DogFaceDetector(alignment, size)


def _none(alignment, size):
    from .whole import WholeImage
    return WholeImage(alignment, size)


# name -> factory(alignment, size); "auto" is resolved to one of these first.
FACTORIES = {"blazeface": _blazeface, "hog": _hog, "dog": _dog, "none": _none}
DEFAULT_HUMAN_DETECTOR = "blazeface"
DEFAULT_DOG_DETECTOR = "dog"
# Every name a user may give: the detectors and "auto".
DETECTORS = ("auto", *FACTORIES)
DETECTOR_HELP = ("Face detector: 'blazeface' finds and aligns human faces, small and tilted ones "
                 "too (MediaPipe's BlazeFace in PyTorch); 'hog' finds and aligns human faces "
                 "(dlib's HOG); 'dog' finds "
                 "dog faces (trained here on DogFaceNet); 'none' takes the whole image as the "
                 "face (already-cropped pictures such as LFW and DogFaceNet); 'auto' is blazeface "
                 "for human models and dog for dog models.")


def default_detector(species: str) -> str:
    return DEFAULT_HUMAN_DETECTOR if species == "human" else DEFAULT_DOG_DETECTOR


def concrete_name(name: str | None, species: str) -> str:
    """The detector a name means for a model of this species: 'auto' (or None) is the
    species' default; an unknown name raises ValueError."""
    if name in (None, "", "auto"):
        return default_detector(species)
    if name not in FACTORIES:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return name


def resolve_detector(asked: str | None, indexed: str | None, species: str) -> str:
    """The detector a query uses: the one asked for, else the index's own, else the
    species' default."""
    if asked not in (None, ""):
        return concrete_name(asked, species)
    if indexed not in (None, "", "auto"):
        return concrete_name(indexed, species)
    return default_detector(species)


def finds_faces(name: str, preprocess) -> bool:
    """Whether the detector runs a face detector on every image (the costly part of a
    build): every one but 'none', and 'none' too when the model's alignment needs landmarks."""
    return name != "none" or preprocess.alignment == "dlib_chip"


def get_detector(name: str = "none", preprocess=None, species: str = "human") -> Detector:
    """The named detector ('auto': the default for `species`), aligning faces as
    `preprocess` (a model's) asks."""
    name = concrete_name(name, species)
    if preprocess is None:
        from .landmarks import ALIGNED_SIZE
        return FACTORIES[name]("lfw", ALIGNED_SIZE)
    return FACTORIES[name](preprocess.alignment, preprocess.input_size)


__all__ = ["Box", "DETECTORS", "DETECTOR_HELP", "Detector", "Face", "FACTORIES", "box_inside",
           "clip_box", "concrete_name", "default_detector", "finds_faces", "get_detector",
           "parse_box", "resolve_detector"]
