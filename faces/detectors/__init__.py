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


def _hog(alignment, size, chip_padding):
    from .hog import HogDetector
    return HogDetector(alignment, size, chip_padding)


def _blazeface(alignment, size, chip_padding):
    from .blazeface import BlazeFaceDetector     # torch and its network load with it
    return BlazeFaceDetector(alignment, size, chip_padding=chip_padding)


def _dog(alignment, size, chip_padding):
    from .dog import DogFaceDetector     # its network loads with it; dog faces have no dlib chip
    return DogFaceDetector(alignment, size)


def _none(alignment, size, chip_padding):
    from .whole import WholeImage
    return WholeImage(alignment, size, chip_padding)


# name -> factory(alignment, size, chip_padding); "auto" is resolved to one of these first.
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


# The species each detector finds faces of; 'none' (the whole image) serves every species.
DETECTOR_SPECIES = {"blazeface": "human", "hog": "human", "dog": "dog"}


def detector_for(name: str | None, species: str) -> str:
    """The detector a name means for one model among several (an index built with `--models
    human,dog`): a detector of this species' faces (or 'none') is taken as it is; 'auto',
    None and a detector of another species' faces leave this model its species' default. So
    `--detector blazeface` finds the human faces with BlazeFace and the dog faces still with
    the dog detector."""
    concrete = concrete_name(name, species)
    return concrete if DETECTOR_SPECIES.get(concrete, species) == species else default_detector(species)


# Faces of two species found on one spot of a photo are one face, of the species first here:
# the human detectors see a "face" on a dog's face (hog in 9, blazeface in 8 of 48 photos of
# 12 held-out DogFaceNet dogs), while the dog detector finds none in 99.8% of pictures
# without a dog (faces/bundled/dog-detector.md).
SPECIES_PRECEDENCE = ("dog", "human")
SAME_FACE_SHARE = 0.5     # this much of a face's box inside another species' face: the same face


def shadowed(faces: list[tuple[str, Box | None]]) -> list[bool]:
    """For the faces (species, box) that several species' detectors found in one photo:
    whether each is another species' face seen again, i.e. at least SAME_FACE_SHARE of its
    box lies inside the box of a face of a species that comes before it in
    SPECIES_PRECEDENCE (a whole-image face, box None, is never shadowed nor shadows)."""
    rank = {species: i for i, species in enumerate(SPECIES_PRECEDENCE)}
    result = []
    for species, box in faces:
        hidden = False
        if box is not None and species in rank:
            area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
            for other_species, other in faces:
                if other is None or rank.get(other_species, len(rank)) >= rank[species]:
                    continue
                width = min(box[2], other[2]) - max(box[0], other[0])
                height = min(box[3], other[3]) - max(box[1], other[1])
                if width > 0 and height > 0 and width * height >= SAME_FACE_SHARE * area:
                    hidden = True
                    break
        result.append(hidden)
    return result


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
        from ..imaging import DLIB_CHIP_PADDING
        from .landmarks import ALIGNED_SIZE
        return FACTORIES[name]("lfw", ALIGNED_SIZE, DLIB_CHIP_PADDING)
    return FACTORIES[name](preprocess.alignment, preprocess.input_size, preprocess.chip_padding)


__all__ = ["Box", "DETECTORS", "DETECTOR_HELP", "Detector", "Face", "FACTORIES", "box_inside",
           "clip_box", "concrete_name", "default_detector", "detector_for", "finds_faces", "get_detector",
           "parse_box", "resolve_detector", "shadowed"]
