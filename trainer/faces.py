"""The face pipeline shared by indexer, search and web: find the faces in a photo and turn
each into the crop the model was trained on.

A detector takes an RGB PIL image and returns a list of `Face`s. `none` takes the whole
image as one face crop: right for already-cropped datasets (LFW, DogFaceNet) and for dogs,
for which no detector ships.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

Box = tuple[int, int, int, int]


@dataclass
class Face:
    image: Image.Image          # the face crop, ready for the model's Preprocess
    box: Box | None = None      # (x0, y0, x1, y1) in the original photo; None = whole image
    score: float | None = None  # detector confidence, when it gives one


class WholeImage:
    """No detection: the image is the face crop."""

    name = "none"

    def __call__(self, image: Image.Image) -> list[Face]:
        return [Face(image=image)]


DETECTORS = {"none": WholeImage}


def get_detector(name: str = "none"):
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[name]()
