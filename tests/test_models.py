"""An index of several models (`indexer build --models human,dog`): one build finds the human
faces (hog) and the dog faces (the dog detector) in every photo and embeds each with its own
model into its own vector store; one query finds both kinds, each searched among its own
kind and judged by its own model's rule; individuals stay per species; a build killed
between the two stores' snapshots leaves a usable index; the migration goes up and down.

The gallery is small and real: 3 LFW people and 3 held-out DogFaceNet dogs, 2 photos each,
and a made-up photo of the first person beside the first dog (an LFW photo and a
DogFaceNet crop pasted side by side on one canvas, the dog's face at about 30% of the width,
as the dog detector's test photos have it).
"""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces.checkpoint import load_model, save_checkpoint
from faces.detectors import default_detector
from faces.imaging import Preprocess
from faces.models import EmbeddingNet
from indexer.cli import main as indexer_main
from indexer.config import DATABASE_FILE, VECTORS_FILE
from indexer.db import create_sqlite_engine, current_revision, downgrade, open_database
from indexer.store import FaissStore
from search.cli import main as search_main

from conftest import DOGS, LFW, copy_index, invoke_cli, last_json, write_identity_folders

pytestmark = pytest.mark.skipif(not (DOGS.is_dir() and LFW.is_dir()), reason="DogFaceNet or LFW not found")

PEOPLE = ("Colin_Powell", "Tony_Blair", "Serena_Williams")


def held_out_dogs(count: int = 3) -> list[Path]:
    """Dogs neither the dog model nor the dog detector trained on, with 4 photos or more."""
    from trainer.data import scan_identities, split_identities
    samples = scan_identities(DOGS)
    held_out = set(split_identities(sorted({s.identity for s in samples})).choose)
    folders = [DOGS / dog for dog in sorted(held_out, key=str)]
    return [folder for folder in folders if len(list(folder.glob("*.jpg"))) >= 4][:count]


def photos(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def side_by_side(person_photo: Path, dog_photo: Path) -> Image.Image:
    """A person (an LFW photo, 320 px) and a dog's face (a DogFaceNet crop, 200 px: 31% of
    the width) on one 640 x 320 canvas."""
    canvas = Image.new("RGB", (640, 320), (120, 130, 110))
    canvas.paste(Image.open(person_photo).convert("RGB").resize((320, 320)), (0, 0))
    canvas.paste(Image.open(dog_photo).convert("RGB").resize((200, 200)), (400, 60))
    return canvas


def indexer(index: Path, *args) -> tuple[int, str]:
    return invoke_cli(indexer_main, *args, "--index", index)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict:
    """A two-model index of the mixed gallery (built by the CLI, as a user would)."""
    root = tmp_path_factory.mktemp("models")
    gallery = root / "gallery"
    dogs = held_out_dogs()
    for person in PEOPLE:
        (gallery / person).mkdir(parents=True)
        for photo in photos(LFW / person)[:2]:
            shutil.copy(photo, gallery / person / photo.name)
    for dog in dogs:
        (gallery / f"dog_{dog.name}").mkdir(parents=True)
        for photo in photos(dog)[:2]:
            shutil.copy(photo, gallery / f"dog_{dog.name}" / photo.name)
    (gallery / "together").mkdir()
    side_by_side(photos(LFW / PEOPLE[0])[2], photos(dogs[0])[2]).save(gallery / "together" / "walk.jpg")
    index = root / "index"
    code, output = indexer(index, "build", gallery, "--models", "human,dog", "--workers", 0, "--no-progress",
                           "--json")
    assert code == 0, output
    return {"root": root, "gallery": gallery, "index": index, "dogs": dogs, "build": last_json(output)}


@pytest.fixture
def copy(mixed, tmp_path) -> dict:
    """A copy of the two-model index (and its gallery) for one test to change."""
    gallery, index = copy_index(mixed["gallery"], mixed["index"], tmp_path)
    return {**mixed, "gallery": gallery, "index": index}


def rows(index: Path) -> list[tuple[str, str, str]]:
    """(folder, file, species) of every face row."""
    with sqlite3.connect(index / DATABASE_FILE) as db:
        found = db.execute("SELECT path, species FROM images WHERE status = 'indexed' ORDER BY id").fetchall()
    return [(Path(path.decode()).parent.name, Path(path.decode()).name, species) for path, species in found]


def test_one_build_finds_both_species_each_in_its_own_store(mixed):
    index = mixed["index"]
    assert mixed["build"]["images_added"] == 13 and mixed["build"]["skipped"] == 0
    faces = rows(index)
    by_folder = {}
    for folder, _, species in faces:
        by_folder.setdefault(folder, []).append(species)
    for person in PEOPLE:
        assert by_folder[person] == ["human", "human"], (person, by_folder)
    for dog in mixed["dogs"]:
        assert by_folder[f"dog_{dog.name}"] == ["dog", "dog"], (dog, by_folder)
    assert sorted(by_folder["together"]) == ["dog", "human"]       # one photo, a face of each
    # One database, one vector store per model, each holding exactly its species' faces.
    with sqlite3.connect(index / DATABASE_FILE) as db:
        ids = dict(db.execute("SELECT species, group_concat(id) FROM images WHERE status = 'indexed' "
                              "GROUP BY species").fetchall())
        models = db.execute("SELECT name, species, detector FROM models ORDER BY id").fetchall()
    assert models == [("human", "human", default_detector("human")), ("dog", "dog", "dog")]
    for species, store in (("human", VECTORS_FILE), ("dog", "vectors-dog.faiss")):
        stored = sorted(FaissStore.load(index / store).ids().tolist())
        assert stored == sorted(int(i) for i in ids[species].split(","))
    code, output = indexer(index, "stats", "--json")
    stats = last_json(output)
    assert [(m["name"], m["faces"], m["index"]["vectors"]) for m in stats["models"]] == [("human", 7, 7),
                                                                                         ("dog", 7, 7)]
    # Each species' rule counts its own gallery: 3 people + the "together" folder; 3 dogs + it.
    assert [m["decision"]["individuals"] for m in stats["models"]] == [4, 4]
    assert stats["faces"] == 14 and stats["index"]["vectors"] == 14
    code, output = indexer(index, "check", "--json")
    assert code == 0 and last_json(output)["ok"], output


def test_a_photo_with_both_gets_two_faces_each_finding_its_own(mixed, tmp_path):
    dog = mixed["dogs"][1]
    probe = tmp_path / "probe.jpg"
    side_by_side(photos(LFW / PEOPLE[1])[3], photos(dog)[3]).save(probe)
    code, output = invoke_cli(search_main, "query", probe, "--index", mixed["index"], "--k", 3, "--json")
    assert code == 0, output
    result = last_json(output)
    faces = {face["species"]: face for face in result["faces"]}
    assert len(result["faces"]) == 2 and set(faces) == {"human", "dog"}
    assert faces["human"]["box"][2] <= 320 <= faces["dog"]["box"][0]       # the person left, the dog right
    # Each finds its own individual first; the human face is named by the decision too (the
    # dog model's strict rule accepts only 28% of same-dog pairs: its answer may be unknown).
    assert faces["human"]["identity"] == faces["human"]["matches"][0]["identity"] == PEOPLE[1]
    assert faces["dog"]["matches"][0]["identity"] == f"dog_{dog.name}"
    # Each searched among its own kind only ("together" holds a face of each).
    assert all(not m["identity"].startswith("dog_") for m in faces["human"]["matches"])
    assert all(m["identity"].startswith("dog_") or m["identity"] == "together" for m in faces["dog"]["matches"])
    # Each face is judged by its own model's rule, for its own species' gallery size.
    parts = {part["species"]: part for part in result["models"]}
    assert [part["species"] for part in result["models"]] == ["human", "dog"]
    for species, face in faces.items():
        assert face["model"] == species and face["threshold"] == parts[species]["threshold"]
        assert all(m["match"] == (m["distance"] <= face["threshold"]) for m in face["matches"])
        assert parts[species]["decision"]["individuals"] == 4
    assert parts["human"]["threshold"] != parts["dog"]["threshold"]
    # The top-level keys are the first model's, as in a one-model index.
    assert (result["model"], result["species"], result["threshold"], result["detector"]) == (
        "human", "human", parts["human"]["threshold"], default_detector("human"))
    code, output = invoke_cli(search_main, "identify", probe, "--index", mixed["index"])
    assert code == 0 and f"(human)" in output and f"(dog)" in output, output
    assert f"(human)  box ({', '.join(map(str, faces['human']['box']))})  (found by the detector): {PEOPLE[1]}" in output


def test_a_photo_without_either_face_says_what_was_looked_for(mixed, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(blank)
    code, output = invoke_cli(search_main, "query", blank, "--index", mixed["index"], "--json")
    result = last_json(output)
    assert code == 0 and result["faces"] == []
    assert "no human or dog face found" in result["message"] and f"{default_detector('human')}, dog" in result["message"]


def test_clustering_and_new_faces_keep_species_apart(copy, tmp_path):
    index = copy["index"]
    code, output = indexer(index, "cluster", "--threshold", "balanced", "--json")
    assert code == 0, output
    summary = last_json(output)
    assert [(m["species"], m["faces"]) for m in summary["models"]] == [("human", 7), ("dog", 7)]
    with sqlite3.connect(index / DATABASE_FILE) as db:
        mixed_groups = db.execute("SELECT count(*) FROM individuals i JOIN images f ON f.individual = i.id "
                                  "WHERE f.species != i.species").fetchone()[0]
        individual_of = {Path(p.decode()).parent.name + "/" + s: i for p, s, i in db.execute(
            "SELECT path, species, individual FROM images WHERE status = 'indexed'")}
    assert mixed_groups == 0
    person, dog = PEOPLE[2], copy["dogs"][2]
    # A new photo of both (the person's new photo, the dog's gallery one): each face joins
    # its own species' individual, by its own model's rule.
    new = copy["gallery"] / "together" / "park.jpg"
    side_by_side(photos(LFW / person)[3], photos(dog)[1]).save(new)
    code, output = indexer(index, "add", new, "--workers", 0, "--no-progress", "--json")
    report = last_json(output)
    assert code == 0 and report["faces_added"] == 2 and report["individuals_joined"] == 2, output
    with sqlite3.connect(index / DATABASE_FILE) as db:
        joined = {species: individual for path, species, individual in db.execute(
            "SELECT path, species, individual FROM images") if path.decode().endswith("park.jpg")}
    assert joined["human"] == individual_of[f"{person}/human"]
    assert joined["dog"] == individual_of[f"dog_{dog.name}/dog"]


def test_models_are_remembered_and_a_different_choice_refused(copy):
    index = copy["index"]
    code, output = indexer(index, "build", copy["gallery"], "--no-progress", "--json")
    assert code == 0 and last_json(output)["unchanged"] == 13 and last_json(output)["images_added"] == 0
    code, output = indexer(index, "build", copy["gallery"], "--models", "dog,human", "--no-progress", "--json")
    assert code == 0 and last_json(output)["unchanged"] == 13       # the same models, in any order
    code, output = indexer(index, "build", copy["gallery"], "--model", "human", "--no-progress")
    assert code != 0 and "built with models human,dog" in output and "--models human,dog" in output
    code, output = indexer(index, "build", copy["gallery"], "--models", "human-fast,dog", "--no-progress")
    assert code != 0 and "human-fast" in output and "cannot be mixed" in output


def test_two_models_of_one_species_are_refused_before_anything_is_written(tmp_path):
    index = tmp_path / "index"
    code, output = indexer(index, "build", tmp_path, "--models", "human,human-fast", "--no-progress")
    assert code != 0 and "both human models" in output and "one model per species" in output
    with sqlite3.connect(index / DATABASE_FILE) as db:
        assert db.execute("SELECT count(*) FROM models").fetchone() == (0,)


def test_a_build_killed_between_the_two_snapshots_leaves_a_usable_index(copy, monkeypatch):
    """The human store saved, the process killed before the dog store's save: the next
    writer indexes the photo again whole (no file keeps half its faces)."""
    from indexer.writer import IndexWriter
    index, gallery = copy["index"], copy["gallery"]
    new = gallery / "together" / "beach.jpg"
    side_by_side(photos(LFW / PEOPLE[1])[2], photos(copy["dogs"][1])[2]).save(new)
    real_save = FaissStore.save

    class Killed(BaseException):
        pass

    def save_then_die(store, path):
        if Path(path).name == "vectors-dog.faiss":
            raise Killed()
        real_save(store, path)

    monkeypatch.setattr(FaissStore, "save", save_then_die)
    with pytest.raises(Killed):
        with IndexWriter(index, workers=0, progress=False) as writer:
            writer.add([new])
    monkeypatch.setattr(FaissStore, "save", real_save)
    human_ids = FaissStore.load(index / VECTORS_FILE).ids()
    assert len(human_ids) == 8 and len(FaissStore.load(index / "vectors-dog.faiss").ids()) == 7
    # A reader meanwhile sees the old index: the half-saved photo's rows are still pending.
    code, output = indexer(index, "stats", "--json")
    assert code == 0 and last_json(output)["faces"] == 14 and last_json(output)["pending"] == 2
    code, output = indexer(index, "build", gallery, "--workers", 0, "--no-progress", "--json")
    report = last_json(output)
    assert code == 0 and report["images_added"] == 1 and report["faces_added"] == 2, output
    assert sorted(species for folder, name, species in rows(index) if name == "beach.jpg") == ["dog", "human"]
    code, output = indexer(index, "check", "--json")
    assert code == 0 and last_json(output)["ok"] and last_json(output)["check"]["vectors"] == 16, output


def test_one_model_index_is_unchanged(tmp_path, identity_folders, fresh_checkpoint):
    index = tmp_path / "index"
    code, output = indexer(index, "build", identity_folders, "--model", fresh_checkpoint, "--detector", "none",
                           "--workers", 0, "--no-progress", "--json")
    assert code == 0 and last_json(output)["faces_added"] == 30
    assert sorted(p.name for p in index.glob("vectors*")) == [VECTORS_FILE]
    probe = next((identity_folders / "person_00").iterdir())
    code, output = invoke_cli(search_main, "query", probe, "--index", index, "--k", 2, "--json")
    result = last_json(output)
    assert code == 0 and len(result["faces"]) == 1 and result["faces"][0]["matches"][0]["distance"] < 1e-3
    assert [part["species"] for part in result["models"]] == [result["species"]] == ["human"]
    assert result["faces"][0]["threshold"] == result["threshold"] == result["decision"]["threshold"]


def test_migration_0007_up_and_down_on_sqlite(copy):
    database = copy["index"] / DATABASE_FILE
    engine = create_sqlite_engine(database)
    downgrade(engine, "0006")
    assert current_revision(engine) == "0006"
    engine.dispose()
    with sqlite3.connect(database) as db:
        assert "ux_models_species" not in [r[1] for r in db.execute("PRAGMA index_list(models)")]
        assert db.execute("SELECT count(*) FROM models").fetchone() == (2,)
    engine = open_database(database)
    assert current_revision(engine) == "0007"
    engine.dispose()
    with sqlite3.connect(database) as db:
        assert ("ux_models_species", 1) in [(r[1], r[2]) for r in db.execute("PRAGMA index_list(models)")]
        with pytest.raises(sqlite3.IntegrityError, match="species"):
            db.execute("INSERT INTO models (name, source, sha256, embedding_dim, species, threshold, detector, "
                       "added_at) VALUES ('x', 'x', 'x', 128, 'dog', 0.5, 'dog', '2026-01-01')")
    code, output = indexer(copy["index"], "stats", "--json")
    assert code == 0 and [m["species"] for m in last_json(output)["models"]] == ["human", "dog"]


def test_exported_faces_say_their_species(mixed, tmp_path):
    out = tmp_path / "gallery.npz"
    code, output = indexer(mixed["index"], "export", "--out", out)
    assert code == 0, output
    data = np.load(out)
    assert len(data["ids"]) == 14 and sorted(set(data["species"].tolist())) == ["dog", "human"]
    dogs = data["species"] == "dog"
    dims = {name: load_model(name, device="cpu").embedding_dim for name in ("dog", "human")}
    assert dogs.sum() == 7 and data["embeddings"].shape == (14, max(dims.values()))
    assert data["embedding_dims"].tolist() == [dims["dog" if dog else "human"] for dog in dogs]
    assert np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-3)


def test_exported_rows_of_a_narrower_model_are_padded_with_zeros(fresh_checkpoint, tmp_path):
    """Each model's rows are as wide as it says; the narrower model's are padded to the wider's
    (an untrained 128-D human network and a 32-D dog one, every crop a face of each)."""
    torch.manual_seed(2)
    narrow_dog = tmp_path / "dog32.pt"
    save_checkpoint(narrow_dog, EmbeddingNet("small", 32).eval(), Preprocess(64, 1.0), "dog", 0.5)
    gallery = write_identity_folders(tmp_path / "gallery", identities=2, per_identity=3)
    index = tmp_path / "index"
    code, output = invoke_cli(indexer_main, "build", gallery, "--models", f"{fresh_checkpoint},{narrow_dog}",
                              "--index", index, "--detector", "none", "--workers", 0, "--no-progress")
    assert code == 0, output
    out = tmp_path / "gallery.npz"
    code, output = indexer(index, "export", "--out", out)
    assert code == 0, output
    data = np.load(out)
    dogs = data["species"] == "dog"
    assert dogs.sum() == 6 and data["embeddings"].shape == (12, 128)
    assert data["embedding_dims"].tolist() == [32 if dog else 128 for dog in dogs]
    assert not data["embeddings"][dogs, 32:].any() and data["embeddings"][~dogs, 32:].any()
    assert np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-3)


def test_api_and_pages_on_a_two_model_index(mixed, tmp_path):
    from web import create_app
    client = create_app({"INDEX": str(mixed["index"]), "TESTING": True}).test_client()
    page = client.get("/").get_data(as_text=True)
    assert "This gallery holds people and dogs" in page and "the dog face detector for dogs" in page
    probe = tmp_path / "probe.jpg"
    side_by_side(photos(LFW / PEOPLE[2])[3], photos(mixed["dogs"][2])[3]).save(probe)

    def search(**form):
        with open(probe, "rb") as handle:
            return client.post("/api/search", data={"image": (handle, "probe.jpg"), "k": "2", **form})

    answer = search()
    assert answer.status_code == 200
    result = answer.get_json()
    assert [f["species"] for f in result["faces"]] == ["human", "dog"]
    assert result["faces"][0]["identity"] == PEOPLE[2]
    assert result["faces"][1]["matches"][0]["identity"] == f"dog_{mixed['dogs'][2].name}"
    only_dogs = search(species="dog").get_json()
    assert [f["species"] for f in only_dogs["faces"]] == ["dog"] and [m["species"] for m in only_dogs["models"]] == ["dog"]
    refused = search(species="cat")
    assert refused.status_code == 400 and "finds human, dog faces" in refused.get_json()["error"]
    status = client.get("/status").get_data(as_text=True)
    assert 'id="status-models"' in status and "dog for dog faces (7 faces" in status


def test_browser_page_shows_each_face_with_its_kind_and_rule(mixed, tmp_path):
    """The page on `search serve` of a two-model index: two faces, each saying whose face it
    is, and each kind's rule (search.js's two-model paths)."""
    from test_web import CHROMIUM, CHROMIUM_ARGS, running_server
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
    probe = tmp_path / "probe.jpg"
    side_by_side(photos(LFW / PEOPLE[0])[3], photos(mixed["dogs"][0])[3]).save(probe)
    served = {"INDEX": str(mixed["index"]), "MODEL": "human", "DETECTOR": "auto"}
    with running_server(served, tmp_path) as url, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            assert "This gallery holds people and dogs" in page.inner_text(".lead")
            page.set_input_files("#image-input", str(probe))
            page.wait_for_selector("#results:not([hidden]), #message.is-error", timeout=60_000)
            assert page.inner_text("#summary") == "2 faces found."
            assert page.locator(".face-box").count() == 2
            found = page.locator(".found-by").all_inner_texts()
            assert found == [f"A person's face. Found by the face detector ({default_detector('human')}).",
                             "A dog's face. Found by the face detector (dog)."]
            rule = page.inner_text("#operating-point")
            assert rule.startswith("People: A match is a gallery face within distance") and " Dogs: A match" in rule
            assert page.locator(".verdict").first.inner_text().startswith(f"Best match: {PEOPLE[0].replace('_', ' ')}")
        finally:
            browser.close()
