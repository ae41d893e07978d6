"""Malformed input through every door: the indexer, the command line and the web server.

A seeded generator writes a few hundred bad and odd files (truncations, bit flips, odd
modes and depths, huge declared sizes, animations, formats outside the allow-list, thin
images, odd names, FIFOs and links) and a few hundred odd requests. They go

- into `indexer build` (one gallery of all of them) and `indexer add` (a batch);
- into `search query` through click's CliRunner, and a few through real subprocesses;
- into the web app through Flask's test client, and a sample through a real `search serve`.

Every case must end in an answer, never a crash: exit 0 or a one-line error naming the
file, HTTP 2xx/4xx with a JSON error, no traceback, no hang; every skipped file is in the
database with its reason; afterwards the server still answers health and a good query.
The same seed gives the same cases, so a failure names a case that can be run again.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import random
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from faces.checkpoint import save_checkpoint
from faces.imaging import ImageError, Preprocess, load_image
from faces.models import EmbeddingNet
from indexer.cli import main as indexer_cli
from indexer.config import DATABASE_FILE
from search.cli import main as search_cli
from web import create_app

from conftest import LFW, REPO, identity_image

SEED = 13
GOOD_PHOTO = LFW / "Al_Gore" / "Al_Gore_0001.jpg"     # a real face, indexed in every gallery here
FACE_PHOTO = LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"   # the face in the generated files
needs_data = pytest.mark.skipif(not GOOD_PHOTO.is_file(), reason=f"LFW images not found at {LFW}")
pytestmark = needs_data


# --- generated files ----------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG header claiming width x height, with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming width x height."""
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def base_images(rng: random.Random) -> dict[str, bytes]:
    """Well-formed files in every allowed format, in odd modes, depths and sizes: a real
    face, so that many are indexed and their thumbnails served."""
    face = Image.open(FACE_PHOTO).convert("RGB").resize((160, 160))
    grey = face.convert("L")
    files = {
        "jpeg_rgb": encode(face, "JPEG", quality=90),
        "jpeg_grey": encode(grey, "JPEG"),
        "jpeg_cmyk": encode(face.convert("CMYK"), "JPEG"),
        "jpeg_progressive": encode(face, "JPEG", progressive=True),
        "jpeg_rotated_exif": encode(face, "JPEG", exif=_exif_orientation(6)),
        "png_rgb": encode(face, "PNG"),
        "png_rgba": encode(face.convert("RGBA"), "PNG"),
        "png_la": encode(grey.convert("LA"), "PNG"),
        "png_palette": encode(face.convert("P"), "PNG"),
        "png_palette_transparent": encode(face.convert("P"), "PNG", transparency=0),
        "png_1bit": encode(face.convert("1"), "PNG"),
        "png_16bit": encode(grey.convert("I;16"), "PNG"),
        "png_16bit_rgb_as_int": encode(grey.convert("I;16B"), "PNG"),
        "apng_animated": encode(face, "PNG", save_all=True, append_images=[grey.convert("RGB"), face.rotate(90)]),
        "gif": encode(face.convert("P"), "GIF"),
        "gif_animated": encode(face.convert("P"), "GIF", save_all=True,
                               append_images=[grey.convert("P"), face.rotate(45).convert("P")], loop=0),
        "webp": encode(face, "WEBP"),
        "webp_lossless_rgba": encode(face.convert("RGBA"), "WEBP", lossless=True),
        "webp_animated": encode(face, "WEBP", save_all=True, append_images=[face.rotate(90)]),
        "bmp_rgb": encode(face, "BMP"),
        "bmp_1bit": encode(face.convert("1"), "BMP"),
        "bmp_palette": encode(face.convert("P"), "BMP"),
        "tiff_rgb": encode(face, "TIFF"),
        "tiff_cmyk": encode(face.convert("CMYK"), "TIFF"),
        "tiff_16bit": encode(grey.convert("I;16"), "TIFF"),
        "tiff_float": encode(grey.convert("F"), "TIFF"),
        "tiff_1bit": encode(face.convert("1"), "TIFF"),
        "tiff_lzw": encode(face, "TIFF", compression="tiff_lzw"),
        "tiff_multipage": encode(face, "TIFF", save_all=True, append_images=[grey.convert("RGB")]),
        "tiny_1x1": encode(Image.new("RGB", (1, 1)), "PNG"),
        "tiny_2x1": encode(Image.new("RGB", (2, 1)), "JPEG"),
        "thin_4000x1": encode(Image.new("RGB", (4000, 1), (120, 120, 120)), "PNG"),
        "thin_1x2561": encode(Image.new("RGB", (1, 2561), (120, 120, 120)), "JPEG"),
        "thin_65535x1": encode(Image.new("L", (65535, 1), 90), "PNG"),
        "thin_3x9000": encode(Image.new("RGB", (3, 9000), (10, 200, 10)), "BMP"),
    }
    jpeg = files["jpeg_rgb"]
    files.update({
        "png_declares_65535x65535": png_declaring(65535, 65535),
        "png_declares_30000x30000_16bit": png_declaring(30000, 30000, depth=16),
        "png_declares_0x0": png_declaring(0, 0),
        "png_declares_bad_depth": png_declaring(64, 64, depth=7),
        "jpeg_declares_65500x65500": jpeg_declaring(jpeg, 65500, 65500),
        "jpeg_declares_0_high": jpeg_declaring(jpeg, 64, 0),
        "gif_declares_65535x65535": files["gif"][:6] + struct.pack("<HH", 65535, 65535) + files["gif"][10:],
        "bmp_declares_huge": files["bmp_rgb"][:18] + struct.pack("<ii", 60000, 60000) + files["bmp_rgb"][26:],
        "bmp_declares_negative": files["bmp_rgb"][:18] + struct.pack("<ii", -64, -2**31) + files["bmp_rgb"][26:],
        "jpeg_corrupt_exif": _with_corrupt_exif(jpeg),
    })
    return files


def not_images() -> dict[str, bytes]:
    face = identity_image(4, 0, 32)
    return {
        "empty": b"",
        "text": b"just text, not a picture\n" * 4,
        "html": b"<!doctype html><script>alert(1)</script>",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n",
        "pdf": encode(face, "PDF"),
        "ico": encode(face, "ICO"),
        "ppm": encode(face, "PPM"),
        "tga": encode(face, "TGA"),
        "pcx": encode(face, "PCX"),
        "zip": b"PK\x03\x04" + bytes(40),
        "jpeg_magic_only": b"\xff\xd8\xff",
        "png_magic_only": b"\x89PNG\r\n\x1a\n",
        "gif_magic_only": b"GIF89a",
        "bmp_magic_only": b"BM",
        "tiff_magic_only": b"II*\x00",
        "riff_not_webp": b"RIFF\x10\x00\x00\x00WAVEfmt ",
        "zeros": bytes(4096),
        "random": random.Random(SEED).randbytes(3000),
    }


def mutants(name: str, data: bytes, rng: random.Random, count: int) -> dict[str, bytes]:
    """Truncations, bit flips, zeroed runs and spliced garbage of one good file."""
    out = {}
    for i in range(count):
        kind = rng.choice(["truncate", "flip", "flip", "zero", "splice"])
        blob = bytearray(data)
        if kind == "truncate":
            blob = blob[:rng.randrange(1, len(blob))]
        elif kind == "flip":
            for _ in range(rng.choice([1, 2, 8, 64])):
                at = rng.randrange(min(len(blob), 8), len(blob)) if len(blob) > 8 else 0
                blob[at] ^= 1 << rng.randrange(8)
        elif kind == "zero":
            start = rng.randrange(len(blob))
            blob[start:start + rng.randrange(1, 200)] = bytes(min(len(blob) - start, 200))
        else:
            at = rng.randrange(len(blob))
            blob[at:at] = rng.randbytes(rng.randrange(1, 300))
        out[f"{name}_{kind}_{i}"] = bytes(blob)
    return out


def generated_files(seed: int = SEED) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {**base_images(rng), **not_images()}
    for name, data in list(base_images(rng).items())[:29]:      # the well-formed ones, not the thin
        files.update(mutants(name, data, rng, count=10))
    return files


ODD_NAMES = [os.fsdecode(name) for name in (
    b"caf\xe9.jpg", b"\xff\xfe.png", b"na\xefve folder", b"line\nbreak.jpg", b"tab\there.png", b"-rf.jpg",
    b"100% _real_.jpg", b"quote'\"s.jpg", b"back\\slash.jpg", b"UPPER.JPG", b"double.png.jpg",
    b"\xe5\x86\x99\xe7\x9c\x9f.jpg", b"e\xcc\x81.jpg", b"x" * 240 + b".jpg", b" leading space.jpg",
)]


def write_gallery(root: Path) -> dict[Path, str]:
    """The generated files under root/<identity>/ with odd names among them, plus special
    files; returns every path that the indexer must record, with what it is."""
    files = generated_files()
    names = sorted(files)
    expected: dict[Path, str] = {}
    identities = ["alpha", os.fsdecode(b"b\xe9ta"), "gamma delta", "100%_"]
    for i, name in enumerate(names):
        folder = root / identities[i % len(identities)]
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".jpg" if i % 3 else (".png", ".gif", ".webp", ".bmp", ".tiff")[i % 5]
        path = folder / f"{name}{suffix}"
        path.write_bytes(files[name])
        expected[path] = name
    odd = root / "odd names"
    odd.mkdir()
    face = files["jpeg_rgb"]
    for name in ODD_NAMES:
        if name.endswith(".jpg") or name.endswith(".JPG") or name.endswith(".png"):
            (odd / name).write_bytes(face)
            expected[odd / name] = "odd name"
        else:
            (odd / name).mkdir()
            (odd / name / "inside.jpg").write_bytes(face)
            expected[odd / name / "inside.jpg"] = "odd folder name"
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo.jpg")
    os.symlink(special / "loop_b.jpg", special / "loop_a.jpg")
    os.symlink(special / "loop_a.jpg", special / "loop_b.jpg")
    os.symlink(root / "nowhere.jpg", special / "dangling.jpg")
    (special / "folder.jpg").mkdir()
    (special / "folder.jpg" / "real.jpg").write_bytes(face)
    for path, what in [(special / "fifo.jpg", "fifo"), (special / "loop_a.jpg", "loop"),
                       (special / "loop_b.jpg", "loop"), (special / "dangling.jpg", "dangling"),
                       (special / "folder.jpg" / "real.jpg", "in a folder named .jpg")]:
        expected[path] = what
    (root / "alpha" / "Al_Gore_0001.jpg").write_bytes(GOOD_PHOTO.read_bytes())
    expected[root / "alpha" / "Al_Gore_0001.jpg"] = "good"
    return expected


# --- the shared index -----------------------------------------------------------------------

def cli(main, *args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_no_crash(result, case: str) -> None:
    """A command ended in an answer: exit 0, or 1 with a one-line error, or 2 with click's
    usage error; no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{case}: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    assert result.exit_code in (0, 1, 2), f"{case}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, f"{case}: {result.output}"
    if result.exit_code == 1:
        assert result.output.startswith("Error: "), f"{case}: {result.output}"
    if result.exit_code == 2:
        assert result.output.startswith("Usage: ") and "Error: " in result.output, f"{case}: {result.output}"


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> dict:
    """`indexer build --detector auto` of the generated gallery, then `indexer add` of a batch."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = root / "model.pt"
    save_checkpoint(model, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", 0.03)
    gallery = root / "gallery"
    expected = write_gallery(gallery)
    index = root / "index"
    common = ["--index", index, "--workers", 0, "--no-progress", "--json"]
    started = time.perf_counter()
    built = cli(indexer_cli, "build", gallery, "--model", model, "--detector", "auto", *common)
    assert_no_crash(built, "indexer build")
    assert built.exit_code == 0, built.output
    report = json.loads(built.output.splitlines()[-1])

    extra = root / "added"
    extra.mkdir()
    rng = random.Random(SEED + 1)
    files = generated_files(SEED + 1)
    added_paths = []
    for name in rng.sample(sorted(files), 60):
        path = extra / (os.fsdecode(b"add \xe9 ") + name + ".jpg")
        path.write_bytes(files[name])
        added_paths.append(path)
    os.mkfifo(extra / "fifo.png")
    added_paths += [extra / "fifo.png", extra / "missing.jpg", gallery / "special" / "loop_a.jpg"]
    added = cli(indexer_cli, "add", *added_paths, *common)
    assert_no_crash(added, "indexer add")
    assert added.exit_code == 0, added.output
    return {"root": root, "gallery": gallery, "index": index, "model": model, "expected": expected,
            "report": report, "added": json.loads(added.output.splitlines()[-1]), "added_paths": added_paths,
            "files": generated_files(), "build_seconds": time.perf_counter() - started}


def database_rows(index: Path) -> dict[bytes, list[tuple[str, str | None]]]:
    rows: dict[bytes, list] = {}
    with sqlite3.connect(index / DATABASE_FILE) as db:
        for path, status, reason in db.execute("SELECT path, status, skip_reason FROM images"):
            rows.setdefault(path, []).append((status, reason))
    return rows


# --- the indexer ----------------------------------------------------------------------------

def test_build_and_add_record_every_file_indexed_or_skipped_with_its_reason(fuzz):
    rows = database_rows(fuzz["index"])
    paths = list(fuzz["expected"]) + [p for p in fuzz["added_paths"] if os.path.lexists(p)]
    for path in paths:
        found = rows.get(os.fsencode(path))
        assert found, f"{path} ({fuzz['expected'].get(path, 'added')}) is not in the database"
        for status, reason in found:
            assert status == "indexed" or (status == "skipped" and reason), (path, status, reason)
    assert len(paths) >= 400
    report = fuzz["report"]
    assert report["files"] == len(fuzz["expected"]) and report["images_added"] >= 1
    reasons = " | ".join(report["skip_reasons"])
    for reason in ("not an image", "corrupt or truncated", "too large", "not a regular file (a FIFO)",
                   "symlink loop", "file not found", "empty file", "no face found"):
        assert reason in reasons, f"no file was skipped for {reason!r}: {reasons}"
    assert fuzz["added"]["skipped"] >= 1 and "file not found" in " | ".join(fuzz["added"]["skip_reasons"])
    print(f"\nfuzz gallery: {report['files']} files built in {fuzz['build_seconds']:.1f} s; "
          f"{report['images_added']} indexed, {report['skipped']} skipped")


def test_rebuild_changes_nothing_and_every_skip_is_in_the_stats(fuzz):
    again = cli(indexer_cli, "build", fuzz["gallery"], "--index", fuzz["index"], "--workers", 0,
                "--no-progress", "--json")
    assert_no_crash(again, "indexer build (again)")
    report = json.loads(again.output.splitlines()[-1])
    assert (report["images_added"], report["skipped"], report["removed"]) == (0, 0, 0)
    stats = cli(indexer_cli, "stats", "--index", fuzz["index"], "--json")
    assert_no_crash(stats, "indexer stats")
    text = cli(indexer_cli, "stats", "--index", fuzz["index"])
    assert_no_crash(text, "indexer stats (text)")
    with sqlite3.connect(fuzz["index"] / DATABASE_FILE) as db:
        skipped = db.execute("SELECT count(*) FROM images WHERE status = 'skipped'").fetchone()[0]
    assert json.loads(stats.output)["skipped"] == skipped > 100


# --- the command line -----------------------------------------------------------------------

def test_search_query_answers_every_file(fuzz):
    """Every generated file through `search query` and `search identify` (CliRunner, many
    photos per call): one JSON line per photo, a result or an error naming the file; a bad
    photo never stops the rest. A file that decodes costs a search, so of those a seeded
    sample of 16 is searched."""
    index = fuzz["index"]
    files = sorted(p for p in fuzz["expected"] if not p.is_symlink() and p.is_file()) + fuzz["added_paths"]
    decodable = [p for p in files if _decodes(p)]
    chosen = [p for p in files if p not in decodable] + random.Random(SEED).sample(decodable, 16)
    batches = {"identify": chosen[::4], "query": [p for number, p in enumerate(chosen) if number % 4]}
    for command, paths in batches.items():
        result = cli(search_cli, command, *paths, "--index", index, "-k", 2, "--json")
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert result.exit_code == 1 and "Traceback" not in result.output   # some photos are bad
        lines = [json.loads(line) for line in result.output.splitlines()]
        assert len(lines) == len(paths)
        for path, line in zip(paths, lines):
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            assert line["photo"] == shown
            if "error" in line:
                assert line["error"].startswith(shown + ": "), line
            else:
                assert "faces" in line and path in decodable, line
    print(f"\nsearch query: {len(chosen)} CLI cases")
    assert len(chosen) >= 200


def _decodes(path: Path) -> bool:
    try:
        load_image(path)
    except ImageError:
        return False
    return True


@pytest.mark.parametrize("k", ["+3", "1_0", "\uff13", "\u0663", " 3", "0", "-1", "", "3.0", "9" * 40])
def test_search_k_is_plain_digits(fuzz, k):
    result = cli(search_cli, "query", GOOD_PHOTO, "--index", fuzz["index"], "-k", k)
    assert_no_crash(result, f"-k {k!r}")
    assert result.exit_code == 2 and "Invalid value for '-k'" in result.output


def repo_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **extra}


def run_search(*args, timeout=60):
    return subprocess.run([sys.executable, "-c", "from search.cli import main; main()", *map(str, args)],
                          capture_output=True, timeout=timeout, env=repo_env(), cwd=REPO)


def test_real_processes_do_not_hang_or_print_tracebacks(fuzz, tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    thin = next(fuzz["gallery"].rglob("thin_65535x1.*"))
    odd = fuzz["gallery"] / "odd names" / os.fsdecode(b"caf\xe9.jpg")
    for arguments, expected in [(("query", fifo, "--index", fuzz["index"]), 1),
                                (("query", thin, "--index", fuzz["index"]), 0),
                                (("verify", odd, fifo, "--model", fuzz["model"]), 2)]:
        result = run_search(*arguments)
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        assert result.returncode == expected, output
        assert "Traceback" not in output and "site-packages" not in output, output
        if expected != 0:
            assert result.stderr.decode() == f"Error: {fifo}: not a regular file (a FIFO)\n"


# --- the web app ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(fuzz):
    app = create_app({"INDEX": str(fuzz["index"]), "MODEL": str(fuzz["model"]), "DETECTOR": "auto",
                      "MAX_UPLOAD_MB": 1, "TESTING": True})
    return app.test_client()


def assert_answer(response, case: str) -> None:
    """A 2xx, 3xx or 4xx answer, JSON under /api/, with the security headers."""
    assert response.status_code < 500, f"{case}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    text = response.get_data(as_text=True) if response.mimetype != "image/jpeg" else ""
    assert "Traceback" not in text, case
    assert response.headers["X-Content-Type-Options"] == "nosniff", case


def post(client, form: dict, content_type="multipart/form-data", **kwargs):
    return client.post("/api/search", data=form, content_type=content_type, **kwargs)


def test_every_generated_file_uploaded(client, fuzz):
    statuses = {}
    for name, data in sorted(fuzz["files"].items()):
        response = post(client, {"image": (io.BytesIO(data), f"{name}.jpg", "image/jpeg"), "k": "2"})
        assert_answer(response, f"upload {name}")
        body = response.get_json()
        assert body is not None, name
        assert ("faces" in body) if response.status_code == 200 else isinstance(body.get("error"), str), name
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert len(fuzz["files"]) >= 300 and {200, 400, 415} <= set(statuses)
    print(f"\nweb uploads: {len(fuzz['files'])} files, statuses {dict(sorted(statuses.items()))}")


def odd_requests(photo: bytes) -> list[tuple[str, dict]]:
    """(case, request arguments for the test client's open()): odd forms, methods, paths, headers."""
    rng = random.Random(SEED)
    image = lambda name="p.jpg", data=photo, kind="image/jpeg": (io.BytesIO(data), name, kind)  # noqa: E731
    cases = []
    for k in ["+3", "1_0", "\uff13", "0", "-1", "51", "3.5", "1e1", "0x3", " 3", "3\x00", "", "k", "9" * 40,
              "\u0663", "²", "3,4"]:
        cases.append((f"k={k!r}", {"method": "POST", "path": "/api/search",
                                   "data": {"image": image(), "k": k}, "content_type": "multipart/form-data"}))
    forms = {
        "no fields": {},
        "k only": {"k": "3"},
        "image as text": {"image": "not a file"},
        "two images": {"image": [image(), image("b.jpg")]},
        "empty file": {"image": image(data=b"")},
        "odd file name": {"image": image(name="../../etc/passwd\x00.jpg")},
        "odd content type": {"image": image(kind="application/x-evil; charset=\x01")},
        "many fields": {**{f"f{i}": "x" for i in range(1200)}, "image": image()},
        "big text field": {"k": "3" * 600_000, "image": image()},
        "over the size limit": {"image": image(data=b"\xff\xd8\xff" + bytes(1024 * 1024 + 10))},
    }
    for case, form in forms.items():
        cases.append((case, {"method": "POST", "path": "/api/search", "data": form,
                             "content_type": "multipart/form-data"}))
    bodies = {
        "urlencoded": ("application/x-www-form-urlencoded", b"image=abc&k=3"),
        "json": ("application/json", b'{"image": "abc"}'),
        "multipart without boundary": ("multipart/form-data", b"--x\r\n\r\n"),
        "multipart garbage": ("multipart/form-data; boundary=xyz", rng.randbytes(2000)),
        "multipart cut short": ("multipart/form-data; boundary=xyz",
                                b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
                                + photo[:500]),
        "multipart huge header": ("multipart/form-data; boundary=xyz",
                                  b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\""
                                  + b"a" * 100_000 + b"\"\r\n\r\nxx\r\n--xyz--\r\n"),
        "non-utf8 file name": ("multipart/form-data; boundary=xyz",
                               b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="caf\xe9.jpg"\r\n'
                               b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--xyz--\r\n"),
        "no content type": ("", photo),
        "binary body": ("image/jpeg", photo),
    }
    for case, (content_type, body) in bodies.items():
        cases.append((case, {"method": "POST", "path": "/api/search", "data": body,
                             "content_type": content_type}))
    # A good multipart request, mutated: its framing, part headers and field names damaged.
    boundary = b"fuzzboundary"
    good = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--' + boundary
            + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg'
            b"\r\n\r\n" + photo[:3000] + b"\r\n--" + boundary + b"--\r\n")
    for i, (name, body) in enumerate(mutants("multipart", good[:400], rng, count=60).items()):
        cases.append((name, {"method": "POST", "path": "/api/search", "data": body + good[400:],
                             "content_type": "multipart/form-data; boundary=fuzzboundary"}))
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"):
        for path in ("/", "/api/search", "/api/health", "/status", "/thumb/1", "/static/search.js"):
            cases.append((f"{method} {path}", {"method": method, "path": path}))
    for path in ["/thumb/9223372036854775808", "/thumb/9223372036854775807", "/thumb/" + "9" * 400,
                 "/thumb/-1", "/thumb/0", "/thumb/1.5", "/thumb/%00", "/thumb/..%2F..%2Fetc%2Fpasswd",
                 "/thumb/１", "/static/..%2F..%2Fsetup.cfg", "/static/../../setup.cfg", "/%ff%fe", "/api/",
                 "/api/search/", "/" + "a" * 5000, "/status?x=%ff", "/?" + "a=b&" * 2000, "/api/health?k=%e9&image=%ff"]:
        cases.append((f"GET {path[:60]}", {"method": "GET", "path": path}))
    for host in ["evil.example", "localhost:99999", "", "a b", "localhost\r\nX: y", "[::1", "127.0.0.1.nip.io",
                 "LOCALHOST.", "xn--e1afmkfd", "localhost:0"]:
        cases.append((f"Host {host!r}", {"method": "GET", "path": "/api/health", "headers": {"Host": host}}))
    for header, value in [("Authorization", "Bearer x"), ("Content-Length", "-1"), ("Content-Length", "abc"),
                          ("Transfer-Encoding", "chunked"), ("Accept", "\x00"), ("Cookie", "a=" + "b" * 8000),
                          ("If-None-Match", '"' + "x" * 1000), ("Range", "bytes=0-0,5-1")]:
        cases.append((f"{header}: {value[:20]!r}", {"method": "GET", "path": "/thumb/1", "headers": {header: value}}))
    return cases


def test_odd_requests(client, fuzz):
    photo = GOOD_PHOTO.read_bytes()
    cases = odd_requests(photo)
    for case, arguments in cases:
        try:
            response = client.open(**arguments)
        except ValueError as error:
            # The test client itself refuses what no HTTP client can send (a CR in a header).
            assert "newline" in str(error) or "header" in str(error).lower(), f"{case}: {error}"
            continue
        assert_answer(response, case)
        if arguments["path"].startswith("/api/") and arguments["method"] != "HEAD":
            assert response.is_json, case
    assert len(cases) >= 150
    print(f"\nodd requests: {len(cases)}")


def test_thumbnails_of_every_indexed_file(client, fuzz):
    with sqlite3.connect(fuzz["index"] / DATABASE_FILE) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM images WHERE status = 'indexed'")]
    assert len(ids) >= 50
    for image_id in ids:
        response = client.get(f"/thumb/{image_id}")
        assert_answer(response, f"thumbnail {image_id}")
        assert response.status_code == 200 and response.mimetype == "image/jpeg"


def test_after_all_that_health_and_a_good_query_answer(client, fuzz):
    assert client.get("/api/health").status_code == 200
    response = post(client, {"image": (io.BytesIO(GOOD_PHOTO.read_bytes()), "a.jpg", "image/jpeg"), "k": "1"})
    assert response.status_code == 200
    [face] = response.get_json()["faces"]
    assert face["matches"][0]["path"] == "alpha/Al_Gore_0001.jpg" and face["matches"][0]["distance"] < 0.01


# --- a real server ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(fuzz, tmp_path_factory):
    """`search serve` on the fuzz index, with an API key."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = repo_env(FACESEARCH_API_KEY="fuzz-key", FACESEARCH_DETECTOR="auto", FACESEARCH_MAX_UPLOAD_MB="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", "from search.cli import main; main()", "serve",
                                    "--index", str(fuzz["index"]), "--port", str(port), "--threads", "2"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if request(port, "GET", "/api/health", auth=True)[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
        yield {"port": port, "log": log_path}
    finally:
        process.terminate()
        process.wait(timeout=10)


def request(port, method, path, body=None, headers=None, auth=False):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {**({"Authorization": "Bearer fuzz-key"} if auth else {}), **(headers or {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def multipart(data: bytes, filename: str = "photo.jpg", k: str = "2") -> tuple[bytes, dict]:
    boundary = "fuzzboundary1234"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def raw(port, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(payload)
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_real_server_answers_bad_input_and_keeps_serving(server, fuzz):
    port = server["port"]
    files = fuzz["files"]
    cases = 0
    rng = random.Random(SEED)
    for name in rng.sample(sorted(files), 40) + [n for n in files if n.startswith(("thin", "eps", "png_declares"))]:
        body, headers = multipart(files[name])
        status, answer_headers, content = request(port, "POST", "/api/search", body, headers, auth=True)
        assert status < 500, (name, status, content[:300])
        assert "Server" not in answer_headers and answer_headers["X-Frame-Options"] == "DENY", name
        json.loads(content)
        cases += 1
    for method, path, auth, host, expected in [
        ("GET", "/api/health", False, None, 401), ("GET", "/thumb/1", False, None, 401),
        ("GET", "/api/health", True, "evil.example", 400), ("OPTIONS", "/api/search", True, None, 405),
        ("GET", "/thumb/9223372036854775808", True, None, 404), ("GET", "/", False, None, 200),
    ]:
        status, _, content = request(port, method, path, auth=auth, headers={"Host": host} if host else None)
        assert status == expected, (method, path, status, content[:200])
        cases += 1
    for payload in [b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
                    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc",
                    b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
                    b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n", b"\r\n\r\n"]:
        answer = raw(port, payload)
        assert not answer.startswith(b"HTTP/1.1 5"), (payload[:60], answer[:200])
        cases += 1
    assert request(port, "GET", "/api/health", auth=True)[0] == 200
    body, headers = multipart(GOOD_PHOTO.read_bytes(), k="1")
    status, _, content = request(port, "POST", "/api/search", body, headers, auth=True)
    assert status == 200 and json.loads(content)["faces"][0]["matches"][0]["path"] == "alpha/Al_Gore_0001.jpg"
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log and "site-packages" not in log, log[-2000:]
    print(f"\nreal server: {cases} cases")


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _with_corrupt_exif(jpeg: bytes) -> bytes:
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(10)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
