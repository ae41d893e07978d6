"""Shared test fixtures: small generated face-like images, written as real JPEG files; an
untrained checkpoint; running click commands in-process; a copy of an index to change."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.config import DATABASE_FILE

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
LFW = SHARED_DATA / "lfw" / "images"
DOGS = SHARED_DATA / "dogfacenet" / "images"
GROUP_PHOTO = SHARED_DATA / "samples" / "group_photo.jpg"


def identity_image(identity: int, variant: int, size: int = 64) -> Image.Image:
    """A picture whose coarse pattern is fixed by `identity` and whose noise and small shift
    vary with `variant`: same-identity images resemble each other, others do not."""
    pattern = np.random.default_rng(1000 + identity).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(pattern).resize((size, size), Image.NEAREST), dtype=np.int16)
    rng = np.random.default_rng(identity * 7919 + variant)
    shifted = np.roll(base, shift=tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    noisy = shifted + rng.normal(0, 12, shifted.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_identity_folders(root: Path, identities: int = 6, per_identity: int = 5,
                           size: int = 64) -> Path:
    for identity in range(identities):
        folder = root / f"person_{identity:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for variant in range(per_identity):
            identity_image(identity, variant, size).save(folder / f"person_{identity:02d}_{variant + 1:04d}.jpg",
                                                         quality=95)
    return root


@pytest.fixture
def identity_folders(tmp_path: Path) -> Path:
    return write_identity_folders(tmp_path / "faces")


def invoke_cli(command, *args) -> tuple[int, str]:
    """Run a click command in-process: (exit code, output); an unexpected exception is
    raised, not turned into an exit code."""
    result = CliRunner().invoke(command, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def copy_index(gallery: Path, index: Path, into: Path) -> tuple[Path, Path]:
    """A copy of an SQLite index and its gallery under `into`, its rows pointed at the copied
    gallery's files, for one test to change: (gallery, index)."""
    copied_gallery, copied_index = into / "gallery", into / "index"
    shutil.copytree(gallery, copied_gallery)
    shutil.copytree(index, copied_index, ignore=shutil.ignore_patterns("*.lock"))
    with sqlite3.connect(copied_index / DATABASE_FILE) as db:
        old, new = str(gallery).encode(), str(copied_gallery).encode()
        for row_id, path in db.execute("SELECT id, path FROM images").fetchall():
            db.execute("UPDATE images SET path = ? WHERE id = ?", (path.replace(old, new, 1), row_id))
        db.execute("UPDATE builds SET gallery_root = ?", (new,))
    return copied_gallery, copied_index


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory) -> Path:
    """An untrained small network (64 px), seeded, as a checkpoint file."""
    import torch
    from faces.checkpoint import save_checkpoint
    from faces.imaging import Preprocess
    from faces.models import EmbeddingNet
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "fresh.pt"
    save_checkpoint(path, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", 0.5)
    return path


@pytest.fixture(scope="module")
def fresh_dog_checkpoint(tmp_path_factory) -> Path:
    """An untrained small network (64 px) of species dog: with fresh_checkpoint, the two
    models of a quick two-model index (`indexer build --models HUMAN.pt,DOG.pt`)."""
    import torch
    from faces.checkpoint import save_checkpoint
    from faces.imaging import Preprocess
    from faces.models import EmbeddingNet
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model") / "fresh-dog.pt"
    save_checkpoint(path, EmbeddingNet("small", 128), Preprocess(64, 1.0), "dog", 0.5)
    return path
