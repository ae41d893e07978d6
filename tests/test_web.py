"""The web app and JSON API, on a real index of LFW faces built in the test.

Two kinds of test share one small index: Flask test-client tests of the API, its errors and
the pages; and real-browser tests that start `search serve` on a loopback port and drive it
with Debian's headless Chromium through Playwright.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from indexer.cli import main as indexer_cli
from faces.checkpoint import save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet
from web import create_app

from conftest import GROUP_PHOTO, LFW, REPO
from test_cli_startup import probe

# People whose LFW photos dlib's detector finds a face in; two photos of each are indexed.
GALLERY_PEOPLE = ("Aaron_Peirsol", "Abel_Pacheco", "Adam_Sandler", "Ahmed_Chalabi", "Ai_Sugiyama", "Al_Gore")
GALLERY_PHOTO = LFW / "Al_Gore" / "Al_Gore_0001.jpg"
STRANGER_PHOTO = LFW / "Al_Sharpton" / "Al_Sharpton_0001.jpg"   # not in the gallery
# The model is untrained, so only a photo's own gallery copy is near enough (distance ~0);
# other faces, even the same person's, are at 0.08 or more with this seed.
THRESHOLD = 0.03
API_KEY = "browser-test-key"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW images not found at {LFW}")


@pytest.fixture(scope="module")
def web_index(tmp_path_factory) -> dict:
    """An index of 12 LFW photos (6 people) built by `indexer build` with dlib face detection."""
    root = tmp_path_factory.mktemp("web")
    gallery = root / "gallery"
    for person in GALLERY_PEOPLE:
        (gallery / person).mkdir(parents=True)
        for photo in sorted((LFW / person).iterdir())[:2]:
            shutil.copy(photo, gallery / person / photo.name)
    model = root / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(model, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", THRESHOLD)
    index = root / "index"
    result = CliRunner().invoke(indexer_cli, ["build", str(gallery), "--index", str(index), "--model", str(model),
                                              "--detector", "auto", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    return {"INDEX": str(index), "MODEL": str(model), "DETECTOR": "auto"}


@pytest.fixture(scope="module")
def app(web_index):
    return create_app({**web_index, "MAX_UPLOAD_MB": 1, "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def upload(client, data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg", **form):
    form["image"] = (io.BytesIO(data), filename, content_type)
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --- JSON API ---------------------------------------------------------------------------

def test_health_reports_the_gallery(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["gallery"]["images"] == 12 and body["gallery"]["identities"] == 6
    assert body["gallery"]["index_type"] == "flat"


def test_search_finds_a_gallery_photo_first(client):
    response = upload(client, GALLERY_PHOTO.read_bytes())
    assert response.status_code == 200
    faces = response.get_json()["faces"]
    assert len(faces) == 1
    face = faces[0]
    assert len(face["box"]) == 4
    assert len(face["matches"]) == 10
    best = face["matches"][0]
    assert set(best) >= {"id", "path", "identity", "distance", "similarity", "match"}
    assert best["identity"] == "Al_Gore" and best["match"] is True
    assert best["distance"] < 0.01
    assert [m["match"] for m in face["matches"][1:]] == [False] * 9


def test_search_says_which_rule_decides_match(client):
    strict = upload(client, GALLERY_PHOTO.read_bytes()).get_json()
    assert strict["threshold"] == pytest.approx(THRESHOLD)
    # an uncalibrated model: the per-pair strict point, and how to recalibrate
    assert strict["decision"]["operating_point"] == {"name": "strict", "tar": None, "far": None}
    assert strict["decision"]["rule"] == "per-pair" and "trainer calibrate" in strict["decision"]["message"]
    loose = upload(client, GALLERY_PHOTO.read_bytes(), threshold="2").get_json()
    assert loose["decision"]["operating_point"]["name"] == "custom"
    assert all(m["match"] for m in loose["faces"][0]["matches"])
    bad = upload(client, GALLERY_PHOTO.read_bytes(), threshold="loose")
    assert bad.status_code == 400 and "expected strict or balanced" in bad.get_json()["error"]
    for fpir in ("0", "1", "x"):
        refused = upload(client, GALLERY_PHOTO.read_bytes(), fpir=fpir)
        assert refused.status_code == 400 and "strictly between 0 and 1" in refused.get_json()["error"]


def test_search_of_a_stranger_finds_no_match(client):
    face = upload(client, STRANGER_PHOTO.read_bytes()).get_json()["faces"][0]
    assert face["matches"] and not any(m["match"] for m in face["matches"])


def test_group_photo_gives_six_faces_with_boxes(client):
    faces = upload(client, GROUP_PHOTO.read_bytes(), k="2").get_json()["faces"]
    assert len(faces) == 6
    assert all(len(face["box"]) == 4 and len(face["matches"]) == 2 for face in faces)


def test_photo_without_a_face_says_so(client):
    response = upload(client, png_bytes(Image.new("RGB", (200, 200), (120, 160, 200))), "sky.png", "image/png")
    assert response.status_code == 200
    body = response.get_json()
    assert body["faces"] == [] and "no face" in body["message"]


def test_k_sets_matches_per_face(client):
    face = upload(client, GALLERY_PHOTO.read_bytes(), k="3").get_json()["faces"][0]
    assert len(face["matches"]) == 3


@pytest.mark.parametrize("k", ["0", "-1", "51", "three", "2.5"])
def test_bad_k_is_400(client, k):
    response = upload(client, GALLERY_PHOTO.read_bytes(), k=k)
    assert response.status_code == 400
    assert "k must be" in response.get_json()["error"]


def test_type_is_judged_by_content_not_by_name(client):
    text = upload(client, b"just some text, not a photo\n" * 20, "photo.jpg", "image/jpeg")
    assert text.status_code == 415
    assert "not an image" in text.get_json()["error"]
    disguised = png_bytes(Image.open(GALLERY_PHOTO))
    response = upload(client, disguised, "notes.txt", "text/plain")
    assert response.status_code == 200
    assert response.get_json()["faces"][0]["matches"][0]["identity"] == "Al_Gore"


def bomb_png() -> bytes:
    """48 megapixels of one-bit black: a few kilobytes that would decode to far too much."""
    return png_bytes(Image.new("1", (8000, 6000)))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (GALLERY_PHOTO.read_bytes()[:300], "corrupt or truncated"),
    (bomb_png(), "too large"),
], ids=["empty", "truncated", "pixel-bomb"])
def test_unusable_images_are_400(client, data, reason):
    response = upload(client, data)
    assert response.status_code == 400
    assert reason in response.get_json()["error"]


def test_missing_image_field_is_400(client):
    response = client.post("/api/search", data={"k": "3"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "field 'image'" in response.get_json()["error"]


def test_upload_over_the_limit_is_413(client):
    big = b"\xff\xd8\xff" + os.urandom(1024 * 1024 + 100)   # JPEG magic, 1 MB limit in this app
    response = upload(client, big)
    assert response.status_code == 413
    assert response.get_json() == {"error": "upload too large: the limit is 1 MB"}


def test_api_errors_are_json(client):
    assert client.get("/api/search").status_code == 405
    assert "error" in client.get("/api/search").get_json()
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and "error" in missing.get_json()


def test_unexpected_errors_show_no_details(app, client, monkeypatch):
    from web.engine import get_engine
    with app.app_context():
        engine = get_engine()

    def broken_query(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(engine, "query", broken_query)
    response = upload(client, GALLERY_PHOTO.read_bytes())
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "secret" not in text and "Traceback" not in text
    assert "internal server error" in response.get_json()["error"]


# --- pages and thumbnails ---------------------------------------------------------------

def test_search_page_has_the_upload_form(client):
    page = client.get("/").get_data(as_text=True)
    assert 'type="file" name="image"' in page and 'id="dropzone"' in page
    assert 'data-max-upload-bytes="1048576"' in page


def lead(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return " ".join(page.split('<p class="lead">')[1].split("</p>")[0].split())


def test_search_page_wording_follows_the_index(client, tmp_path, identity_folders):
    assert lead(client) == ("This gallery holds people. Upload a photo of one or more people: each face found "
                            "in it is compared with the gallery, and you can draw a box around a face it missed.")
    # A dog index built from face crops (--detector none) is searched as it was built: crops.
    model = tmp_path / "dog.pt"
    save_checkpoint(model, EmbeddingNet("small", 128), Preprocess(64, 1.0), "dog", THRESHOLD)
    index = tmp_path / "dog-index"
    built = CliRunner().invoke(indexer_cli, ["build", str(identity_folders), "--index", str(index), "--model",
                                             str(model), "--detector", "none", "--workers", "0", "--no-progress"])
    assert built.exit_code == 0, built.output
    cropped = create_app({"INDEX": str(index), "TESTING": True}).test_client()
    assert lead(cropped) == ("This gallery holds dogs. Upload a photo of a dog, cropped to the face: the whole "
                             "photo is compared with the gallery.")
    dogs = create_app({"INDEX": str(index), "DETECTOR": "dog", "TESTING": True}).test_client()
    assert lead(dogs) == ("This gallery holds dogs. Upload a photo of one or more dogs: each face found in it is "
                          "compared with the gallery, and you can draw a box around a face it missed.")
    nothing = create_app({"INDEX": str(tmp_path / "no-index"), "TESTING": True}).test_client()
    assert lead(nothing) == "Upload a photo. Each face in it is compared with the gallery."


def test_every_request_gets_an_access_log_line(client, caplog):
    with caplog.at_level("INFO", logger="facesearch.access"):
        client.get("/api/health")
        client.get("/thumb/999999")
        client.get("/thumb/1", headers={"Host": "evil.example"})
        upload(client, GALLERY_PHOTO.read_bytes())
    lines = [record.getMessage() for record in caplog.records if record.name == "facesearch.access"]
    assert len(lines) == 4
    assert re.fullmatch(r'127\.0\.0\.1 GET "/api/health" 200 \d+ B [\d.]+ ms', lines[0])
    assert re.fullmatch(r'127\.0\.0\.1 GET "/thumb/999999" 404 \d+ B [\d.]+ ms', lines[1])
    assert re.fullmatch(r'127\.0\.0\.1 GET "/thumb/1" 400 \d+ B [\d.]+ ms', lines[2])   # refused, still logged
    assert re.fullmatch(r'127\.0\.0\.1 POST "/api/search" 200 \d+ B [\d.]+ ms', lines[3])


def test_status_page_shows_gallery_model_and_index(client):
    response = client.get("/status")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<dd id="status-images">12</dd>' in page
    assert '<dd id="status-identities">6</dd>' in page
    assert "model.pt (human, 128-d embeddings)" in page
    assert '<dd id="status-index-type">flat (12 vectors)</dd>' in page


def test_thumbnails_are_small_jpegs_served_by_id(client):
    image_id = upload(client, GALLERY_PHOTO.read_bytes()).get_json()["faces"][0]["matches"][0]["id"]
    response = client.get(f"/thumb/{image_id}")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.data))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 160
    again = client.get(f"/thumb/{image_id}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/thumb/999999", "/thumb/-1", "/thumb/..%2F..%2Fetc%2Fpasswd",
                                  "/thumb/%2Fetc%2Fpasswd"])
def test_thumbnails_of_anything_else_are_404(client, path):
    assert client.get(path).status_code == 404


def test_without_an_index_the_app_starts_and_answers_503(tmp_path):
    client = create_app({"INDEX": str(tmp_path / "no-index"), "TESTING": True}).test_client()
    assert client.get("/").status_code == 200
    health = client.get("/api/health")
    assert health.status_code == 503 and "indexer build" in health.get_json()["error"]
    search = upload(client, GALLERY_PHOTO.read_bytes())
    assert search.status_code == 503 and "no index" in search.get_json()["error"]
    status = client.get("/status")
    assert status.status_code == 503 and "indexer build" in status.get_data(as_text=True)


# --- the real server in a real browser --------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(web_index, log_dir: Path, env: dict | None = None, headers: dict | None = None):
    """`search serve` on a free loopback port, its engine warmed by a first health check."""
    port = free_port()
    search_command = Path(sys.executable).with_name("search")
    # The code under test, whichever facesearch the `search` script was installed from.
    env = {**os.environ, "FACESEARCH_DETECTOR": web_index["DETECTOR"],
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **(env or {})}
    log_path = log_dir / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(search_command), "serve", "--index", web_index["INDEX"],
                                   "--model", web_index["MODEL"], "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"search serve exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                health = urllib.request.Request(f"{url}/api/health", headers=headers or {})
                with urllib.request.urlopen(health, timeout=30) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"search serve did not answer within 90 s:\n{log_path.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server") / "server.log"


@pytest.fixture(scope="module")
def server_url(web_index, server_log):
    with running_server(web_index, server_log.parent) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server_url(web_index, tmp_path_factory):
    """The same, started with FACESEARCH_API_KEY."""
    with running_server(web_index, tmp_path_factory.mktemp("keyed-server"), {"FACESEARCH_API_KEY": API_KEY},
                        {"Authorization": f"Bearer {API_KEY}"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def wait_until(page, expression: str, timeout: float = 30) -> None:
    """Poll a JavaScript expression from here: page.wait_for_function polls with eval(),
    which the app's Content-Security-Policy rightly forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.1)


def wait_for_results(page):
    page.wait_for_selector("#results:not([hidden]), #message.is-error", timeout=30_000)


def test_browser_upload_shows_the_identity_first(page, server_url, tmp_path):
    page.goto(server_url)
    page.set_input_files("#image-input", str(GALLERY_PHOTO))
    wait_for_results(page)
    assert page.inner_text("#summary") == "1 face found."
    assert page.locator(".face-box").count() == 1
    first = page.locator("#faces .match").first
    assert first.locator(".identity").inner_text() == "Al Gore"
    assert "is-match" in first.get_attribute("class")
    # An uncalibrated model cannot say how confident: a match is "possible".
    assert first.locator(".badge").inner_text() == "✓ possible match"
    assert page.locator("#faces .match.is-match").count() == 1
    assert page.inner_text(".verdict").startswith("Best match: Al Gore (possible match, distance 0.0")
    assert first.locator(".distance").inner_text().startswith("distance 0.0")
    assert page.inner_text("#operating-point") == (f"A match is a gallery face within distance {THRESHOLD:.3f} "
                                                   "(strict operating point).")
    # How long the server took, from the API's timings_ms.
    assert re.fullmatch(r"Searched in \d+ ms \(finding faces \d+ ms, embedding \d+ ms, searching \d+ ms\)\.",
                        page.inner_text("#timings")), page.inner_text("#timings")
    assert page.locator(".drag-hint").is_visible()      # a desktop can drag a photo in
    wait_until(page, "document.querySelector('#faces .match .thumb').naturalWidth > 0")

    screenshot = tmp_path / "search.png"
    page.screenshot(path=str(screenshot))
    image = Image.open(screenshot)
    assert image.format == "PNG" and image.size == (1280, 900)
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000   # photos and text, not a blank page
    match_green = np.abs(pixels - (30, 138, 62)).sum(axis=2) < 30
    assert match_green.sum() > 200   # the match mark and the face box are drawn


def test_browser_group_photo_gets_six_boxes_on_the_photo(page, server_url):
    page.goto(server_url)
    page.fill("#k-input", "3")
    page.set_input_files("#image-input", str(GROUP_PHOTO))
    wait_for_results(page)
    assert page.inner_text("#summary") == "6 faces found."
    assert page.locator("#faces .face").count() == 6
    assert page.locator("#faces .face").first.locator(".match").count() == 3
    photo = page.locator("#photo").bounding_box()
    boxes = [page.locator(".face-box").nth(i).bounding_box() for i in range(6)]
    assert len(boxes) == 6
    for box in boxes:
        assert photo["x"] <= box["x"] and box["x"] + box["width"] <= photo["x"] + photo["width"] + 1
        assert photo["y"] <= box["y"] and box["y"] + box["height"] <= photo["y"] + photo["height"] + 1
        assert 10 < box["width"] < photo["width"] / 4


def test_browser_non_image_shows_the_error(page, server_url):
    page.goto(server_url)
    page.set_input_files("#image-input", files=[{"name": "holiday.jpg", "mimeType": "image/jpeg",
                                                 "buffer": b"this is not a photo\n" * 10}])
    wait_for_results(page)
    message = page.locator("#message")
    assert message.is_visible() and "is-error" in message.get_attribute("class")
    assert message.inner_text().startswith("Could not search holiday.jpg: not an image")
    assert page.locator("#results").is_hidden()


def test_browser_photo_without_a_face_says_so(page, server_url):
    page.goto(server_url)
    sky = png_bytes(Image.new("RGB", (300, 200), (120, 160, 200)))
    page.set_input_files("#image-input", files=[{"name": "sky.png", "mimeType": "image/png", "buffer": sky}])
    wait_for_results(page)
    assert page.inner_text("#summary") == ("No face found in this photo. If there is one, draw a box around it "
                                           "and search again.")
    assert page.locator("#faces .face").count() == 0


def screen_point(page, x: float, y: float) -> tuple[float, float]:
    """Where pixel (x, y) of the shown photo is on the screen."""
    shown = page.locator("#photo").bounding_box()
    natural = page.evaluate("[document.getElementById('photo').naturalWidth, document.getElementById('photo').naturalHeight]")
    return shown["x"] + x * shown["width"] / natural[0], shown["y"] + y * shown["height"] / natural[1]


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*screen_point(page, *start))
    page.mouse.down()
    page.mouse.move(*screen_point(page, *end), steps=5)
    page.mouse.up()


def box_value(page) -> list[int]:
    return [int(v) for v in page.input_value("#box-input").split(",")]


def test_browser_box_drawn_on_the_photo_is_searched(page, server_url):
    page.goto(server_url)
    sky = png_bytes(Image.new("RGB", (300, 200), (120, 160, 200)))
    page.set_input_files("#image-input", files=[{"name": "sky.png", "mimeType": "image/png", "buffer": sky}])
    wait_for_results(page)
    assert page.locator("#box-layer").is_hidden()          # no layer over the photo until asked
    page.click("#box-button")
    assert page.locator("#box-layer").is_visible()
    assert box_value(page) == [75, 50, 225, 150]            # no face found: the middle half to start
    drag(page, (30, 40), (150, 160))
    assert all(abs(a - b) <= 2 for a, b in zip(box_value(page), [30, 40, 150, 160])), box_value(page)
    page.click("#box-search")
    page.wait_for_selector("#faces .face", timeout=30_000)
    assert page.inner_text("#summary") == "1 face in your box."
    assert page.inner_text("#faces .found-by") == "The box you drew."
    assert page.locator("#box-layer").is_hidden()
    drawn = page.locator(".face-box").bounding_box()
    x0, y0 = screen_point(page, 30, 40)
    assert abs(drawn["x"] - x0) < 4 and abs(drawn["y"] - y0) < 4
    page.click(".face-box")                                  # the face's number is a link again
    assert page.evaluate("location.hash") == "#face-1"


def test_browser_box_starts_on_the_detected_face_and_moves(page, server_url):
    page.goto(server_url)
    page.set_input_files("#image-input", str(GALLERY_PHOTO))
    wait_for_results(page)
    found = page.locator(".face-box").bounding_box()
    page.click("#box-button")
    start = box_value(page)
    outline = page.locator(".drawn-box").bounding_box()
    assert all(abs(found[k] - outline[k]) < 3 for k in ("x", "y", "width", "height"))
    middle = ((start[0] + start[2]) / 2, (start[1] + start[3]) / 2)
    drag(page, middle, (middle[0] + 20, middle[1] + 10))    # inside the box: it moves, same size
    moved = box_value(page)
    assert all(abs(m - s - d) <= 2 for m, s, d in zip(moved, start, (20, 10, 20, 10))), (start, moved)
    page.fill("#box-input", "10,10,100,120")                 # typed boxes are drawn too
    page.dispatch_event("#box-input", "change")
    assert box_value(page) == [10, 10, 100, 120]
    page.fill("#box-input", "10,10,900,120")                 # and kept inside the photo
    page.dispatch_event("#box-input", "change")
    assert box_value(page) == [10, 10, 150, 120]
    page.click("#box-cancel")
    assert page.locator("#box-layer").is_hidden() and page.locator("#box-button").is_visible()
    page.click("#faces .adjust-box")                         # a face's own box as the start
    assert box_value(page) == start and page.locator("#box-layer").is_visible()


def test_browser_drop_on_a_phone_screen(browser, server_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(server_url)
        # Drag and drop, as a browser does it: a drop event carrying the file.
        photo = list(STRANGER_PHOTO.read_bytes())
        drop = page.evaluate_handle("""(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "someone.jpg", {type: "image/jpeg"}));
            return transfer;
        }""", photo)
        page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
        wait_for_results(page)
        assert page.inner_text("#summary") == "1 face found."
        assert page.inner_text(".verdict").startswith("No match")
        assert page.locator("#faces .match .badge").first.inner_text() == "not a match"
        assert page.locator("#faces .match.is-match").count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= 390   # nothing wider than the phone
    finally:
        context.close()


def test_browser_asks_for_the_api_key_once_and_sends_it(page, keyed_server_url):
    prompts = []
    page.on("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept(API_KEY)))
    page.goto(keyed_server_url)
    page.set_input_files("#image-input", str(GALLERY_PHOTO))
    wait_for_results(page)
    assert page.locator("#faces .match").first.locator(".identity").inner_text() == "Al Gore"
    # The thumbnails need the key too: fetched with it and shown from a blob.
    wait_until(page, "document.querySelector('#faces .match .thumb').naturalWidth > 0")
    assert page.locator("#faces .match .thumb").first.get_attribute("src").startswith("blob:")
    page.set_input_files("#image-input", str(STRANGER_PHOTO))
    wait_until(page, "!document.querySelector('#faces .match.is-match')")
    wait_for_results(page)
    assert prompts == ["This server needs its API key:"]


def test_browser_phone_shows_the_results_without_scrolling(browser, server_url, server_log):
    """On a 390-px phone, after a search the first face (its crop, verdict and first matches)
    is on screen without scrolling, the photo stays in view while the faces scroll, and the
    page's burst of thumbnails fits waitress's threads (no queue warning in the log)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(server_url)
        page.set_input_files("#image-input", str(GROUP_PHOTO))
        wait_for_results(page)
        assert page.inner_text("#summary") == "6 faces found."
        first = page.locator("#faces .face").first
        crop = first.locator(".face-crop").bounding_box()
        verdict = first.locator(".verdict").bounding_box()
        match = first.locator(".match").first.bounding_box()
        for box in (crop, verdict, match):
            assert 0 <= box["y"] and box["y"] + box["height"] <= 844, box
        # The section starts with the face itself, drawn from the photo (not a blank canvas).
        pixels = page.evaluate("""() => {
            const canvas = document.querySelector("#faces .face .face-crop");
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            return [canvas.width, canvas.height, new Set(data).size];
        }""")
        assert pixels[0] > 40 and pixels[1] > 40 and pixels[2] > 100
        assert first.locator(".face-crop").get_attribute("aria-label") == "Face 1 as found in your photo"
        # Scrolled to the last face (as its box on the photo links to it), the photo is still
        # on screen, and the face's section starts below it.
        assert page.locator(".drag-hint").is_hidden()      # nothing to drag on a phone
        assert page.locator("#in-view").is_hidden()
        page.evaluate("document.querySelector('#faces .face:last-child').scrollIntoView()")
        wait_until(page, "!document.getElementById('in-view').hidden")
        pinned = page.locator("#results .photo").bounding_box()
        last = page.locator("#faces .face").last.bounding_box()
        # Only the photo and one line stay pinned: under a quarter of the screen, naming the
        # face whose matches are in view, and its box marked on the photo.
        assert pinned["y"] >= -1 and pinned["height"] <= 844 / 4, pinned
        assert last["y"] >= pinned["y"] + pinned["height"] - 1
        assert page.inner_text("#in-view") == "Face 6 of 6: its matches are below."
        assert page.locator(".face-box.is-current").get_attribute("href") == "#face-6"
        page.evaluate("document.querySelector('#faces .face:nth-child(2)').scrollIntoView()")
        wait_until(page, "document.getElementById('in-view').textContent.startsWith('Face 2 of 6')")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # The thumbnails near each screenful have loaded (the others wait, lazily, until seen).
        wait_until(page, "[...document.querySelectorAll('#faces .face:last-child .thumb')].every(i => i.complete)")
        page.evaluate("window.scrollTo(0, 0)")
        wait_until(page, "[...document.querySelectorAll('#faces .face:first-child .thumb')].every(i => i.complete)")
    finally:
        context.close()
    log = server_log.read_text()
    assert "Task queue depth" not in log
    assert re.search(r'GET "/thumb/\d+" 200 \d+ B', log) and re.search(r'POST "/api/search" 200', log)


def test_search_query_server_answers_as_a_local_query_without_torch(server_url, web_index, client):
    code, heavy, output = probe("search", "query", str(GALLERY_PHOTO), str(STRANGER_PHOTO), "-k", "3",
                                "--server", server_url, "--json")
    assert code == 0 and heavy == []     # no torch, FAISS or database in the client
    answers = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [answer["photo"] for answer in answers] == [str(GALLERY_PHOTO), str(STRANGER_PHOTO)]
    local = upload(client, GALLERY_PHOTO.read_bytes(), k="3").get_json()
    assert [m["id"] for m in answers[0]["faces"][0]["matches"]] == [m["id"] for m in local["faces"][0]["matches"]]
    assert answers[0]["faces"][0]["matches"][0]["match"] and answers[0]["faces"][0]["matches"][0]["identity"] == "Al_Gore"
    code, _, output = probe("search", "query", str(GALLERY_PHOTO), "--server", server_url, "--index", "x")
    assert code == 2 and "--index is the server's to choose" in output


def test_search_query_server_sends_the_box(server_url):
    code, heavy, output = probe("search", "query", str(GALLERY_PHOTO), "--server", server_url,
                                "--box", "20,20,130,130", "--json")
    assert code == 0 and heavy == [], output
    [answer] = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    [face] = answer["faces"]
    assert face["found_by"] == "box" and face["box"] == [20, 20, 130, 130]
    code, _, output = probe("search", "query", str(GALLERY_PHOTO), "--server", server_url, "--box", "1,2")
    assert code == 2 and "four numbers" in output


def test_search_query_server_sends_the_detector(server_url):
    code, heavy, output = probe("search", "query", str(GALLERY_PHOTO), "--server", server_url,
                                "--detector", "none", "--json")
    assert code == 0 and heavy == [], output
    [answer] = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert answer["detector"] == "none"
    [face] = answer["faces"]
    assert face["found_by"] == "whole image" and face["box"] is None
    code, _, output = probe("search", "query", str(GALLERY_PHOTO), "--server", server_url, "--json")
    [answer] = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert code == 0 and answer["detector"] == "blazeface"     # the server's own (its index's: auto)


def test_search_query_server_sends_the_api_key(keyed_server_url, tmp_path, monkeypatch):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not a photo")
    monkeypatch.delenv("FACESEARCH_API_KEY", raising=False)
    code, _, output = probe("search", "query", str(GALLERY_PHOTO), "--server", keyed_server_url)
    assert code == 1 and "HTTP 401" in output and "set $FACESEARCH_API_KEY" in output
    monkeypatch.setenv("FACESEARCH_API_KEY", API_KEY)
    code, _, output = probe("search", "query", str(GALLERY_PHOTO), str(not_a_photo), "--server", keyed_server_url)
    assert code == 1     # one photo failed, the other was answered
    assert "1 face" in output and "Al_Gore" in output
    assert f"Error: {not_a_photo}: " in output and "not an image" in output
