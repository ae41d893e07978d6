"""Search end to end: a small real index of LFW images built here, queried through the
QueryEngine and the `search` command line, and every kind of bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import DOGS, GROUP_PHOTO, LFW
from indexer.writer import IndexWriter
from search.cli import main as search_cli
from search.engine import QueryEngine, SearchError
from faces.checkpoint import save_checkpoint
from faces.errors import ModelError
from faces.imaging import Preprocess
from faces.models import EmbeddingNet

GALLERY_PEOPLE = ("Aaron_Peirsol", "Abdoulaye_Wade", "Adam_Sandler", "Ahmed_Chalabi")
STRANGER = LFW / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"    # not in the gallery
# An untrained net puts every face within ~0.3 of every other; the same image is at ~0.
# A threshold between the two makes "in the gallery" and "unknown" decidable.
THRESHOLD = 0.02

pytestmark = pytest.mark.skipif(not GROUP_PHOTO.is_file(), reason="shared data not present")


def lfw_image(person: str, number: int = 1):
    return LFW / person / f"{person}_{number:04d}.jpg"


def write_checkpoint(path, seed: int, species: str = "human"):
    torch.manual_seed(seed)
    save_checkpoint(path, EmbeddingNet("small", 128).eval(), Preprocess(64, 0.5), species, THRESHOLD)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A gallery folder of links to LFW images (never copies), its index, and two models."""
    root = tmp_path_factory.mktemp("search")
    for person in GALLERY_PEOPLE:
        folder = root / "gallery" / person
        folder.mkdir(parents=True)
        for number in (1, 2, 3):
            (folder / lfw_image(person, number).name).symlink_to(lfw_image(person, number))
    model = write_checkpoint(root / "model.pt", seed=0)
    other_model = write_checkpoint(root / "other.pt", seed=1)
    index = root / "index"
    with IndexWriter(index, create=True, model=str(model), detector="none", workers=0,
                     progress=False) as writer:
        report = writer.build(root / "gallery")
    assert report.faces_added == 12
    return {"root": root, "index": index, "model": model, "other_model": other_model}


@pytest.fixture(scope="module")
def engine(workspace) -> QueryEngine:
    return QueryEngine(workspace["index"], detector="none")


def run_cli(*args):
    return CliRunner().invoke(search_cli, [str(a) for a in args])


# --- the engine ---------------------------------------------------------------------------

def test_gallery_image_finds_its_own_identity_first(engine):
    result = engine.query(lfw_image("Adam_Sandler", 2), k=5)
    [face] = result["faces"]
    assert face["box"] is None                        # detector none: the whole image
    first = face["matches"][0]
    assert first["identity"] == "Adam_Sandler" and first["path"].endswith("Adam_Sandler_0002.jpg")
    assert first["distance"] < 1e-3 and first["match"] is True
    assert [m["match"] for m in face["matches"][1:]] == [False] * 4
    distances = [m["distance"] for m in face["matches"]]
    assert distances == sorted(distances) and len(distances) == 5
    assert set(first) >= {"id", "path", "identity", "distance", "similarity", "match"}
    assert result["threshold"] == pytest.approx(THRESHOLD)


def test_identify_known_and_unknown(engine):
    known = engine.identify(lfw_image("Ahmed_Chalabi", 3))["faces"][0]
    assert known["identity"] == "Ahmed_Chalabi" and known["strength"] == "possible" and known["distance"] < 1e-3
    stranger = engine.identify(STRANGER)["faces"][0]
    assert stranger["identity"] == "unknown" and stranger["strength"] == "no match"
    assert stranger["matches"][0]["distance"] > THRESHOLD


def test_queries_use_the_detector_the_index_was_built_with(workspace):
    """The index (built with 'none': crops) is queried with crops unless a query says otherwise."""
    engine = QueryEngine(workspace["index"])
    assert engine.pipeline.detector_name == "none"
    whole = engine.query(GROUP_PHOTO, k=1)
    assert whole["detector"] == "none" and [face["found_by"] for face in whole["faces"]] == ["whole image"]
    detected = engine.query(GROUP_PHOTO, k=1, detector="hog")
    assert detected["detector"] == "hog" and len(detected["faces"]) == 6
    with pytest.raises(SearchError, match="unknown detector"):
        engine.query(GROUP_PHOTO, detector="no-such")


def test_group_photo_is_searched_face_by_face(workspace):
    engine = QueryEngine(workspace["index"], detector="auto")     # human model: auto is blazeface
    result = engine.query(GROUP_PHOTO, k=3)
    assert result["detector"] == "blazeface" and len(result["faces"]) == 6
    assert [face["box"][0] for face in result["faces"]] == sorted(face["box"][0] for face in result["faces"])
    assert all(len(face["matches"]) == 3 for face in result["faces"])
    assert result["image"] == {"width": 1200, "height": 630}
    json.dumps(result)                                # the web answers it as it is


def test_photo_bytes_and_no_face(engine, workspace):
    as_bytes = engine.query(lfw_image("Aaron_Peirsol", 1).read_bytes(), k=1, name="upload.jpg")
    assert as_bytes["faces"][0]["matches"][0]["identity"] == "Aaron_Peirsol"
    blank = workspace["root"] / "blank.png"
    Image.new("RGB", (320, 240), (90, 140, 200)).save(blank)
    result = QueryEngine(workspace["index"], detector="hog").query(blank)
    assert result["faces"] == [] and "no face found" in result["message"]


def test_engine_loads_once_and_reuses(engine, monkeypatch):
    """Nothing is re-read per query: loading the model or opening an index again fails."""
    def no_reload(*args, **kwargs):
        raise AssertionError("reloaded during a query")
    monkeypatch.setattr("search.engine.load_model", no_reload)
    monkeypatch.setattr("faces.checkpoint.load_model", no_reload)
    monkeypatch.setattr("indexer.gallery.Gallery.open", no_reload)
    for _ in range(2):
        assert engine.query(lfw_image("Abdoulaye_Wade", 1), k=1)["faces"][0]["matches"][0]["match"]


def test_verify_same_and_different(engine):
    same = engine.verify(lfw_image("Adam_Sandler", 1), lfw_image("Adam_Sandler", 1))
    assert same["same"] is True and same["distance"] < 1e-3
    different = engine.verify(lfw_image("Adam_Sandler", 1), STRANGER)
    assert different["same"] is False and different["distance"] > THRESHOLD


def test_dog_photo_is_the_face_with_detector_none(tmp_path):
    """A dog index asked with the 'none' detector takes the whole photo as the face (the dog
    detector, the default, is tested in test_dog_faces.py)."""
    for dog in ("0", "1"):
        (tmp_path / "gallery" / dog).mkdir(parents=True)
        (tmp_path / "gallery" / dog / f"{dog}.0.jpg").symlink_to(DOGS / dog / f"{dog}.0.jpg")
    model = write_checkpoint(tmp_path / "dog.pt", seed=0, species="dog")
    with IndexWriter(tmp_path / "index", create=True, model=str(model), detector="none", workers=0,
                     progress=False) as writer:
        writer.build(tmp_path / "gallery")
    result = QueryEngine(tmp_path / "index", detector="none").identify(DOGS / "1" / "1.0.jpg", k=2)
    assert result["detector"] == "none" and result["species"] == "dog"
    [face] = result["faces"]
    assert face["box"] is None and face["identity"] == "1" and face["found_by"] == "whole image"


def test_index_built_with_another_model_is_refused(workspace):
    from indexer.errors import ModelMismatchError
    with pytest.raises(ModelMismatchError, match="built with model"):
        QueryEngine(workspace["index"], model=workspace["other_model"])


def test_a_recalibrated_model_still_queries_the_index_built_with_it(workspace, tmp_path):
    """`trainer calibrate` rewrites the file (new operating points and stranger statistics),
    not the embeddings: the index built with the original accepts it, and decides by it."""
    from faces.checkpoint import write_operating_points
    points = {"strict": {"threshold": 0.5, "tar": 0.9, "far": 1e-4},
              "balanced": {"threshold": 0.7, "tar": 0.99, "far": 1e-2}}
    recalibrated = write_operating_points(workspace["model"], points, tmp_path / "recalibrated.pt")
    engine = QueryEngine(workspace["index"], model=recalibrated, detector="none")
    assert engine.query(STRANGER, k=1)["threshold"] == pytest.approx(0.5)
    # Flip averaging changes the embeddings: that checkpoint is another model to the index.
    flipped = write_operating_points(workspace["model"], points, tmp_path / "flipped.pt", flip_average=True)
    from indexer.errors import ModelMismatchError
    with pytest.raises(ModelMismatchError, match="built with model"):
        QueryEngine(workspace["index"], model=flipped)


def test_an_index_that_recorded_the_file_sha256_still_takes_that_file(workspace, tmp_path):
    """Indexes built before the embedding digest recorded the checkpoint file's sha256."""
    import shutil
    import sqlite3
    from faces.checkpoint import file_sha256
    from indexer.config import DATABASE_FILE
    from indexer.errors import ModelMismatchError
    index = tmp_path / "index"
    shutil.copytree(workspace["index"], index, ignore=shutil.ignore_patterns("*.lock"))
    with sqlite3.connect(index / DATABASE_FILE) as db:
        db.execute("UPDATE models SET sha256 = ?", (file_sha256(workspace["model"]),))
    result = QueryEngine(index, detector="none").query(lfw_image("Adam_Sandler", 2), k=1)
    assert result["faces"][0]["matches"][0]["identity"] == "Adam_Sandler"
    with pytest.raises(ModelMismatchError, match="built with model"):
        QueryEngine(index, model=workspace["other_model"])


def test_k_must_be_positive(engine):
    with pytest.raises(SearchError, match="k must be"):
        engine.query(STRANGER, k=0)


def test_threshold_choices_decide_match(engine):
    probe = lfw_image("Ahmed_Chalabi", 2)
    # A checkpoint without gallery statistics keeps the per-pair strict rule and says how to recalibrate.
    strict = engine.query(probe, k=12)
    decision = strict["decision"]
    assert decision["rule"] == "per-pair" and decision["fpir"] is None
    assert decision["operating_point"] == {"name": "strict", "tar": None, "far": None}
    assert "trainer calibrate" in decision["message"] and decision["individuals"] == 4
    assert strict["threshold"] == pytest.approx(THRESHOLD)
    everything = engine.query(probe, k=12, threshold=2.0)
    assert everything["decision"]["operating_point"]["name"] == "custom" and "message" not in everything["decision"]
    assert all(m["match"] for m in everything["faces"][0]["matches"])
    assert sum(m["match"] for m in strict["faces"][0]["matches"]) == 1    # only the photo itself
    with pytest.raises(ModelError, match="expected strict or balanced"):
        engine.query(probe, threshold="loose")
    with pytest.raises(ModelError, match="strictly between 0 and 1"):    # refused even where unused
        engine.query(probe, fpir="2")


# --- the command line -----------------------------------------------------------------------

def test_cli_query_table_and_json(workspace):
    photo = lfw_image("Ahmed_Chalabi", 2)
    table = run_cli("query", photo, "--index", workspace["index"], "--detector", "none", "-k", 2)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "1 face" in lines[0] and "distance" in table.output
    assert any(line.split()[:4] == ["1", "0.000", "1.000", "possible"] and "Ahmed_Chalabi" in line
               for line in lines)
    as_json = run_cli("query", photo, "--index", workspace["index"], "--detector", "none", "--json")
    result = json.loads(as_json.output.splitlines()[-1])
    assert result["faces"][0]["matches"][0]["identity"] == "Ahmed_Chalabi"


def test_cli_identify_and_verify(workspace):
    unknown = run_cli("identify", STRANGER, "--index", workspace["index"], "--detector", "none")
    assert unknown.exit_code == 0 and "unknown  (no gallery face within the threshold)" in unknown.output
    known = run_cli("identify", lfw_image("Aaron_Peirsol", 3), "--index", workspace["index"],
                    "--detector", "none")
    assert "Aaron_Peirsol  (possible match, distance 0.000" in known.output
    same = run_cli("verify", GROUP_PHOTO, GROUP_PHOTO, "--model", workspace["model"])
    assert same.exit_code == 0 and same.output.startswith("same: distance 0.000")


def test_cli_verify_exit_status(workspace):
    """As cmp and diff: 0 same, 1 different, 2 trouble."""
    a, b = lfw_image("Adam_Sandler", 1), lfw_image("Abdoulaye_Wade", 1)
    different = run_cli("verify", a, b, "--model", workspace["model"], "--detector", "none", "--json")
    assert different.exit_code == 1 and json.loads(different.output)["same"] is False
    loose = run_cli("verify", a, b, "--model", workspace["model"], "--detector", "none", "--threshold", "2")
    assert loose.exit_code == 0 and loose.output.startswith("same:") and "custom operating point" in loose.output
    bad_threshold = run_cli("verify", a, b, "--model", workspace["model"], "--threshold", "3")
    assert bad_threshold.exit_code == 2 and "between 0 and 2" in bad_threshold.output
    missing_model = run_cli("verify", a, b, "--model", workspace["root"] / "nothing.pt")
    assert missing_model.exit_code == 2 and "no such model file" in missing_model.output
    blank = workspace["root"] / "blank-verify.jpg"
    Image.new("RGB", (320, 240), (200, 180, 160)).save(blank)
    no_face = run_cli("verify", blank, a, "--model", workspace["model"])
    assert no_face.exit_code == 2 and "no face found" in no_face.output
    assert run_cli("verify", a).exit_code == 2                 # usage: a photo missing


def test_cli_many_photos_and_folders_as_json_lines(workspace):
    folder = workspace["root"] / "gallery" / "Adam_Sandler"
    broken = workspace["root"] / "broken.jpg"
    broken.write_text("not a picture")
    result = run_cli("identify", lfw_image("Aaron_Peirsol", 2), broken, folder, "--index", workspace["index"],
                     "--detector", "none", "--json")
    assert result.exit_code == 1                                 # one photo failed
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["photo"] for line in lines] == [str(lfw_image("Aaron_Peirsol", 2)), str(broken)] + sorted(
        str(p) for p in folder.iterdir())
    assert lines[0]["faces"][0]["identity"] == "Aaron_Peirsol"
    assert set(lines[1]) == {"photo", "error"} and lines[1]["error"].startswith(f"{broken}: not an image")
    assert all(line["faces"][0]["identity"] == "Adam_Sandler" for line in lines[2:])
    empty = workspace["root"] / "empty-folder"
    empty.mkdir(exist_ok=True)
    table = run_cli("query", empty, lfw_image("Aaron_Peirsol", 2), "--index", workspace["index"],
                    "--detector", "none", "-k", 1)
    assert table.exit_code == 1 and "a folder with no images" in table.output and "Aaron_Peirsol" in table.output


def test_cli_no_face_is_an_answer(workspace):
    blank = workspace["root"] / "blank.jpg"
    Image.new("RGB", (320, 240), (200, 180, 160)).save(blank)
    result = run_cli("query", blank, "--index", workspace["index"], "--detector", "hog")
    assert result.exit_code == 0 and "no face found" in result.output


def bad_files(root):
    """(path, what the error must say) for each kind of unusable file."""
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(GROUP_PHOTO.read_bytes()[:3000])
    text = root / "notes.jpg"
    text.write_text("this is not a picture\n")
    enormous = root / "enormous.png"        # 48 megapixels, a few kilobytes on disk
    Image.new("1", (8000, 6000)).save(enormous)
    return [(root / "missing.jpg", "file not found"), (empty, "empty file"),
            (truncated, "truncated"), (text, "not an image"), (enormous, "too large"),
            (root, "directory")]


@pytest.mark.parametrize("command", ["query", "identify"])
def test_cli_bad_photos(workspace, command):
    for path, reason in bad_files(workspace["root"])[:-1]:    # a folder is a batch of photos
        result = run_cli(command, path, "--index", workspace["index"])
        assert result.exit_code == 1, (path, result.output)
        assert reason in result.output and "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit)


def test_cli_verify_bad_photo(workspace):
    for path, reason in bad_files(workspace["root"]):
        result = run_cli("verify", GROUP_PHOTO, path, "--model", workspace["model"])
        assert result.exit_code == 2 and reason in result.output, (path, result.output)


def test_cli_missing_index_and_other_model(workspace):
    photo = lfw_image("Adam_Sandler", 1)
    missing = run_cli("query", photo, "--index", workspace["root"] / "no-index")
    assert missing.exit_code == 1 and "no index at" in missing.output
    other = run_cli("query", photo, "--index", workspace["index"], "--model", workspace["other_model"])
    assert other.exit_code == 1 and "built with model" in other.output
    assert "Traceback" not in missing.output + other.output


def test_cli_help_does_not_load_the_engine():
    code = ("import sys; from search.cli import main\n"
            "try: main(['query', '--help'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('faiss', 'search.engine', 'indexer.gallery', 'dlib') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--detector" in output and output.splitlines()[-1] == "[]"
    # The help states faces.open_set's default without importing it.
    from faces.open_set import DEFAULT_FPIR
    assert f"default {DEFAULT_FPIR} (aimed below" in " ".join(output.split())
