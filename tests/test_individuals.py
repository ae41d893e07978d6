"""Individuals: `indexer cluster` stores them, builds and adds keep them, users name, merge,
split and forget them (CLI and JSON API), names flow into `search identify`, and the
migration goes up and down. On a small real index: 4 LFW people, 3 photos each, embedded
by the bundled `human` model (cropped faces, --detector none)."""
from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from indexer.cli import main as indexer_main
from indexer.config import DATABASE_FILE
from indexer.db import create_sqlite_engine, current_revision, downgrade, open_database, upgrade
from indexer.lock import IndexLock
from search.cli import main as search_main

from conftest import LFW, copy_index, invoke_cli, last_json

PEOPLE = ("Colin_Powell", "Tony_Blair", "Serena_Williams", "Hugo_Chavez")
pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW images not found at {LFW}")


def photos(person: str) -> list[Path]:
    return sorted((LFW / person).iterdir())


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> dict:
    """A clustered index (one individual per person) of a gallery copied to a temporary folder."""
    root = tmp_path_factory.mktemp("individuals")
    gallery = root / "gallery"
    for person in PEOPLE:
        (gallery / person).mkdir(parents=True)
        for photo in photos(person)[:3]:
            shutil.copy(photo, gallery / person / photo.name)
    index = root / "index"
    code, output = invoke_cli(indexer_main, "build", gallery, "--index", index, "--detector", "none",
                              "--workers", 0, "--no-progress", "--json")
    assert code == 0 and last_json(output)["faces_added"] == 12, output
    code, output = invoke_cli(indexer_main, "cluster", "--index", index, "--threshold", "balanced", "--json")
    assert code == 0, output
    return {"gallery": gallery, "index": index}


@pytest.fixture
def library(grouped, tmp_path) -> dict:
    """A copy of the grouped index and its gallery for one test to change."""
    gallery, index = copy_index(grouped["gallery"], grouped["index"], tmp_path)
    return {"gallery": gallery, "index": index}


def indexer(library, *args):
    return invoke_cli(indexer_main, *args, "--index", library["index"])


def listing(library) -> list[dict]:
    code, output = indexer(library, "individuals", "--json")
    assert code == 0, output
    return last_json(output)["individuals"]


def by_person(library) -> dict[str, dict]:
    """{person: individual} from each individual's faces' folders (each must hold one person)."""
    found = {}
    for individual in listing(library):
        code, output = indexer(library, "individuals", individual["id"], "--json")
        folders = {face["identity"] for face in last_json(output)["face_list"]}
        assert len(folders) == 1, folders
        found[folders.pop()] = {**individual, "faces_list": last_json(output)["face_list"]}
    return found


def identify(library, photo) -> dict:
    code, output = invoke_cli(search_main, "identify", photo, "--index", library["index"], "--json")
    assert code == 0, output
    return last_json(output)["faces"][0]


def test_cluster_makes_one_individual_per_person_largest_first(library):
    people = by_person(library)
    assert sorted(people) == sorted(PEOPLE)
    assert all((p["faces"], p["photos"], p["species"], p["name"]) == (3, 3, "human", None) for p in people.values())
    code, output = indexer(library, "individuals")
    assert code == 0 and output.splitlines()[0] == "4 individuals:" and "unnamed" in output
    indexer(library, "name", people["Tony_Blair"]["id"], "Tony")
    code, output = indexer(library, "stats", "--json")
    assert (last_json(output)["individuals"], last_json(output)["named_individuals"]) == (4, 1)


def test_a_name_is_the_identity_identify_answers_and_matches_carry_the_individual(library):
    colin = by_person(library)["Colin_Powell"]
    probe = library["gallery"] / "Colin_Powell" / photos("Colin_Powell")[0].name
    before = identify(library, probe)
    assert before["identity"] == "Colin_Powell"
    assert before["matches"][0]["individual"] == colin["id"]
    code, output = indexer(library, "name", colin["id"], "General Powell")
    assert code == 0 and "General Powell" in output
    after = identify(library, probe)
    assert after["identity"] == "General Powell" and after["matches"][0]["identity"] == "General Powell"
    tony = library["gallery"] / "Tony_Blair" / photos("Tony_Blair")[0].name
    assert identify(library, tony)["identity"] == "Tony_Blair"      # no name given: the folder's
    code, output = indexer(library, "name", colin["id"])             # no NAME: the name goes
    assert code == 0 and identify(library, probe)["identity"] == "Colin_Powell"


def test_new_faces_join_their_individual_or_start_one_and_removal_keeps_the_rest(library):
    people = by_person(library)
    colin = people["Colin_Powell"]
    indexer(library, "name", colin["id"], "Colin")
    fourth = library["gallery"] / "Colin_Powell" / photos("Colin_Powell")[3].name
    shutil.copy(photos("Colin_Powell")[3], fourth)
    code, output = indexer(library, "add", fourth, "--no-progress", "--json")
    report = last_json(output)
    assert code == 0 and (report["individuals_joined"], report["individuals_new"]) == (1, 0), report
    stranger = library["gallery"] / "Laura_Bush" / photos("Laura_Bush")[0].name
    stranger.parent.mkdir()
    shutil.copy(photos("Laura_Bush")[0], stranger)
    code, output = indexer(library, "build", library["gallery"], "--no-progress", "--json")
    assert code == 0 and last_json(output)["individuals_new"] == 1
    after = by_person(library)
    assert after["Colin_Powell"]["id"] == colin["id"] and after["Colin_Powell"]["faces"] == 4
    assert after["Colin_Powell"]["name"] == "Colin" and after["Laura_Bush"]["faces"] == 1
    code, output = indexer(library, "remove", fourth, "--json")
    assert code == 0 and by_person(library)["Colin_Powell"]["faces"] == 3
    code, output = indexer(library, "remove", "--identity", "Tony_Blair", "--json")
    assert code == 0 and "Tony_Blair" not in by_person(library)
    assert len(listing(library)) == 4     # Tony's individual went with his last face


def test_recluster_keeps_ids_and_names(library):
    before = by_person(library)
    indexer(library, "name", before["Serena_Williams"]["id"], "Serena")
    code, output = indexer(library, "cluster", "--threshold", "balanced", "--json")
    assert code == 0 and last_json(output)["individuals"]["kept"] == 4
    after = by_person(library)
    assert {p: i["id"] for p, i in after.items()} == {p: i["id"] for p, i in before.items()}
    assert after["Serena_Williams"]["name"] == "Serena"


def test_merge_split_and_forget(library):
    people = by_person(library)
    colin, tony = people["Colin_Powell"]["id"], people["Tony_Blair"]["id"]
    indexer(library, "name", tony, "Tony")
    code, output = indexer(library, "merge", colin, tony, "--json")
    merged = last_json(output)
    assert code == 0 and (merged["id"], merged["faces"], merged["name"]) == (colin, 6, "Tony")
    assert tony not in [i["id"] for i in listing(library)]
    code, output = indexer(library, "merge", colin, 999999)
    assert code == 1 and output.strip() == "Error: no individual 999999"
    wrong = [f["id"] for f in merged["face_list"] if f["identity"] == "Tony_Blair"]
    code, output = indexer(library, "split", colin, *wrong, "--json")
    assert code == 0 and last_json(output)["faces"] == 3 and by_person(library)["Colin_Powell"]["faces"] == 3

    serena = people["Serena_Williams"]
    probe = library["gallery"] / "Serena_Williams" / photos("Serena_Williams")[0].name
    with IndexLock(library["index"]):        # a build is running: refused, nothing lost
        code, output = indexer(library, "forget", serena["id"])
    assert code == 1 and "another indexer process" in output and "Serena_Williams" in by_person(library)
    code, output = indexer(library, "forget", serena["id"], "--json")
    assert code == 0 and last_json(output)["removed"] == 3
    assert probe.is_file()                   # the photo stays on disk
    assert "Serena_Williams" not in by_person(library)
    assert all(m["identity"] != "Serena_Williams" for m in identify(library, probe)["matches"])
    code, output = indexer(library, "check", "--json", "--no-progress")
    assert code == 0 and last_json(output)["ok"] and last_json(output)["check"]["indexed"] == 9


def test_merging_across_species_is_refused(library):
    people = by_person(library)
    with sqlite3.connect(library["index"] / DATABASE_FILE) as db:     # as a two-model index would hold
        db.execute("UPDATE individuals SET species = 'dog' WHERE id = ?", (people["Hugo_Chavez"]["id"],))
    code, output = indexer(library, "merge", people["Colin_Powell"]["id"], people["Hugo_Chavez"]["id"])
    assert code == 1 and "cannot merge individuals of different species" in output
    assert len(listing(library)) == 4


@pytest.mark.parametrize("name, problem", [("", "cannot be empty"), ("   ", "cannot be empty"),
                                           ("x" * 10_000, "at most 100 characters"),
                                           ("Rex\x00", "control"), ("Rex\nSecond line", "control"),
                                           ("Rex\u202e", "control")])
def test_unusable_names_are_refused_in_one_line(library, name, problem):
    individual = listing(library)[0]
    code, output = indexer(library, "name", individual["id"], name)
    assert code == 1 and problem in output and len(output.strip().splitlines()) == 1
    assert listing(library)[0]["name"] is None


def test_individuals_migration_down_and_up_keeps_faces(library):
    database = library["index"] / DATABASE_FILE
    engine = create_sqlite_engine(database)
    downgrade(engine, "0005")
    assert current_revision(engine) == "0005"
    engine.dispose()
    with sqlite3.connect(database) as db:
        assert "individual" not in [c[1] for c in db.execute("PRAGMA table_info(images)")]
        assert "individuals" not in [t[0] for t in db.execute("SELECT name FROM sqlite_master")]
        assert db.execute("SELECT count(*) FROM images").fetchone() == (12,)
    engine = open_database(database)
    assert current_revision(engine) == "0007"
    engine.dispose()
    assert listing(library) == []            # grouped again by the next `indexer cluster`
    code, output = indexer(library, "cluster", "--threshold", "balanced")
    assert code == 0 and len(listing(library)) == 4


# --- the JSON API -----------------------------------------------------------------------------

@pytest.fixture
def api(library):
    from web import create_app
    app = create_app({"INDEX": str(library["index"]), "DETECTOR": "none", "TESTING": True})
    return app.test_client()


def test_api_lists_largest_first_and_shows_one_with_its_faces(api, library):
    body = api.get("/api/individuals").get_json()
    assert body["total"] == 4 and body["offset"] == 0 and len(body["individuals"]) == 4
    first = body["individuals"][0]
    assert set(first) == {"id", "species", "name", "cover", "faces", "photos"}
    paged = api.get("/api/individuals?offset=1&limit=2").get_json()
    assert [i["id"] for i in paged["individuals"]] == [i["id"] for i in body["individuals"][1:3]]
    assert api.get("/api/individuals?species=dog").get_json()["total"] == 0
    one = api.get(f"/api/individuals/{first['id']}").get_json()
    assert len(one["faces_list"]) == 3 and one["faces_list"][0]["path"].count("/") == 1   # relative paths
    assert api.get(f"/thumb/{one['faces_list'][0]['id']}").status_code == 200
    assert api.get(f"/photo/{one['faces_list'][0]['id']}").mimetype == "image/jpeg"
    missing = api.get("/api/individuals/999999")
    assert missing.status_code == 404 and missing.get_json() == {"error": "no individual 999999"}
    assert api.get("/api/individuals?limit=lots").status_code == 400


@pytest.mark.parametrize("name, status, problem", [
    ("", 400, "cannot be empty"), ("x" * 10_000, 400, "at most 100 characters"),
    ("Rex\x07", 400, "control"), (42, 400, "must be text"), ("<script>alert(1)</script>", 200, None),
])
def test_api_rename_checks_the_name(api, name, status, problem):
    individual = api.get("/api/individuals").get_json()["individuals"][0]["id"]
    response = api.post(f"/api/individuals/{individual}", json={"name": name})
    assert response.status_code == status, response.get_json()
    if problem:
        assert problem in response.get_json()["error"]
    else:
        assert response.get_json()["name"] == name       # kept as text; pages show it as text
    assert api.post(f"/api/individuals/{individual}", data="name=Rex").status_code == 415
    assert api.post("/api/individuals/999999", json={"name": "Rex"}).status_code == 404


def test_api_two_renames_at_once_both_answer_and_the_last_wins(api):
    import threading
    individual = api.get("/api/individuals").get_json()["individuals"][0]["id"]
    statuses, barrier = [], threading.Barrier(2)

    def rename(name):
        barrier.wait()
        statuses.append(api.post(f"/api/individuals/{individual}", json={"name": name}).status_code)
    threads = [threading.Thread(target=rename, args=(name,)) for name in ("Rex", "Fido")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    assert api.get(f"/api/individuals/{individual}").get_json()["name"] in ("Rex", "Fido")
    assert api.post(f"/api/individuals/{individual}", json={"name": "Max"}).get_json()["name"] == "Max"


def test_api_merge_split_and_forget(api, library):
    ids = [i["id"] for i in api.get("/api/individuals").get_json()["individuals"]]
    assert api.post("/api/individuals/merge", json={"ids": [ids[0]]}).status_code == 400
    assert api.post("/api/individuals/merge", json={"ids": "1,2"}).status_code == 400
    missing = api.post("/api/individuals/merge", json={"ids": [ids[0], 999999]})
    assert missing.status_code == 404 and "999999" in missing.get_json()["error"]
    with sqlite3.connect(library["index"] / DATABASE_FILE) as db:
        db.execute("UPDATE individuals SET species = 'dog' WHERE id = ?", (ids[3],))
    across = api.post("/api/individuals/merge", json={"ids": [ids[0], ids[3]]})
    assert across.status_code == 400 and "different species" in across.get_json()["error"]
    merged = api.post("/api/individuals/merge", json={"ids": [ids[0], ids[1]]})
    assert merged.status_code == 200 and merged.get_json()["faces"] == 6
    face = merged.get_json()["faces_list"][-1]["id"]
    split = api.post(f"/api/individuals/{ids[0]}/split", json={"faces": [face]})
    assert split.status_code == 200 and split.get_json()["faces"] == 1
    assert api.post(f"/api/individuals/{ids[0]}/split", json={"faces": [face]}).status_code == 404
    with IndexLock(library["index"]):        # a build is running: refused, nothing lost
        busy = api.delete(f"/api/individuals/{ids[2]}")
        assert busy.status_code == 409 and "try again" in busy.get_json()["error"]
        assert api.post("/api/individuals/merge", json={"ids": [ids[0], ids[2]]}).status_code == 409
    assert api.get(f"/api/individuals/{ids[2]}").get_json()["faces"] == 3
    done = api.delete(f"/api/individuals/{ids[2]}")
    assert done.status_code == 200 and done.get_json()["faces_removed"] == 3
    assert api.get(f"/api/individuals/{ids[2]}").status_code == 404
    assert api.get("/api/health").get_json()["gallery"]["faces"] == 9


def test_api_changes_need_the_key_when_one_is_set(library):
    from web import create_app
    client = create_app({"INDEX": str(library["index"]), "DETECTOR": "none", "TESTING": True,
                         "API_KEY": "sesame"}).test_client()
    key = {"Authorization": "Bearer sesame"}
    assert client.get("/people").status_code == 200          # the page shell holds no gallery data
    assert client.get("/api/individuals").status_code == 401
    individual = client.get("/api/individuals", headers=key).get_json()["individuals"][0]["id"]
    assert client.post(f"/api/individuals/{individual}", json={"name": "Rex"}).status_code == 401
    assert client.delete(f"/api/individuals/{individual}").status_code == 401
    assert client.post(f"/api/individuals/{individual}", json={"name": "Rex"}, headers=key).status_code == 200


# --- the People & pets pages in Chromium ------------------------------------------------------

from test_web import browser, running_server, wait_until   # noqa: E402,F401  (fixtures too)


def test_browser_people_and_pets(browser, library, tmp_path):
    index = {"INDEX": str(library["index"]), "MODEL": "human", "DETECTOR": "none"}
    dialogs = []
    with running_server(index, tmp_path) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        try:
            # A search's matches link to their individual's page.
            page.goto(url)
            page.set_input_files("#image-input", str(photos("Hugo_Chavez")[0]))
            page.wait_for_selector("#faces .match", timeout=30_000)
            link = page.locator("#faces .match .individual-link").first
            assert link.is_visible() and re.fullmatch(r"/people/\d+", link.get_attribute("href"))
            page.goto(f"{url}/people")
            wait_until(page, "document.querySelectorAll('#individuals .individual').length === 4")
            cards = page.locator("#individuals .individual")
            assert cards.first.locator(".name").inner_text() == "unnamed"
            assert cards.first.locator(".details").inner_text() == "person · 3 photos"
            wait_until(page, "document.querySelector('#individuals .thumb').naturalWidth > 0")
            # Merge two: the grid then holds three, the first with 6 photos.
            cards.nth(0).locator(".select").check()
            assert page.locator("#merge-button").is_disabled()
            cards.nth(1).locator(".select").check()
            page.click("#merge-button")
            wait_until(page, "document.querySelectorAll('#individuals .individual').length === 3")
            assert page.locator("#individuals .individual .details").first.inner_text() == "person · 6 photos"
            # One individual's page: rename (HTML stays text), move a face out, forget.
            page.click("#individuals .individual .open >> nth=0")
            wait_until(page, "document.querySelectorAll('#individual-faces .face-card').length === 6")
            wait_until(page, "document.querySelector('#individual-faces .whole').naturalWidth > 0")
            page.fill("#name-input", "<b>Colin</b> & co")
            page.click("#rename-form button[type=submit]")
            wait_until(page, "document.getElementById('individual-name').textContent === '<b>Colin</b> & co'")
            assert page.locator("#individual-name b").count() == 0
            page.locator("#individual-faces .move-out").last.click()
            wait_until(page, "document.querySelectorAll('#individual-faces .face-card').length === 5")
            page.click("#forget-button")
            wait_until(page, "document.getElementById('people-message').textContent.startsWith('Forgotten: 5 faces')")
            assert dialogs and dialogs[-1].startswith("Forget <b>Colin</b> & co?")
            page.goto(f"{url}/people")
            wait_until(page, "document.querySelectorAll('#individuals .individual').length === 3")
            names = page.locator("#individuals .individual .name").all_inner_texts()
            assert "<b>Colin</b> & co" not in names
        finally:
            context.close()
