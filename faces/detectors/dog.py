"""'dog': dog faces in ordinary photos.

No dog face detector can be installed from PyPI or downloaded at run time here, so this one
is trained in this project (`trainer train-dog-detector`) on DogFaceNet's training dogs
pasted into varied scenes (trainer/composites.py). It finds the same square the dog model
was trained on: DogFaceNet's aligned 224 px face crop, eyes level. A face is a `Square`
(centre, side, angle), so a tilted face is cut out upright, as the dog model expects.

One small network, `DogFaceNet48`, does two jobs, as MTCNN's stages do:
1. Proposals: it is fully convolutional, so run on a pyramid of the photo it scores every
   48 x 48 window (stride 8) at once and regresses from each window to the face square.
2. Refinement: each proposal is cut out upright at 48 px and scored again, its square
   regressed again (twice, each cut averaged with its mirror image); the last score
   decides, so a face must look like a face when cut out the way the dog model will see it.

The pyramid goes down to the level where the whole picture is one window, so a picture that
is already a tight face crop (a DogFaceNet image) is found as one face covering it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image

from .base import Detector, Face, clip_box, left_to_right

WINDOW = 48                 # the network's input side, pixels
STRIDE = 8                  # pixels between neighbouring windows of the proposal pass
DETECTOR_MODEL = "dog-detector.pt"
# Faces smaller than this fraction of the picture's shorter side, or than MIN_FACE_PIXELS,
# are not looked for (speed: the finest pyramid level costs the most).
MIN_FACE_FRACTION = 0.12
MIN_FACE_PIXELS = 40
PYRAMID_STEP = 1.25         # scale ratio between pyramid levels
MAX_PROPOSALS = 24          # proposals kept (best first, after overlap removal) for refinement
REFINE_PASSES = 2
FACE_CROP_SIZE = 224        # DogFaceNet's crop size: what the dog model's gallery images are
# A face overlapping the picture's central square this much is the picture: a tight crop,
# taken whole as the gallery's crops are (the regressed square is a few % off: on held-out
# DogFaceNet crops its median IoU with the picture is 0.92, and cutting that square instead
# of the picture lowered their rank-1 from 0.687 to 0.651).
WHOLE_PICTURE_IOU = 0.8
MIRRORED_OFFSETS = np.array([-1.0, 1.0, 1.0, -1.0], dtype=np.float32)   # dx, dy, dlog_side, dangle


@dataclass(frozen=True)
class Square:
    """A face square in a picture: centre (cx, cy), side and angle (radians, the face's tilt:
    positive turns the face's x axis towards the picture's y axis)."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    def corners_affine(self, size: int) -> tuple[float, ...]:
        """PIL's AFFINE coefficients mapping a size x size upright crop's pixels into the picture."""
        scale = self.side / size
        cos, sin = math.cos(self.angle) * scale, math.sin(self.angle) * scale
        half = size / 2
        return (cos, -sin, self.cx - cos * half + sin * half,
                sin, cos, self.cy - sin * half - cos * half)

    def box(self) -> tuple[float, float, float, float]:
        """The upright square's extent (x0, y0, x1, y1), ignoring the angle."""
        half = self.side / 2
        return self.cx - half, self.cy - half, self.cx + half, self.cy + half

    def moved(self, dx: float, dy: float, dlog_side: float, dangle: float) -> "Square":
        """The square a regression output points to; offsets in this square's own frame,
        in units of its side (the network's targets, see `offsets_to`)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return Square(self.cx + self.side * (cos * dx - sin * dy),
                      self.cy + self.side * (sin * dx + cos * dy),
                      self.side * math.exp(dlog_side), self.angle + dangle)

    def offsets_to(self, target: "Square") -> tuple[float, float, float, float]:
        """(dx, dy, dlog_side, dangle) with self.moved(*offsets) == target."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        ex, ey = (target.cx - self.cx) / self.side, (target.cy - self.cy) / self.side
        dangle = (target.angle - self.angle + math.pi) % (2 * math.pi) - math.pi
        return cos * ex + sin * ey, -sin * ex + cos * ey, math.log(target.side / self.side), dangle


def square_iou(a: Square, b: Square) -> float:
    """Overlap of the two squares' upright extents (angles ignored): intersection over union."""
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    width = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    height = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = width * height
    return inter / (a.side ** 2 + b.side ** 2 - inter)


def cut_square(image: Image.Image, square: Square, size: int) -> Image.Image:
    """The square cut out upright at size x size pixels (black outside the picture).

    A large square is first shrunk by whole factors (box filter) so the warp does not alias."""
    factor = int(square.side / size / 1.5)
    if factor >= 2:
        reach = square.side * 0.75            # half the diagonal, with room to spare
        left, top = int(square.cx - reach), int(square.cy - reach)
        right, bottom = int(math.ceil(square.cx + reach)), int(math.ceil(square.cy + reach))
        region = image.crop((left, top, right, bottom)).reduce(factor)
        square = Square((square.cx - left) / factor, (square.cy - top) / factor,
                        square.side / factor, square.angle)
        image = region
    return image.transform((size, size), Image.AFFINE, square.corners_affine(size), Image.BILINEAR)


def pixels_to_input(array: np.ndarray):
    """uint8 N x H x W x 3 (or H x W x 3) -> the network's float input, N x 3 x H x W in -1..1."""
    import torch
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8))   # a writable copy
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    return tensor.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def build_network():
    """The 48 px dog face network: 1 score logit and 4 regression outputs per window.

    Fully convolutional (the last 6 x 6 convolution covers what is left of the window), so a
    whole picture gives one output per 48 px window at stride 8; about 0.2 M parameters."""
    from torch import nn

    def conv(cin, cout, kernel=3, padding=1):
        return [nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    return nn.Sequential(
        nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
        *conv(24, 32), nn.MaxPool2d(2),                 # 48 -> 24 -> 12
        *conv(32, 64), nn.MaxPool2d(2),                 # -> 6
        *conv(64, 64),
        *conv(64, 96, kernel=6, padding=0),             # -> 1
        nn.Conv2d(96, 5, 1))


def load_detector_network(path=None):
    """The trained network (bundled faces/bundled/dog-detector.pt unless `path`) in eval mode,
    with its score thresholds."""
    import torch
    if path is None:
        with resources.as_file(resources.files("faces") / "bundled" / DETECTOR_MODEL) as bundled:
            payload = torch.load(bundled, map_location="cpu", weights_only=False)
    else:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    net = build_network()
    net.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    net.eval()
    return net, payload


def non_overlapping(candidates: list[tuple[float, Square]], max_iou: float,
                    limit: int | None = None) -> list[tuple[float, Square]]:
    """Best-scored first, dropping any square overlapping a kept one by more than max_iou;
    at most `limit` kept (each candidate is compared with the kept ones only, so a picture
    that lights up thousands of windows still costs little)."""
    kept: list[tuple[float, Square]] = []
    for score, square in sorted(candidates, key=lambda c: -c[0]):
        if all(square_iou(square, other) <= max_iou for _, other in kept):
            kept.append((score, square))
            if limit is not None and len(kept) == limit:
                break
    return kept


class DogFaceDetector(Detector):
    """Dog faces in ordinary photos (see the module's doc); each face is cut out upright at
    224 px, framed as DogFaceNet's aligned crops are, for the dog model's own crop and resize."""

    name = "dog"

    def __init__(self, alignment: str = "lfw", size: int = FACE_CROP_SIZE, model_path=None):
        # alignment and size are what every detector is built with (faces.detectors.get_detector);
        # dog faces have one framing, DogFaceNet's, cut at its 224 px for the model to resize.
        import torch
        self._torch = torch
        self.net, payload = load_detector_network(model_path)
        self.proposal_threshold = float(payload["proposal_threshold"])
        self.threshold = float(payload["threshold"])
        self.crop_size = FACE_CROP_SIZE
        # The network is tiny; one lock keeps torch's intra-op threads from oversubscribing
        # when a web server's request threads detect at once.
        self._lock = threading.Lock()

    def _run(self, batch: np.ndarray):
        with self._lock, self._torch.inference_mode():
            out = self.net(pixels_to_input(batch))
        return self._torch.sigmoid(out[:, 0]).numpy(), out[:, 1:].numpy()

    def _levels(self, width: int, height: int) -> list[float]:
        """Pyramid scales, finest first, down to the one where the shorter side is one window."""
        shorter = min(width, height)
        smallest_face = max(MIN_FACE_PIXELS, MIN_FACE_FRACTION * shorter)
        scale, last = WINDOW / smallest_face, WINDOW / shorter
        scales = []
        while scale > last * PYRAMID_STEP ** 0.5:
            scales.append(scale)
            scale /= PYRAMID_STEP
        return scales + [last]

    def proposals(self, image: Image.Image) -> list[tuple[float, Square]]:
        """Windows of every pyramid level scoring over the proposal threshold, regressed to
        face squares, overlaps removed."""
        candidates = []
        for scale in self._levels(*image.size):
            width, height = max(WINDOW, round(image.width * scale)), max(WINDOW, round(image.height * scale))
            level = image.resize((width, height), Image.BILINEAR)
            scores, offsets = self._run(np.asarray(level))
            rows, cols = np.nonzero(scores[0] >= self.proposal_threshold)
            sx, sy = image.width / width, image.height / height
            for row, col in zip(rows, cols):
                window = Square((col * STRIDE + WINDOW / 2) * sx, (row * STRIDE + WINDOW / 2) * sy,
                                WINDOW * (sx + sy) / 2)
                candidates.append((float(scores[0, row, col]), window.moved(*offsets[0, :, row, col])))
        return non_overlapping(candidates, 0.5, MAX_PROPOSALS)

    def refine(self, image: Image.Image, squares: list[Square]) -> list[tuple[float, Square]]:
        """Each square cut out upright, scored and regressed again, REFINE_PASSES times.

        Each cut is also seen mirrored and the two answers averaged (the mirror's x offset
        and tilt change sign): a face is as much a face mirrored, and the average is steadier."""
        scores = np.zeros(len(squares))
        count = len(squares)
        for _ in range(REFINE_PASSES):
            if not squares:
                break
            batch = np.stack([np.asarray(cut_square(image, s, WINDOW)) for s in squares])
            both_scores, both_offsets = self._run(np.concatenate([batch, batch[:, :, ::-1]]))
            scores = (both_scores[:count] + both_scores[count:]).ravel() / 2
            offsets = (both_offsets[:count, :, 0, 0] + both_offsets[count:, :, 0, 0] * MIRRORED_OFFSETS) / 2
            squares = [s.moved(*(float(v) for v in offsets[i])) for i, s in enumerate(squares)]
        return [(float(score), square) for score, square in zip(scores, squares)]

    def find(self, image: Image.Image) -> list[tuple[float, Square]]:
        """(score, square) of every dog face, best first."""
        proposals = self.proposals(image)
        refined = self.refine(image, [square for _, square in proposals])
        faces = [(score, square) for score, square in refined if score >= self.threshold]
        return non_overlapping(faces, 0.3)

    def face_at(self, image: Image.Image, square: Square, score: float | None, found_by: str):
        return Face(image=cut_square(image, square, self.crop_size),
                    box=clip_box(square.box(), image.size), score=score,
                    angle=round(math.degrees(square.angle), 1), found_by=found_by)

    def __call__(self, image: Image.Image) -> list:
        """The dog faces in the picture as `Face`s, left to right."""
        whole = Square(image.width / 2, image.height / 2, min(image.size))
        found = [(score, whole if square_iou(square, whole) >= WHOLE_PICTURE_IOU else square)
                 for score, square in self.find(image)]
        faces = [self.face_at(image, square, round(score, 4), "detector") for score, square in found]
        return left_to_right(faces)

    def in_box(self, image: Image.Image, box):
        """The face in a box the user drew: the box's square (centred on it, its longer side),
        upright, as the gallery's crops are."""
        x0, y0, x1, y1 = box
        square = Square((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0))
        face = self.face_at(image, square, None, "box")
        face.box = tuple(box)
        face.angle = None
        return face
