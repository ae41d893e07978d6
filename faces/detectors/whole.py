"""'none': no detection, the image is the face crop (already-cropped galleries such as LFW
and DogFaceNet)."""
from __future__ import annotations

from dataclasses import replace

from PIL import Image

from ..imaging import DLIB_CHIP_PADDING
from .base import Box, Detector, Face
from .landmarks import ALIGNED_SIZE


class WholeImage(Detector):
    """No detection: the image is the face crop (cropped datasets; dogs).

    A model that wants dlib's face chip still needs the landmarks: they are found inside the
    crop (the HOG-detected face nearest the centre, else the box where a roughly centred
    face sits in an LFW-style crop), so an already-cropped gallery is aligned as a photo
    would be.
    """

    name = "none"

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE, chip_padding: float = DLIB_CHIP_PADDING):
        self.alignment = alignment
        self._landmarker = None
        if alignment == "dlib_chip":
            from .hog import HogDetector
            self._landmarker = HogDetector(alignment, size, chip_padding)

    def __call__(self, image: Image.Image) -> list[Face]:
        if self._landmarker is None:
            return [Face(image=image, found_by="whole image")]
        return [Face(image=self._landmarker.central_chip(image), found_by="whole image")]

    def in_box(self, image: Image.Image, box: Box) -> Face:
        """The face in a box the user drew: the box is the crop, taken as a whole image is."""
        return replace(self(image.crop(box))[0], box=tuple(box), found_by="box")
