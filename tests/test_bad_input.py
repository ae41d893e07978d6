"""Issue 13: each failure a round of malformed input found, pinned by a test of its own.

The broad, generated suite is tests/test_fuzz_input.py; these are the named cases.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import click.testing
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from faces.checkpoint import save_checkpoint
from faces.detectors import get_detector
from faces.errors import readable
from faces.imaging import ImageError, Preprocess, image_format, load_image
from faces.models import EmbeddingNet
from indexer.cli import main as indexer_cli
from indexer.config import DATABASE_FILE
from indexer.db import create_sqlite_engine, downgrade
from indexer.lock import lock_for_writing
from search.cli import main as search_cli
from web import create_app

from conftest import REPO, identity_image, write_identity_folders

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


# --- the web app ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def web_index(tmp_path_factory, small_model) -> dict:
    root = tmp_path_factory.mktemp("web")
    gallery = write_identity_folders(root / "gallery", identities=3, per_identity=2)
    index = root / "index"
    cli(indexer_cli, "build", gallery, "--index", index, "--model", small_model, "--detector", "none",
        "--workers", 0, "--no-progress")
    return {"INDEX": str(index), "MODEL": str(small_model), "DETECTOR": "none", "gallery": gallery}


def make_client(web_index, **config):
    settings = {key: web_index[key] for key in ("INDEX", "MODEL", "DETECTOR")}
    return create_app({**settings, "TESTING": True, "MAX_UPLOAD_MB": 1, **config}).test_client()


@pytest.fixture(scope="module")
def client(web_index):
    return make_client(web_index)


def post_photo(client, data: bytes, headers=None, **form):
    form["image"] = (io.BytesIO(data), "photo.jpg", "image/jpeg")
    return client.post("/api/search", data=form, content_type="multipart/form-data", headers=headers or {})


def gallery_jpeg(web_index) -> bytes:
    return (web_index["gallery"] / "person_01" / "person_01_0002.jpg").read_bytes()


def test_api_paths_are_relative_to_the_gallery(client, web_index):
    body = post_photo(client, gallery_jpeg(web_index), k="3").get_json()
    paths = [match["path"] for match in body["faces"][0]["matches"]]
    assert paths[0] == "person_01/person_01_0002.jpg"
    assert not any(str(web_index["gallery"]) in path or path.startswith("/") for path in paths)


@pytest.mark.parametrize("image_id", ["9223372036854775808", "9223372036854775807", "99999999999999999999999", "0"])
def test_thumbnail_ids_beyond_sqlite_integers_are_404(client, image_id):
    response = client.get(f"/thumb/{image_id}")
    assert response.status_code == 404 and "no gallery image" in response.get_data(as_text=True)


def test_options_is_a_json_405(client):
    response = client.options("/api/search")
    assert response.status_code == 405 and "error" in response.get_json()
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("k", ["+3", "1_0", "\uff13", " 3", "3 ", "03a", "0x3", "1e1", "٣"])
def test_k_is_plain_ascii_digits(client, web_index, k):
    response = post_photo(client, gallery_jpeg(web_index), k=k)
    assert response.status_code == 400 and "k must be" in response.get_json()["error"]


def test_a_form_of_too_many_parts_is_told_so(client, web_index):
    fields = {f"field{i}": "x" for i in range(1200)}
    response = post_photo(client, gallery_jpeg(web_index), **fields)
    assert response.status_code == 400
    assert "form too large: at most 20 fields" in response.get_json()["error"]


def test_503_names_no_server_path(tmp_path):
    client = create_app({"INDEX": str(tmp_path / "no-index"), "TESTING": True}).test_client()
    for response in (client.get("/api/health"), client.get("/status")):
        assert response.status_code == 503 and str(tmp_path) not in response.get_data(as_text=True)


@pytest.mark.parametrize("host, status", [
    ("localhost", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("LOCALHOST", 200),
    ("evil.example", 400), ("evil.example:8000", 400), ("127.0.0.1.evil.example", 400), ("", 400),
])
def test_only_trusted_hosts_are_answered(client, host, status):
    response = client.get("/api/health", headers={"Host": host})
    assert response.status_code == status
    if status == 400:
        assert "not trusted" in response.get_json()["error"]


def test_allowed_hosts_come_from_the_environment(web_index, monkeypatch):
    monkeypatch.setenv("FACESEARCH_ALLOWED_HOSTS", "faces.example.org, .lan")
    client = make_client(web_index, BIND_HOST="0.0.0.0")
    assert client.get("/api/health", headers={"Host": "faces.example.org"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "box.lan:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "localhost"}).status_code == 400
    monkeypatch.setenv("FACESEARCH_ALLOWED_HOSTS", "*")
    assert make_client(web_index).get("/api/health", headers={"Host": "any.where"}).status_code == 200


def test_the_api_key_is_required_when_set(web_index, monkeypatch):
    monkeypatch.setenv("FACESEARCH_API_KEY", "s3cret-key")
    client = make_client(web_index)
    photo = gallery_jpeg(web_index)
    for response in (client.get("/api/health"), client.get("/status"), client.get("/thumb/1"),
                     post_photo(client, photo), post_photo(client, photo, {"Authorization": "Bearer wrong"}),
                     post_photo(client, photo, {"Authorization": "Basic s3cret-key"})):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert client.get("/").status_code == 200                      # the page shell asks for the key
    good = {"Authorization": "Bearer s3cret-key"}
    assert client.get("/api/health", headers=good).status_code == 200
    assert post_photo(client, photo, good).status_code == 200
    assert client.get("/thumb/1", headers=good).status_code == 200


@pytest.mark.parametrize("path", ["/", "/api/health", "/api/nothing", "/thumb/1", "/status", "/static/search.js"])
def test_every_answer_has_the_security_headers(client, path):
    headers = client.get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in headers["Content-Security-Policy"]


# --- the indexer's lock -----------------------------------------------------------------

def test_a_busy_index_is_refused_before_torch_loads(tmp_path):
    index = tmp_path / "index"
    code = ("import sys\nfrom indexer.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
            "    print('exit', exit.code, 'torch loaded:', 'torch' in sys.modules)")
    lock = lock_for_writing(index, create=True)
    try:
        result = subprocess.run([sys.executable, "-c", code, "build", str(tmp_path), "--index", str(index)],
                                capture_output=True, text=True, timeout=120, env=repo_env())
    finally:
        lock.release()
    assert "another indexer process" in result.stderr
    assert result.stdout.strip() == "exit 1 torch loaded: False"


def repo_env() -> dict:
    """The environment for a subprocess that must run this checkout's code."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_downgrading_below_0003_drops_only_names_text_cannot_hold_and_a_build_restores_them(tmp_path, small_model):
    gallery = write_identity_folders(tmp_path / "gallery", identities=1, per_identity=2)
    cafe = gallery / "person_00" / os.fsdecode(b"caf\xe9.jpg")
    identity_image(7, 0).save(cafe, "JPEG")
    index = tmp_path / "index"
    common = ["--index", index, "--workers", 0, "--no-progress", "--json"]
    cli(indexer_cli, "build", gallery, "--model", small_model, "--detector", "none", *common)
    engine = create_sqlite_engine(index / DATABASE_FILE)
    downgrade(engine, "0002")
    engine.dispose()
    with sqlite3.connect(index / DATABASE_FILE) as db:
        assert sorted(row[0] for row in db.execute("SELECT path FROM images")) == sorted(
            str(p) for p in (gallery / "person_00").iterdir() if p != cafe)
    rebuilt = json.loads(cli(indexer_cli, "build", gallery, *common).output.splitlines()[-1])
    assert (rebuilt["images_added"], rebuilt["unchanged"]) == (1, 2)
