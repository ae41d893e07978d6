"""Issue 13: each failure a round of malformed input found, pinned by a test of its own.

The broad, generated suite is tests/test_fuzz_input.py; these are the named cases.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import struct
import threading
import warnings
from pathlib import Path

import click.testing
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from faces.checkpoint import save_checkpoint
from faces.detection import get_detector
from faces.errors import readable
from faces.imaging import ImageError, Preprocess, image_format, load_image
from faces.models import EmbeddingNet
from indexer.cli import main as indexer_cli
from indexer.config import DATABASE_FILE
from search.cli import main as search_cli

from conftest import identity_image, write_identity_folders

THIN_SIZES = [(4000, 1), (1, 2561), (65535, 1)]


def jpeg_bytes(size=(16, 16), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def with_corrupt_exif(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 Exif segment whose IFD is cut short (Pillow warns about it)."""
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 10
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# --- faces.imaging: what may be opened -----------------------------------------------

@pytest.mark.parametrize("size", THIN_SIZES)
def test_thin_images_go_through_the_detector(size):
    image = Image.new("RGB", size, (128, 128, 128))
    assert get_detector("auto")(image) == []


def test_postscript_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    # An EPS file that Pillow would hand to Ghostscript; a `gs` on PATH records any call.
    marker = tmp_path / "gs-was-run"
    fake_gs = tmp_path / "bin" / "gs"
    fake_gs.parent.mkdir()
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_gs.parent}{os.pathsep}{os.environ['PATH']}")
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    with pytest.raises(ImageError, match="photo.jpg: not an image"):
        load_image(eps)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["PDF", "ICO", "TGA", "PPM", "PCX"])
def test_formats_outside_the_allow_list_are_refused_though_pillow_reads_them(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, fmt)
    assert image_format(buffer.getvalue()) is None
    with pytest.raises(ImageError, match="not an image"):
        load_image(buffer.getvalue(), name=f"x.{fmt.lower()}")


def test_fifo_named_like_a_photo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(load_image, fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():          # free the blocked reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_image blocked on a FIFO")
    assert outcome == [f"{fifo}: not a regular file (a FIFO)"]


def test_device_is_refused(tmp_path):
    assert _error_of(load_image, "/dev/zero") == "/dev/zero: not a regular file (a device)"


def test_pillow_warnings_are_not_printed(tmp_path):
    path = tmp_path / "exif.jpg"
    path.write_bytes(with_corrupt_exif(jpeg_bytes()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path).size == (16, 16)
    assert [str(w.message) for w in caught] == []


def test_decoder_errors_of_any_kind_become_image_errors():
    # A GIF whose logical screen is fine but whose image block is garbage.
    data = b"GIF89a\x10\x00\x10\x00\x80\x00\x00" + bytes(6) + b",\x00\x00\x00\x00\x10\x00\x10\x00\x00\x02\xff" + bytes(40)
    with pytest.raises(ImageError, match="bad.gif: "):
        load_image(data, name="bad.gif")


def _error_of(function, *args) -> str | None:
    try:
        function(*args)
    except ImageError as error:
        return str(error)
    return None


# --- file names that are not UTF-8 ----------------------------------------------------

@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", 0.02)
    return path


def cli(main, *args) -> "click.testing.Result":
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_file_names_that_are_not_utf8_are_indexed_kept_and_shown_readably(tmp_path, small_model):
    gallery = write_identity_folders(tmp_path / "gallery", identities=2, per_identity=2)
    rex = gallery / os.fsdecode(b"r\xe9x")                 # an identity folder named in Latin-1
    rex.mkdir()
    cafe = rex / os.fsdecode(b"caf\xe9.jpg")
    identity_image(7, 0).save(cafe, "JPEG")
    later = gallery / os.fsdecode(b"person_00/na\xefve.jpg")
    index = tmp_path / "index"
    common = ["--index", index, "--workers", 0, "--no-progress", "--json"]

    built = json.loads(cli(indexer_cli, "build", gallery, "--model", small_model, "--detector", "none",
                           *common).output.splitlines()[-1])
    assert (built["images_added"], built["skipped"]) == (5, 0)
    identity_image(8, 0).save(later, "JPEG")
    added = json.loads(cli(indexer_cli, "add", later, *common).output.splitlines()[-1])
    assert (added["images_added"], added["skipped"]) == (1, 0)

    with sqlite3.connect(index / DATABASE_FILE) as db:     # the exact bytes, not a lossy stand-in
        stored = {row[0] for row in db.execute("SELECT path FROM images")}
    assert os.fsencode(cafe) in stored and os.fsencode(later) in stored

    found = json.loads(cli(search_cli, "query", cafe, "--index", index, "--detector", "none", "-k", 1,
                           "--json").output)
    [match] = found["faces"][0]["matches"]
    assert (match["path"], match["identity"]) == ("r\\xe9x/caf\\xe9.jpg", "r\\xe9x")
    table = cli(search_cli, "query", later, "--index", index, "--detector", "none", "-k", 1).output
    assert table.splitlines()[-1].split()[-2:] == ["person_00", "person_00/na\\xefve.jpg"]
    absolute = json.loads(cli(search_cli, "query", cafe, "--index", index, "--detector", "none", "-k", 1,
                              "--absolute-paths", "--json").output)
    assert absolute["faces"][0]["matches"][0]["path"] == readable(cafe)

    again = json.loads(cli(indexer_cli, "build", gallery, *common).output.splitlines()[-1])
    assert (again["unchanged"], again["images_added"]) == (6, 0)
    cafe.unlink()
    pruned = json.loads(cli(indexer_cli, "build", gallery, "--prune", *common).output.splitlines()[-1])
    assert pruned["removed"] == 1
    removed = json.loads(cli(indexer_cli, "remove", later, *common[:2], "--json").output.splitlines()[-1])
    assert removed["removed"] == 1 and removed["not_found"] == []
