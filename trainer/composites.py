"""Training and test pictures for the dog face detector: DogFaceNet faces pasted into scenes.

DogFaceNet holds only aligned face crops, no photos of dogs in the world, so scenes are
made: a background (an LFW photo, a mosaic of LFW photos and pieces of dog fur cut from
DogFaceNet crops, a colour gradient, noise or flat grey), then one or two dog faces pasted
with soft edges at 10-60% of the picture's width, tilted up to 20 degrees, blurred, colour
jittered and partly covered now and then. A face's true place is the `Square` it was pasted
into, the very crop the dog model was trained on, so the detector learns to find that square.

Backgrounds are never a whole dog face: a DogFaceNet crop stretched over a scene would be a
face the labels call background. Human faces (LFW) are in backgrounds on purpose: they are
the hard negatives a dog index must not call dogs.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from faces.detectors.dog import WINDOW, Square, cut_square, square_iou

FACE_SIDE = 224                    # DogFaceNet's crop size


@dataclass
class Scene:
    image: Image.Image
    faces: list[Square]


class ImageSource:
    """Random pictures from a list of files, decoded on demand (a few kept for reuse)."""

    def __init__(self, paths: list[Path], rng: random.Random, keep: int = 256):
        self.paths, self.rng, self.keep = list(paths), rng, keep
        self._cache: dict[Path, Image.Image] = {}

    def pick(self) -> Image.Image:
        path = self.rng.choice(self.paths)
        image = self._cache.get(path)
        if image is None:
            image = Image.open(path).convert("RGB")
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = image
        return image


def soft_mask(side: int, feather: float) -> Image.Image:
    """An L mask of a square, opaque inside and fading to 0 over `feather` of the side at its
    edges, so a pasted face has no hard border to give it away."""
    ramp = max(1.0, feather * side)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5
    edge = np.clip(distance / ramp, 0, 1)
    return Image.fromarray((np.minimum.outer(edge, edge) * 255).astype(np.uint8), "L")


def jitter_colour(image: Image.Image, rng: random.Random, strength: float = 0.35) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(1 - strength, 1 + strength))
    return image


def fill(image: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A random part of the picture (60-100% of the largest one of the aspect of `size`),
    resized to `size`."""
    width, height = image.size
    aspect = size[0] / size[1]
    largest_w = width if width / height < aspect else height * aspect
    crop_w = largest_w * rng.uniform(0.6, 1.0)
    crop_h = crop_w / aspect
    left, top = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
    return image.resize(size, Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def fur(dogs: ImageSource, rng: random.Random) -> Image.Image:
    """A piece of a dog face (at most 45% of its side): fur and parts, never a whole face."""
    face = dogs.pick()
    side = rng.uniform(0.25, 0.45) * face.width
    left, top = rng.uniform(0, face.width - side), rng.uniform(0, face.height - side)
    return face.crop((int(left), int(top), int(left + side), int(top + side)))


def background(size: tuple[int, int], people: ImageSource, dogs: ImageSource,
               rng: random.Random) -> Image.Image:
    kind = rng.random()
    width, height = size
    if kind < 0.45:
        image = fill(people.pick(), size, rng)
    elif kind < 0.8:
        columns, rows = rng.choice([(2, 2), (3, 2), (2, 3), (3, 3), (4, 3)])
        image = Image.new("RGB", size)
        for i in range(columns):
            for j in range(rows):
                tile_size = (math.ceil(width / columns), math.ceil(height / rows))
                tile = fill(people.pick(), tile_size, rng) if rng.random() < 0.5 else fur(dogs, rng).resize(tile_size)
                image.paste(tile, (i * width // columns, j * height // rows))
    elif kind < 0.9:
        corners = np.array([[rng.randrange(256) for _ in range(3)] for _ in range(2)], dtype=np.float32)
        t = np.linspace(0, 1, width)[None, :, None]
        gradient = corners[0] * (1 - t) + corners[1] * t
        noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, rng.uniform(0, 30), (height, width, 3))
        image = Image.fromarray(np.clip(np.broadcast_to(gradient, (height, width, 3)) + noise, 0, 255).astype(np.uint8))
    elif kind < 0.95:
        noise = np.random.default_rng(rng.randrange(2 ** 32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
    else:
        grey = rng.randrange(256)
        image = Image.new("RGB", size, (grey, grey, grey))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    return jitter_colour(image, rng, 0.3)


def dressed_face(face: Image.Image, rng: random.Random, cover: Image.Image | None) -> Image.Image:
    """A face crop as a photo may show it: colour, blur, a mirror image, part covered."""
    face = jitter_colour(face, rng)
    if rng.random() < 0.5:
        face = face.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.25:
        face = face.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    if cover is not None:
        # Something in front of the face: at most a third of it, from one side.
        side = face.width
        depth = int(side * rng.uniform(0.1, 0.33))
        edge = rng.choice("ltrb")
        box = {"l": (0, 0, depth, side), "r": (side - depth, 0, side, side),
               "t": (0, 0, side, depth), "b": (0, side - depth, side, side)}[edge]
        face = face.copy()
        face.paste(cover.resize((box[2] - box[0], box[3] - box[1])), box[:2])
    return face


def paste(scene: Image.Image, face: Image.Image, square: Square, feather: float) -> None:
    """Paste the face crop into the scene so it fills `square` (tilt included), soft-edged."""
    side = face.width
    # The scene pixel -> face pixel map is the inverse of the square's crop map.
    a, b, c, d, e, f = square.corners_affine(side)
    det = a * e - b * d
    inverse = (e / det, -b / det, (b * f - c * e) / det, -d / det, a / det, (c * d - a * f) / det)
    mask = soft_mask(side, feather)
    warped = face.transform(scene.size, Image.AFFINE, inverse, Image.BILINEAR)
    warped_mask = mask.transform(scene.size, Image.AFFINE, inverse, Image.BILINEAR)
    scene.paste(warped, (0, 0), warped_mask)


def fits(square: Square, size: tuple[int, int]) -> bool:
    reach = square.side / 2 * (abs(math.cos(square.angle)) + abs(math.sin(square.angle)))
    return (reach <= square.cx <= size[0] - reach) and (reach <= square.cy <= size[1] - reach)


def make_scene(dogs: ImageSource, people: ImageSource, rng: random.Random,
               size: tuple[int, int] | None = None, faces: int | None = None,
               width_range: tuple[float, float] = (0.10, 0.60), max_tilt_degrees: float = 20.0) -> Scene:
    """One scene with its faces' squares. A tenth of the scenes are a face crop alone, tight
    as DogFaceNet's (a picture that is already a face must be found as one face)."""
    size = size or rng.choice([(320, 240), (240, 320), (288, 288), (360, 240)])
    if faces is None and rng.random() < 0.1:
        crop = jitter_colour(dogs.pick(), rng)
        side = rng.randrange(96, 257)
        return Scene(crop.resize((side, side), Image.BILINEAR), [Square(side / 2, side / 2, side)])
    scene = background(size, people, dogs, rng)
    count = faces if faces is not None else rng.choices([0, 1, 2], weights=[0.1, 0.7, 0.2])[0]
    squares: list[Square] = []
    for _ in range(count):
        for _attempt in range(20):
            side = size[0] * rng.uniform(*width_range)
            angle = math.radians(rng.uniform(-max_tilt_degrees, max_tilt_degrees))
            square = Square(rng.uniform(0, size[0]), rng.uniform(0, size[1]), side, angle)
            if fits(square, size) and all(square_iou(square, other) < 0.05 for other in squares):
                break
        else:
            continue
        cover = fill(people.pick(), (64, 64), rng) if rng.random() < 0.2 else None
        paste(scene, dressed_face(dogs.pick(), rng, cover), square, rng.uniform(0.03, 0.12))
        squares.append(square)
    return Scene(scene, squares)


def people_by_role(root: Path) -> dict[str, list[Path]]:
    """LFW's photos split by person (folder order) into what each may be used for, so no
    number is measured on pictures it was tuned on: 'backgrounds' (four people in five: the
    training scenes), 'threshold' (one in ten: choosing the detector's score threshold) and
    'test' (one in ten: the tests and bench/dog_photos.py)."""
    from faces.imaging import list_images
    roles: dict[str, list[Path]] = {"backgrounds": [], "threshold": [], "test": []}
    for i, folder in enumerate(sorted(p for p in Path(root).iterdir() if p.is_dir())):
        role = "backgrounds" if i % 5 else "threshold" if i % 10 == 0 else "test"
        roles[role].extend(list_images(folder))
    return roles


# --- 48 px training windows ----------------------------------------------------------------

POSITIVE_IOU = 0.6          # a window this close to a face is a face (score and regression)
PART_IOU = 0.35             # this close: regression only (too far off to call it a face)
NEGATIVE_IOU = 0.2          # further than this from every face: background


def near(face: Square, rng: random.Random, spread: float) -> Square:
    """A window around a face: shifted, scaled and sometimes tilted by about `spread`."""
    angle = face.angle + rng.gauss(0, 0.15) if rng.random() < 0.4 else 0.0
    return Square(face.cx + rng.gauss(0, spread) * face.side, face.cy + rng.gauss(0, spread) * face.side,
                  face.side * math.exp(rng.gauss(0, spread * 1.5)), angle)


def windows(scene: Scene, rng: random.Random, negatives: int = 6):
    """(48 px window, label, offsets) samples of a scene: label 1 face, 0 background, -1 part
    (regression only); offsets from the window to the nearest face (zeros for background)."""
    samples = []

    def add(window: Square, label: int, target: Square | None):
        offsets = window.offsets_to(target) if target is not None else (0.0, 0.0, 0.0, 0.0)
        samples.append((np.asarray(cut_square(scene.image, window, WINDOW)), label, offsets))

    for face in scene.faces:
        for spread, wanted, count in ((0.06, 1, 3), (0.18, -1, 2)):
            made = 0
            for _attempt in range(12):
                window = near(face, rng, spread)
                iou = square_iou(window, face)
                label = 1 if iou >= POSITIVE_IOU else -1 if iou >= PART_IOU else None
                if label == wanted:
                    add(window, label, face)
                    made += 1
                    if made == count:
                        break
    width, height = scene.image.size
    shorter = min(width, height)
    made = 0
    for _attempt in range(negatives * 4):
        if made == negatives:
            break
        if rng.random() < 0.15:          # the whole picture (a tight crop of no face)
            window = Square(width / 2, height / 2, shorter)
        else:
            side = shorter * math.exp(rng.uniform(math.log(0.12), 0.0))
            window = Square(rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2), side)
        if all(square_iou(window, face) < NEGATIVE_IOU for face in scene.faces):
            add(window, 0, None)
            made += 1
    return samples


def make_windows(dog_paths: list[Path], people_paths: list[Path], scenes: int, seed: int,
                 progress=None) -> dict:
    """Arrays for training: pixels (N x 48 x 48 x 3 uint8), labels (N,), offsets (N x 4)."""
    rng = random.Random(seed)
    dogs, people = ImageSource(dog_paths, rng), ImageSource(people_paths, rng)
    pixels, labels, offsets = [], [], []
    for i in range(scenes):
        for window, label, offset in windows(make_scene(dogs, people, rng), rng):
            pixels.append(window)
            labels.append(label)
            offsets.append(offset)
        if progress is not None:
            progress(i)
    return {"pixels": np.stack(pixels), "labels": np.array(labels, dtype=np.int8),
            "offsets": np.array(offsets, dtype=np.float32)}


def photo_with_a_face(face: Image.Image, people: ImageSource, rng: random.Random,
               size: tuple[int, int] = (800, 600), width_range: tuple[float, float] = (0.20, 0.35),
               max_tilt_degrees: float = 10.0) -> Scene:
    """The acceptance test's picture: one face at 20-35% of the width of an 800 x 600 photo
    whose background is a real photo (an LFW picture with its person, enlarged), soft-edged."""
    scene = fill(people.pick(), size, rng)
    for _attempt in range(50):
        square = Square(rng.uniform(0, size[0]), rng.uniform(0, size[1]), size[0] * rng.uniform(*width_range),
                        math.radians(rng.uniform(-max_tilt_degrees, max_tilt_degrees)))
        if fits(square, size):
            break
    paste(scene, face, square, 0.06)
    return Scene(scene, [square])
