"""Small fixtures for tests and benchmarks: a freshly initialised checkpoint and a generated
gallery of coloured shapes, one identity per folder. Nothing here downloads anything."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from trainer.checkpoint import save_checkpoint
from trainer.imaging import Preprocess
from trainer.models import EmbeddingNet

PALETTE = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 190, 30), (150, 50, 200), (30, 190, 200),
           (240, 120, 20), (120, 120, 120)]


def make_checkpoint(path: str | Path, species: str = "human", threshold: float = 1.0, embedding_dim: int = 128,
                    seed: int = 0) -> Path:
    """An untrained `small` 64 px model: embeddings are meaningless but deterministic."""
    torch.manual_seed(seed)
    save_checkpoint(path, EmbeddingNet("small", embedding_dim), Preprocess(64, 1.0), species, threshold)
    return Path(path)


def draw_face(colour: tuple[int, int, int], shape: int, rng: random.Random, size: int = 64) -> Image.Image:
    """A `shape` (0 ellipse, 1 square, 2 triangle) in `colour`, jittered, on a pale background."""
    image = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x, y = rng.randint(4, size // 4), rng.randint(4, size // 4)
    w, h = rng.randint(size // 2, size - x - 2), rng.randint(size // 2, size - y - 2)
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
    if shape == 0:
        draw.ellipse((x, y, x + w, y + h), fill=jitter)
    elif shape == 1:
        draw.rectangle((x, y, x + w, y + h), fill=jitter)
    else:
        draw.polygon([(x, y + h), (x + w // 2, y), (x + w, y + h)], fill=jitter)
    return image


def make_gallery(root: str | Path, identities: int = 3, per_identity: int = 4, in_root: int = 0,
                 seed: int = 0, first_identity: int = 0) -> list[Path]:
    """root/person_NN/img_MM.jpg for each identity (and `in_root` images with no identity)."""
    root = Path(root)
    rng = random.Random(seed)
    paths = []
    for number in range(first_identity, first_identity + identities):
        folder = root / f"person_{number:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_identity):
            path = folder / f"img_{index:02d}.jpg"
            draw_face(PALETTE[number % len(PALETTE)], number % 3, rng).save(path, quality=90)
            paths.append(path)
    for index in range(in_root):
        path = root / f"loose_{index:02d}.png"
        draw_face(PALETTE[-1 - index % len(PALETTE)], index % 3, rng).save(path)
        paths.append(path)
    return paths
