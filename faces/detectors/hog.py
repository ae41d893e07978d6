"""'hog': human faces with dlib's HOG detector (frontal and near-frontal faces of about 80
pixels and more after the downscale to DETECT_MAX_SIDE; 40 on small photos, which are
upsampled once), then dlib's 5-point landmarks and the model's alignment (landmarks.py)."""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from ..imaging import DLIB_CHIP_PADDING
from .base import Box, Detector, Face, clip_box, left_to_right
from .landmarks import ALIGNED_SIZE, Landmarker

DETECT_MAX_SIDE = 1280      # larger photos are downscaled before detection (speed)
UPSAMPLE_BELOW_SIDE = 640   # smaller photos are upsampled once (small faces)
# Where dlib's detector finds the face in an LFW crop, as fractions of the side (x0, y0, x1,
# y1): the median over 400 LFW images.
CENTRAL_FACE_BOX = (0.30, 0.33, 0.71, 0.72)


class HogDetector(Detector):
    """Human faces: dlib's HOG detector and 5-point landmarks, then the model's alignment:
    'lfw' frames the face as an LFW image, 'dlib_chip' cuts dlib's own face chip."""

    name = "hog"

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE, chip_padding: float = DLIB_CHIP_PADDING):
        import dlib
        self.landmarker = Landmarker(alignment, size, chip_padding)
        self.alignment, self.size = alignment, self.landmarker.size
        self._detect = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()     # dlib's detector is not thread-safe

    def boxes(self, image: Image.Image) -> list[tuple[Box, float]]:
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

    def __call__(self, image: Image.Image) -> list[Face]:
        pixels = np.asarray(image)
        faces = []
        for box, score in self.boxes(image):
            face_image, landmarks = self.landmarker.face(pixels, image, box)
            faces.append(Face(image=face_image, box=clip_box(box, image.size), score=score,
                              landmarks=landmarks))
        return left_to_right(faces)

    def in_box(self, image: Image.Image, box: Box) -> Face:
        """The face in a box the user drew, aligned by the landmarks found inside it."""
        face_image, landmarks = self.landmarker.face(np.asarray(image), image, box)
        return Face(image=face_image, box=tuple(box), landmarks=landmarks, found_by="box")

    def central_chip(self, image: Image.Image) -> Image.Image:
        """The face of an already-cropped picture: the detected face nearest the centre, or,
        when none is found, the face where LFW-style crops hold it."""
        width, height = image.size
        boxes = [box for box, _ in self.boxes(image)]
        if boxes:
            box = min(boxes, key=lambda b: abs(b[0] + b[2] - width) + abs(b[1] + b[3] - height))
        else:
            box = tuple(f * side for f, side in zip(CENTRAL_FACE_BOX, (width, height, width, height)))
        return self.landmarker.face(np.asarray(image), image, box)[0]
