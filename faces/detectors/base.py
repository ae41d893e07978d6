"""What every detector shares: the `Face` it returns, boxes, and the interface.

A detector is an object with
- `name`: the name it is chosen by (`--detector NAME`, recorded in the index);
- `__call__(image) -> list[Face]`: the faces in an upright RGB PIL image, left to right;
- `in_box(image, box) -> Face`: the one face in a box the user gave;
- `detect_many(images) -> list[list[Face]]`: many photos at once (a build's batch); a
  detector that can batch its network across photos does so, the others call themselves
  once a photo (`Detector.detect_many`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


@dataclass
class Face:
    image: Image.Image                  # the face crop, ready for the model's Preprocess
    box: Box | None = None              # (x0, y0, x1, y1) in the original photo; None = whole image
    score: float | None = None          # detector confidence, when it gives one
    landmarks: np.ndarray | None = None  # 5 x 2 (x, y) in the original photo, when detected
    found_by: str = "detector"          # "detector", "box" (given by the user) or "whole image"
    angle: float | None = None          # the face's tilt in degrees, when the detector measures it


class Detector:
    """The small interface every detector follows (see the module's doc)."""

    name = "?"

    def __call__(self, image: Image.Image) -> list[Face]:
        raise NotImplementedError

    def in_box(self, image: Image.Image, box: Box) -> Face:
        raise NotImplementedError

    def detect_many(self, images: list[Image.Image]) -> list[list[Face]]:
        return [self(image) for image in images]


def clip_box(box, size) -> Box:
    """The box rounded to whole pixels and cut to the picture."""
    width, height = size
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def left_to_right(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.box[0])
