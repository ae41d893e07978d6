"""'blazeface': human faces with MediaPipe's BlazeFace (full-range model, blazeface_net.py),
run by PyTorch on the CPU (or the GPU when there is one), batched across photos, on a
pyramid of the photo, then dlib's 5-point landmarks found in each face turned upright.

- The network is fully convolutional, so each pyramid level runs it once on the whole
  resized photo (padded to a multiple of 32), with one anchor grid per level: no tiles,
  no seams. It finds faces from about 14 to 200 pixels of its input, turned up to at least
  45 degrees, so the finest level is scaled for the smallest face looked for
  (`min_face`) and each next one is 4 times coarser, down to the photo in 256 pixels; a
  small photo (an LFW crop) that the finest level already holds whole gets that one level
  only. Each level's scale is trimmed (at most 12.5%) to fill its 32-pixel canvas.
- The smallest face looked for is `MIN_FACE_PIXELS` (24) in a photo of up to
  `SMALL_FACE_SIDE` pixels (its longer side), and `MIN_FACE_FRACTION` of the shorter side
  beyond (40 px in a 4000 x 3000 photo): the finest level's cost grows with the area, and
  it is capped at `FINEST_MAX_PIXELS` of input.
- Coarse to fine: the levels run coarsest first, and a finer one only while it can find
  faces of at least `RELATIVE_MIN_FACE` of the largest face already found. A portrait's
  face is found at the coarsest level and the costly fine levels are skipped (the
  1665 x 2048 sample portrait then costs what a few LFW photos do); a group photo's small
  faces beside larger ones are still looked for.
- A second look at each candidate (`refine`): cut out upright, 32 px wide in a 64 px
  square, scored again, all candidates of a batch of photos in one network run.
- Precision: where the embedding models run in bfloat16 (faces.precision: a CPU with AMX),
  every pyramid level does too, from the network's own bfloat16 copy: 1.3x for a 256 x 224
  input, 1.9x for 416 x 352 and 2x for a build's batch of 64 LFW photos. On the CPU that
  copy also runs oneDNN's fused kernels (`BlazeFaceBack.fuse`): 1.26x more for a 448 x 352
  input and 1.36x for 64 LFW photos (float32 gains nothing from them). One small photo
  alone (a query's 96 x 96) runs about 2 ms slower so, and still does: a photo must be
  detected alike in a build's batch and on its own, since the proposals move by a pixel or
  two between precisions, dlib's landmarks with them, and a gallery photo asked again
  would not find itself at distance 0 (0.038 median, 0.6 at worst, on 128 LFW photos when
  only batches ran in bfloat16). The second look stays in float32, since its score meets
  the threshold chosen in float32.
- Landmarks: BlazeFace's eyes give the face's tilt; the face is cut out upright (at least
  80 px), dlib's 5-point shape predictor runs on it, and the points are mapped back, so the
  human model's chip (dlib's `get_face_chip`) is cut exactly as for the HOG detector.
- Reductions: each level's input and each large face come from the photo's box-filter
  reductions, made once per photo (`Reductions`). A face wider than `FACE_WORK_SIDE` is
  aligned in the most reduced of them that keeps it that wide, as the chip is smaller
  than the face anyway: the 1665 x 2048 portrait's query went from 2.2 to under 2 times
  an LFW photo's (bench/query_cost.py), and a large face's embedding moves by 0.02 of
  distance (0.04 at worst, 61 faces of about 400 px) against the full photo's.
"""
from __future__ import annotations

import copy
import math
import threading
from importlib import resources

import numpy as np
from PIL import Image

from ..imaging import DLIB_CHIP_PADDING
from ..precision import compute_precision
from .base import Box, Detector, Face, clip_box, left_to_right
from .landmarks import ALIGNED_SIZE, Landmarker

WEIGHTS = "blazeface.pt"
NETWORK_FACE = 16.0          # pixels: the face size the finest pyramid level gives the smallest face
MIN_FACE_PIXELS = 24
MIN_FACE_FRACTION = 1 / 75
SMALL_FACE_SIDE = 1280
LEVEL_STEP = 4.0
FINEST_MAX_PIXELS = 2_000_000  # the finest level's input at most (a 4000 x 3000 photo keeps its 40 px faces)
FIT_SLACK = 0.125            # a level's scale may shrink this much to fit its 32-pixel canvas
COARSEST_SIDE = 256          # the last level: the whole photo in this many pixels
PROPOSAL_THRESHOLD = 0.4     # a pyramid level's candidates (MediaPipe's own threshold: 0.5)
RELATIVE_MIN_FACE = 0.1      # faces under a tenth of the largest found are not looked for
SCORE_THRESHOLD = 0.5        # the refined score a face needs (chosen on training people: bench/detection.py --choose)
REFINE_SIZE = 64             # the second look: each candidate upright in this square ...
REFINE_FACE = 32.0           # ... this many pixels wide
NMS_IOU = 0.3
CONTAINED = 0.6              # a face this much inside a face twice its size is a part of it
MAX_FACES = 200
UPRIGHT_MIN_SIDE = 80        # a face is cut out upright at least this large for the landmarks
FACE_WORK_SIDE = 150         # a larger face is aligned in a reduction of the photo at least this large
LEVEL_TILT = 8.0             # degrees: faces tilted less are given to dlib as they are
# BlazeFace's box is about 9% larger than the HOG box dlib's landmark model was trained with.
DLIB_BOX_SCALE = 0.92


def _device():
    """The GPU when there is one, except in a process forked from one that had started CUDA
    (a build's DataLoader workers, where CUDA cannot start again): there, the CPU."""
    import torch
    in_bad_fork = getattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    return "cuda" if torch.cuda.is_available() and not in_bad_fork() else "cpu"


class BlazeFaceDetector(Detector):
    """Human faces, small and tilted ones too (see the module's doc)."""

    name = "blazeface"

    def __init__(self, alignment: str = "lfw", size: int = ALIGNED_SIZE, threshold: float = SCORE_THRESHOLD,
                 min_face: float | None = None, device: str | None = None,
                 chip_padding: float = DLIB_CHIP_PADDING):
        import torch
        from .blazeface_net import load_network
        self._torch = torch
        self.device = device or _device()
        with resources.as_file(resources.files("faces") / "bundled" / WEIGHTS) as path:
            self.net = load_network(path).to(self.device).to(memory_format=torch.channels_last)
        self.level_net = self.net
        if compute_precision(self.device) == "bfloat16":
            self.level_net = copy.deepcopy(self.net).to(torch.bfloat16)
            if self.device == "cpu":
                self.level_net.fuse()
        self.landmarker = Landmarker(alignment, size, chip_padding)
        self.alignment, self.size = alignment, self.landmarker.size
        self.threshold, self.min_face = threshold, min_face
        self._lock = threading.Lock()      # one network run at a time (torch's threads do the rest)

    # --- the pyramid --------------------------------------------------------------------

    def smallest_face(self, width: int, height: int) -> float:
        if self.min_face is not None:
            return self.min_face
        if max(width, height) <= SMALL_FACE_SIDE:
            return MIN_FACE_PIXELS
        return max(MIN_FACE_PIXELS, MIN_FACE_FRACTION * min(width, height))

    def levels(self, width: int, height: int) -> list[float]:
        """Scales of the pyramid, finest first: the finest gives the smallest face NETWORK_FACE
        pixels (never enlarging more than 2x, never more than FINEST_MAX_PIXELS of input),
        each next one is LEVEL_STEP times coarser, and the last holds the whole photo in
        COARSEST_SIDE pixels; when the finest already does (a small photo), it is the only
        one. Each scale is then trimmed (by at most FIT_SLACK) so the resized photo fills its
        canvas of multiples of 32 with as little padding as it can."""
        coarsest = min(1.0, COARSEST_SIDE / max(width, height))
        scale = min(2.0, NETWORK_FACE / self.smallest_face(width, height),
                    math.sqrt(FINEST_MAX_PIXELS / max(1, width * height)))
        if scale <= coarsest:
            return [_fit(scale, width, height)]
        scales = []
        while scale > coarsest * 1.5:
            scales.append(scale)
            scale /= LEVEL_STEP
        return [_fit(s, width, height) for s in scales + [coarsest]]

    @staticmethod
    def canvas(photo: Reductions, scale: float) -> np.ndarray:
        """The photo resized by `scale`, as the network's float input (H x W x 3, -1..1),
        padded with 0 (grey) to multiples of 32. Shrinking is a box filter by a whole factor
        (`Reductions`: one already made when it leaves less than 2x, else the whole factor),
        then bilinear for the rest (less than 2x): a third of the cost of PIL's antialiased
        bilinear from the full photo, whose every output pixel weighs a wide window of
        input ones."""
        image = photo.image
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        made = [factor for factor in photo.factors() if factor <= 1 / scale < 2 * factor]
        source = photo.reduced(max(made) if made else max(1, min(int(1 / scale), *image.size)))
        resized = source if source.size == (width, height) else source.resize((width, height), Image.BILINEAR)
        padded = np.zeros((-(-height // 32) * 32, -(-width // 32) * 32, 3), dtype=np.float32)
        padded[:height, :width] = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        return padded

    def _run(self, batch: np.ndarray, net) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device, next(net.parameters()).dtype).contiguous(
            memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            scores, boxes = net(x)
        return scores.float().cpu().numpy(), boxes.float().cpu().numpy()

    def raw_detections(self, photos: list[Reductions]) -> list[list[tuple[float, np.ndarray, np.ndarray]]]:
        """Per photo: (score, box x0 y0 x1 y1, 6 x 2 keypoints) in its own pixels, overlaps
        removed. Levels run coarsest first, a round at a time; each round's levels of equal
        size share network batches across the photos."""
        from .blazeface_net import grid_anchors
        images = [photo.image for photo in photos]
        pending = {index: self.levels(*image.size)[::-1] for index, image in enumerate(images)}
        found: list[list] = [[] for _ in images]
        largest = np.zeros(len(images))
        while pending:
            jobs: dict[tuple[int, int], list[tuple[int, float, np.ndarray]]] = {}
            for index, scales in pending.items():
                canvas = self.canvas(photos[index], scales[0])
                jobs.setdefault(canvas.shape[:2], []).append((index, scales[0], canvas))
            for (height, width), items in jobs.items():
                anchors = grid_anchors(height, width)
                per_batch = max(1, (8 * 256 * 256) // (height * width))
                for start in range(0, len(items), per_batch):
                    chunk = items[start:start + per_batch]
                    scores, boxes = self._run(np.stack([canvas for _, _, canvas in chunk]), self.level_net)
                    for (index, scale, _), score, box in zip(chunk, scores, boxes):
                        keep = np.flatnonzero(score >= _logit(PROPOSAL_THRESHOLD))
                        if len(keep):
                            found[index].append(_decoded(score[keep], box[keep], anchors[keep], scale))
                            probability, corners = found[index][-1][:2]
                            sure = probability >= SCORE_THRESHOLD
                            if sure.any():
                                largest[index] = max(largest[index], float((corners[sure, 2] - corners[sure, 0]).max()))
            for index in list(pending):
                done, finer = pending[index][0], pending[index][1:]
                if largest[index] > 0:
                    # Faces under a tenth of the largest found are not looked for: a finer
                    # level only as fine as that needs, or none when this one found them.
                    needed = NETWORK_FACE / (RELATIVE_MIN_FACE * largest[index])
                    kept = [scale for scale in finer if scale < needed]
                    if len(kept) < len(finer) and needed > done * (1 + FIT_SLACK):
                        kept.append(_fit(needed, *images[index].size))
                    finer = kept
                if finer:
                    pending[index] = finer
                else:
                    del pending[index]
        return self.refine(images, [_non_overlapping(*map(np.concatenate, zip(*parts))) if parts else []
                                    for parts in found])

    def refine(self, images: list[Image.Image], found: list[list]) -> list[list]:
        """A second look at every candidate at one easy scale: the face cut out upright, at
        REFINE_FACE pixels in a REFINE_SIZE square, scored again; the face's score is the best
        one near the middle. Textures a fine pyramid level took for a small face (a sleeve,
        a hand, hair) lose their score; faces keep theirs."""
        from .blazeface_net import grid_anchors
        cuts, owners = [], []
        for index, (image, detections) in enumerate(zip(images, found)):
            for number, (_, box, keypoints) in enumerate(detections):
                cuts.append(self._upright(image, box, keypoints, REFINE_SIZE, REFINE_FACE))
                owners.append((index, number))
        if not cuts:
            return found
        anchors = grid_anchors(REFINE_SIZE, REFINE_SIZE)
        middle = np.abs(anchors - REFINE_SIZE / 2).max(1) <= REFINE_FACE / 2
        rescored: list[list] = [[] for _ in images]
        for start in range(0, len(cuts), 128):
            scores, _ = self._run(np.stack(cuts[start:start + 128]), self.net)
            for (index, number), score in zip(owners[start:start + 128], scores):
                probability = float(1.0 / (1.0 + np.exp(-float(score[middle].max()))))
                if probability >= self.threshold:
                    _, box, keypoints = found[index][number]
                    rescored[index].append((probability, box, keypoints))
        return rescored

    @staticmethod
    def _upright(image: Image.Image, box: np.ndarray, keypoints: np.ndarray, size: int, face: float) -> np.ndarray:
        """The face cut out with its eyes level, `face` pixels wide in a size x size input."""
        left_eye, right_eye = keypoints[0], keypoints[1]
        angle = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        scale = max(box[2] - box[0], box[3] - box[1], 1.0) / face
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        half = size / 2
        cut = image.transform((size, size), Image.AFFINE,
                              (cos, -sin, cx - cos * half + sin * half, sin, cos, cy - sin * half - cos * half),
                              Image.BILINEAR)
        return np.asarray(cut, dtype=np.float32) / 127.5 - 1.0

    # --- faces --------------------------------------------------------------------------

    def _landmarks(self, pixels: np.ndarray, image: Image.Image, box: np.ndarray,
                   keypoints: np.ndarray) -> tuple[np.ndarray, float]:
        """dlib's 5 landmarks of a detected face in the image's pixels, and its tilt (degrees)."""
        left_eye, right_eye = keypoints[0], keypoints[1]       # as seen in the picture
        tilt = math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * DLIB_BOX_SCALE
        if abs(tilt) < LEVEL_TILT and side >= UPRIGHT_MIN_SIDE:
            half = side / 2
            return self.landmarker.landmarks(pixels, (cx - half, cy - half, cx + half, cy + half)), tilt
        # Cut the face out upright (and enlarged when small), find the landmarks, map them back.
        zoom = max(1.0, UPRIGHT_MIN_SIDE / side)
        crop = int(math.ceil(side * 2 * zoom))
        angle = math.radians(tilt)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        half = crop / 2
        coefficients = (cos, -sin, cx - cos * half + sin * half, sin, cos, cy - sin * half - cos * half)
        upright = np.asarray(image.transform((crop, crop), Image.AFFINE, coefficients, Image.BILINEAR))
        inner = side * zoom / 2
        points = self.landmarker.landmarks(np.ascontiguousarray(upright),
                                           (half - inner, half - inner, half + inner, half + inner))
        a, b, c, d, e, f = coefficients
        return np.stack([a * points[:, 0] + b * points[:, 1] + c, d * points[:, 0] + e * points[:, 1] + f], 1), tilt

    def faces_of(self, photo: Reductions, detections) -> list[Face]:
        """Each detection's landmarks and aligned face. A large face is worked on in the
        most reduced of the photo's reductions the pyramid made that keeps it
        `FACE_WORK_SIDE` pixels wide (else in the photo): making a 3-megapixel photo an
        array for dlib cost more than the landmarks and the chip together, and the chip is
        smaller than the face anyway."""
        image, faces, arrays = photo.image, [], {}
        for score, box, keypoints in detections:
            side = max(box[2] - box[0], box[3] - box[1]) * DLIB_BOX_SCALE
            factor = max(f for f in photo.factors() if side / f >= FACE_WORK_SIDE or f == 1)
            work = photo.reduced(factor)
            if factor not in arrays:
                arrays[factor] = np.asarray(work)
            # Pixel i of a reduction by f covers the photo's pixels i*f .. i*f + f - 1, so
            # it sits at the photo's pixel i*f + (f - 1)/2.
            shift = (factor - 1) / 2
            landmarks, tilt = self._landmarks(arrays[factor], work, (box - shift) / factor, (keypoints - shift) / factor)
            faces.append(Face(image=self.landmarker.cut(arrays[factor], work, landmarks),
                              box=clip_box(box, image.size), score=round(float(score), 4),
                              landmarks=landmarks * factor + shift, angle=round(tilt, 1)))
        return left_to_right([face for face in faces if face.box[2] > face.box[0] and face.box[3] > face.box[1]])

    def detect_many(self, images: list[Image.Image]) -> list[list[Face]]:
        """Many photos at once: their pyramid levels of equal size share network batches."""
        photos = [Reductions(image) for image in images]
        return [self.faces_of(photo, found) for photo, found in zip(photos, self.raw_detections(photos))]

    def __call__(self, image: Image.Image) -> list[Face]:
        return self.detect_many([image])[0]

    def in_box(self, image: Image.Image, box: Box) -> Face:
        """The face in a box the user drew, aligned by the landmarks found inside it."""
        pixels = np.asarray(image)
        landmarks = self.landmarker.landmarks(pixels, box)
        return Face(image=self.landmarker.cut(pixels, image, landmarks), box=tuple(box),
                    landmarks=landmarks, found_by="box")


class Reductions:
    """A photo and the box-filter reductions (PIL's reduce) made of it, each made once and
    from the largest one made that divides it; a multiple of 4 above 4 goes through the
    4x, so a coarse pyramid level's 8x leaves the 4x that a finer level or a large face
    then takes for free (the same pixels, to a grey level of rounding, as one reduce from
    the photo, at the same cost)."""

    def __init__(self, image: Image.Image):
        self.image = image
        self._made = {1: image}

    def factors(self) -> list[int]:
        return sorted(self._made)

    def reduced(self, factor: int) -> Image.Image:
        while factor not in self._made:
            base = max(made for made in self._made if factor % made == 0)
            step = 4 if factor // base > 4 and (factor // base) % 4 == 0 else factor // base
            self._made[base * step] = self._made[base].reduce(step)
        return self._made[factor]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a with each of boxes b."""
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def _fit(scale: float, width: int, height: int) -> float:
    """The scale at most FIT_SLACK below `scale` whose resized photo leaves the least
    padding in its canvas (sides rounded up to multiples of 32); `scale` itself on a tie."""
    def area(s: float) -> int:
        return (-(-max(1, round(width * s)) // 32) * 32) * (-(-max(1, round(height * s)) // 32) * 32)
    best = scale
    for side in (width, height):
        fitted = (round(side * scale) // 32) * 32 / side      # this side exactly k x 32
        if fitted >= scale * (1 - FIT_SLACK) and area(fitted) < area(best):
            best = fitted
    return best


def _decoded(logits: np.ndarray, offsets: np.ndarray, centres: np.ndarray, scale: float):
    """A level's kept anchors as (probabilities, boxes x0 y0 x1 y1, 6 x 2 keypoints) in the
    photo's pixels."""
    probability = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    centre = centres + offsets[:, :2]
    half = offsets[:, 2:4] / 2
    corners = np.concatenate([centre - half, centre + half], 1) / scale
    keypoints = (offsets[:, 4:].reshape(-1, 6, 2) + centres[:, None, :]) / scale
    return probability, corners, keypoints


def _non_overlapping(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> list:
    """Best first; each kept face's box, keypoints and score blended with the faces it
    suppresses (MediaPipe's weighted suppression), so one face seen at two levels is one.
    The loop runs once per kept face, each time over all candidates at once."""
    if not len(scores):
        return []
    order = np.argsort(-scores, kind="stable")
    scores, boxes, keypoints = scores[order], boxes[order], keypoints[order]
    left = np.ones(len(scores), dtype=bool)
    kept = []
    while left.any() and len(kept) < MAX_FACES:
        best = int(np.argmax(left))                  # the best score not yet taken
        group = (_iou(boxes[best], boxes) > NMS_IOU) & left
        group[best] = True                           # itself, even as a box of no area
        weights = scores[group][:, None]
        kept.append((float(scores[best]), (boxes[group] * weights).sum(0) / weights.sum(),
                     (keypoints[group] * weights[:, :, None]).sum(0) / weights.sum()))
        left &= ~group
    return _not_inside_larger(kept)


def _not_inside_larger(faces: list) -> list:
    """Drops a face lying mostly inside a face at least twice its size: an eye or a mouth
    that a fine pyramid level took for a small face (a face holds no other face)."""
    def area(box):
        return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])

    def inside(small, large) -> float:
        width = max(0.0, min(small[2], large[2]) - max(small[0], large[0]))
        height = max(0.0, min(small[3], large[3]) - max(small[1], large[1]))
        return width * height / max(area(small), 1e-9)
    return [face for face in faces
            if not any(area(other[1]) >= 2 * area(face[1]) and inside(face[1], other[1]) >= CONTAINED
                       for other in faces if other is not face)]
