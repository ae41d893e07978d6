"""The dog face detector ('dog', faces/detectors/dog.py) with its bundled weights, and the face
box a user gives (`--box`, the API's `box`), on real DogFaceNet and LFW pictures.

The detector trained on `trainer split`'s training dogs (seed 0); these tests use the other
dogs, and the LFW people it neither trained nor chose its threshold on (people_by_role's
'test'), as bench/dog_photos.py does at full size. Composites are made as the acceptance test's: one face at 20-35% of the width of an
800 x 600 photo whose background is a real photo.
"""
from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from faces.detectors import default_detector, get_detector, parse_box
from faces.detectors.dog import Square, cut_square, square_iou
from trainer.composites import ImageSource, paste, people_by_role, photo_with_a_face
from trainer.data import group_by_identity, scan_identities, split_identities
from trainer.dog_detector import no_dog_pictures

from conftest import DOGS, LFW

pytestmark = pytest.mark.skipif(not (DOGS.is_dir() and LFW.is_dir()), reason="DogFaceNet or LFW not found")


@pytest.fixture(scope="module")
def held_out_dogs() -> dict:
    """The dogs neither the bundled dog model nor the detector trained on: {dog: [paths]}."""
    samples = scan_identities(DOGS)
    val = split_identities(sorted({s.identity for s in samples})).choose
    groups = group_by_identity([s for s in samples if s.identity in set(val)])
    return {dog: [s.path for s in groups[dog]] for dog in sorted(groups) if len(groups[dog]) >= 3}


@pytest.fixture(scope="module")
def held_out_people():
    """LFW people the detector neither trained nor chose its threshold on."""
    return people_by_role(LFW)["test"]


@pytest.fixture(scope="module")
def detector():
    return get_detector("dog")


def test_square_offsets_and_cut_are_consistent():
    window = Square(100, 80, 50, 0.2)
    face = Square(110, 75, 64, -0.1)
    assert np.allclose(_as_tuple(window.moved(*window.offsets_to(face))), _as_tuple(face))
    # A face pasted into a square comes back out of it (the crop the dog model sees).
    face_image = Image.open(next(DOGS.glob("*/*.jpg"))).convert("RGB")
    scene = Image.new("RGB", (400, 300), (40, 90, 40))
    square = Square(210, 140, 150, math.radians(12))
    paste(scene, face_image, square, feather=0.0)
    back = np.asarray(cut_square(scene, square, 224), dtype=np.float32)
    assert np.abs(back - np.asarray(face_image, dtype=np.float32))[20:-20, 20:-20].mean() < 12
    assert square_iou(square, Square(210, 140, 150)) == 1.0


def _as_tuple(square: Square):
    return square.cx, square.cy, square.side, square.angle


def test_dog_models_default_to_the_dog_detector():
    assert default_detector("dog") == "dog" and default_detector("human") == "blazeface"


def test_held_out_faces_in_photos_are_found(detector, held_out_dogs, held_out_people):
    """Detection recall at IoU 0.5 and false detections per photo on held-out composites."""
    rng = random.Random(5)
    people = ImageSource(held_out_people, rng)
    dogs = list(held_out_dogs)[:16]
    hits = false = 0
    for dog in dogs:
        scene = photo_with_a_face(Image.open(held_out_dogs[dog][0]).convert("RGB"), people, rng)
        faces = detector(scene.image)
        assert all(face.found_by == "detector" and 0 < face.score <= 1 for face in faces)
        squares = [Square((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2, f.box[2] - f.box[0]) for f in faces]
        hits += any(square_iou(scene.faces[0], s) >= 0.5 for s in squares)
        false += sum(square_iou(scene.faces[0], s) < 0.5 for s in squares)
    assert hits / len(dogs) >= 0.85, f"recall {hits}/{len(dogs)}"
    assert false / len(dogs) <= 0.15, f"{false} false detections in {len(dogs)} photos"


def test_a_tight_crop_is_found_as_the_whole_picture(detector, held_out_dogs):
    """A DogFaceNet crop is one face, cut as the whole picture, as the gallery's crops are."""
    crops = [Image.open(paths[1]).convert("RGB") for paths in list(held_out_dogs.values())[:10]]
    whole = [[face.box for face in detector(crop)] == [(0, 0, crop.width, crop.height)] for crop in crops]
    assert sum(whole) >= 8, f"{sum(whole)} of {len(crops)} crops found as the whole picture"


def test_pictures_without_a_dog_show_no_face(detector, held_out_people):
    pictures = no_dog_pictures(held_out_people, 24, seed=11)   # portraits, grey and noise
    with_a_face = [i for i, picture in enumerate(pictures) if detector(picture)]
    assert len(with_a_face) <= 1, f"faces found in no-dog pictures {with_a_face}"


# --- the engine, CLI and API with a dog index ----------------------------------------------

@pytest.fixture(scope="module")
def dog_index(tmp_path_factory, held_out_dogs) -> dict:
    """An index of held-out dogs' face crops (all but each one's first photo), bundled dog model."""
    from indexer.writer import IndexWriter
    root = tmp_path_factory.mktemp("dogs")
    dogs = list(held_out_dogs)[:6]
    for dog in dogs:
        (root / "gallery" / dog).mkdir(parents=True)
        for path in held_out_dogs[dog][1:]:
            (root / "gallery" / dog / path.name).symlink_to(path)
    with IndexWriter(root / "index", create=True, model="dog", detector="none", workers=0, progress=False) as writer:
        writer.build(root / "gallery")
    return {"root": root, "index": root / "index", "dogs": dogs}


@pytest.fixture(scope="module")
def dog_engine(dog_index):
    from search.engine import QueryEngine
    return QueryEngine(dog_index["index"], detector="dog")     # photos, not the index's crops


def test_crop_gallery_is_queried_with_crops_unless_told(dog_index, held_out_dogs):
    """Built with --detector none, the index is queried as it was built: a gallery photo finds
    itself at distance 0 (the dog detector's recut square found it at 0.243)."""
    from search.engine import QueryEngine
    engine = QueryEngine(dog_index["index"])
    dog = dog_index["dogs"][0]
    result = engine.query(held_out_dogs[dog][1], k=1)
    assert result["detector"] == "none"
    assert result["faces"][0]["matches"][0]["distance"] == pytest.approx(0.0, abs=1e-3)


def test_dog_photo_query_says_how_each_face_was_found(dog_engine, dog_index, held_out_dogs, held_out_people):
    rng = random.Random(1)
    dog = dog_index["dogs"][0]
    probe = Image.open(held_out_dogs[dog][0]).convert("RGB")
    scene = photo_with_a_face(probe, ImageSource(held_out_people, rng), rng)
    found = dog_engine.query(scene.image, k=3)
    assert found["detector"] == "dog" and found["faces"]
    assert {face["found_by"] for face in found["faces"]} == {"detector"}
    best = max(found["faces"], key=lambda face: face["score"])
    truth = scene.faces[0]
    assert square_iou(truth, Square((best["box"][0] + best["box"][2]) / 2, (best["box"][1] + best["box"][3]) / 2,
                                    best["box"][2] - best["box"][0])) >= 0.5
    # The same face through a box the user gives: one face, the box as given.
    box = tuple(round(v) for v in truth.box())
    boxed = dog_engine.query(scene.image, k=3, box=box)
    [face] = boxed["faces"]
    assert face["found_by"] == "box" and face["box"] == list(box) and face["score"] is None


def test_no_dog_gives_no_face_and_says_to_draw_a_box(dog_engine):
    grey = Image.new("RGB", (640, 480), (128, 128, 128))
    result = dog_engine.query(grey, name="grey.png")
    assert result["faces"] == []
    assert result["message"].startswith("no dog face found in grey.png (detector dog)")
    assert "--box x0,y0,x1,y1" in result["message"]


def test_cli_box_and_found_by(dog_index, held_out_dogs, tmp_path):
    from search.cli import main as search_cli
    photo = tmp_path / "dog.jpg"
    Image.open(held_out_dogs[dog_index["dogs"][1]][0]).convert("RGB").resize((300, 300)).save(photo)
    runner = CliRunner()
    boxed = runner.invoke(search_cli, ["query", str(photo), "--index", str(dog_index["index"]), "-k", "2",
                                       "--box", "10,20,290,280", "--json"])
    assert boxed.exit_code == 0, boxed.output
    [face] = json.loads(boxed.output)["faces"]
    assert face["box"] == [10, 20, 290, 280] and face["found_by"] == "box"
    table = runner.invoke(search_cli, ["identify", str(photo), "--index", str(dog_index["index"]),
                                       "--box", "10,20,290,280"])
    assert table.exit_code == 0 and "(the box given)" in table.output
    bad = runner.invoke(search_cli, ["query", str(photo), "--index", str(dog_index["index"]), "--box", "5,5,1"])
    assert bad.exit_code == 2 and "four numbers" in bad.output
    outside = runner.invoke(search_cli, ["query", str(photo), "--index", str(dog_index["index"]),
                                         "--box", "400,400,500,500"])
    assert outside.exit_code == 1 and "outside the 300x300 picture" in outside.output


def test_verify_takes_a_box_for_each_photo(held_out_dogs, tmp_path):
    from search.cli import main as search_cli
    first, second = (held_out_dogs[list(held_out_dogs)[3]][i] for i in (0, 1))
    grey = tmp_path / "grey.png"
    Image.new("RGB", (224, 224), (128, 128, 128)).save(grey)
    runner = CliRunner()
    no_face = runner.invoke(search_cli, ["verify", str(grey), str(second), "--model", "dog"])
    assert no_face.exit_code == 2 and "no face found" in no_face.output and "--box-a" in no_face.output
    boxed = runner.invoke(search_cli, ["verify", str(first), str(second), "--model", "dog", "--json",
                                       "--box-a", "0,0,224,224"])
    assert boxed.exit_code in (0, 1), boxed.output
    result = json.loads(boxed.output)
    assert result["a"]["found_by"] == "box" and result["a"]["box"] == [0, 0, 224, 224]
    assert result["b"]["found_by"] == "detector" and result["detector"] == "dog"
    bad = runner.invoke(search_cli, ["verify", str(first), str(second), "--model", "dog", "--box-b", "x"])
    assert bad.exit_code == 2 and "four numbers" in bad.output


def test_api_box_field(dog_index, held_out_dogs):
    from web import create_app
    client = create_app({"INDEX": str(dog_index["index"]), "TESTING": True}).test_client()
    buffer = io.BytesIO()
    Image.open(held_out_dogs[dog_index["dogs"][2]][0]).convert("RGB").save(buffer, "JPEG")

    def post(**form):
        form["image"] = (io.BytesIO(buffer.getvalue()), "dog.jpg", "image/jpeg")
        return client.post("/api/search", data=form, content_type="multipart/form-data")

    boxed = post(box="0,0,224,224", k="1")
    assert boxed.status_code == 200
    assert [f["found_by"] for f in boxed.get_json()["faces"]] == ["box"]
    whole = post(k="1").get_json()          # the index was built with 'none': its default
    assert whole["detector"] == "none" and [f["found_by"] for f in whole["faces"]] == ["whole image"]
    detected = post(k="1", detector="dog").get_json()
    assert detected["detector"] == "dog" and [f["found_by"] for f in detected["faces"]] == ["detector"]
    assert "unknown detector" in post(detector="cat").get_json()["error"]
    assert post(box="1,2,three,4").status_code == 400
    assert "outside" in post(box="300,300,400,400").get_json()["error"]


def test_trainer_train_dog_detector_writes_a_detector_that_loads(tmp_path):
    """The training command end to end, tiny: windows from scenes, training, the threshold
    chosen on no-dog pictures, a checkpoint the 'dog' detector loads."""
    from faces.detectors.dog import DogFaceDetector
    from trainer.cli import main as trainer_cli
    dogs = tmp_path / "dogs"
    dogs.mkdir()
    for dog in sorted(p for p in DOGS.iterdir() if p.is_dir())[:5]:
        (dogs / dog.name).symlink_to(dog)
    people = tmp_path / "people"
    people.mkdir()
    for person in sorted(p for p in LFW.iterdir() if p.is_dir())[:10]:
        (people / person.name).symlink_to(person)
    result = CliRunner().invoke(trainer_cli, ["train-dog-detector", "--dogs", str(dogs), "--people", str(people),
                                              "--out", str(tmp_path / "out"), "--scenes", "20", "--epochs", "1",
                                              "--check-scenes", "3", "--check-pictures", "8", "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["windows"]["faces"] > 0 and measured["windows"]["background"] > 0
    assert 0.5 <= measured["threshold"] <= 0.99 and measured["validation"]["no_dog_pictures"] == 8
    assert measured["trained_with"].startswith("trainer train-dog-detector --dogs")
    detector = DogFaceDetector(model_path=tmp_path / "out" / "dog-detector.pt")
    assert detector.threshold == measured["threshold"]
    assert isinstance(detector(Image.new("RGB", (200, 150), (90, 90, 90))), list)


def test_parse_box():
    assert parse_box(" 1, 2,30.4,40 ") == (1, 2, 30, 40)
    for text in ("1,2,3", "3,2,1,4", "a,b,c,d", "-1,0,5,5"):
        with pytest.raises(ValueError):
            parse_box(text)


def test_human_box_is_aligned_by_its_landmarks():
    """A box drawn on a human face is aligned like a detected one (dlib's landmarks in it)."""
    photo = Image.open(LFW / "Al_Gore" / "Al_Gore_0001.jpg").convert("RGB")
    detector = get_detector("hog")     # its boxes are the ones dlib's landmark model was trained with
    [detected] = detector(photo)
    x0, y0, x1, y1 = detected.box
    box = (x0 - 6, y0 - 4, x1 + 5, y1 + 7)                  # drawn by hand: near the face, not on it
    face = detector.in_box(photo, box)
    assert face.found_by == "box" and face.box == box
    assert face.image.size == detected.image.size
    difference = np.abs(np.asarray(face.image, np.float32) - np.asarray(detected.image, np.float32)).mean()
    assert difference < 10


# --- the page on a dog index, in headless Chromium -------------------------------------------

def test_browser_dog_page_finds_the_face_says_when_none_and_searches_a_drawn_box(
        dog_index, held_out_dogs, held_out_people, tmp_path):
    from test_web import CHROMIUM, CHROMIUM_ARGS, box_value, drag, png_bytes, running_server, wait_for_results
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
    rng = random.Random(3)
    scene = photo_with_a_face(Image.open(held_out_dogs[dog_index["dogs"][0]][0]).convert("RGB"),
                              ImageSource(held_out_people, rng), rng)
    grey = png_bytes(Image.new("RGB", (400, 300), (128, 128, 128)))
    server = {"INDEX": str(dog_index["index"]), "MODEL": "dog", "DETECTOR": "dog"}
    with running_server(server, tmp_path) as url, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        assert "This gallery holds dogs." in page.inner_text(".lead")

        page.set_input_files("#image-input", files=[{"name": "grey.png", "mimeType": "image/png", "buffer": grey}])
        wait_for_results(page)
        assert page.inner_text("#summary") == ("No dog face found in this photo. If there is one, draw a box "
                                               "around it and search again.")

        page.set_input_files("#image-input", files=[{"name": "dog.png", "mimeType": "image/png",
                                                     "buffer": png_bytes(scene.image)}])
        page.wait_for_selector("#faces .face", timeout=30_000)
        assert page.inner_text("#faces .found-by") == "Found by the face detector (dog)."
        page.click("#box-button")                     # starts on the detected face
        x0, y0, x1, y1 = box_value(page)
        assert square_iou(scene.faces[0], Square((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0)) >= 0.5
        drag(page, (x1 + 5, y1 + 5), (x1 + 120, y1 + 90))   # outside it: a new box, drawn
        assert abs(box_value(page)[2] - (x1 + 120)) <= 3
        page.click("#box-search")
        page.wait_for_selector("#faces .found-by >> text=The box you drew.", timeout=30_000)
        assert page.inner_text("#summary") == "1 face in your box."
        browser.close()
