"""Both vector stores behind one protocol: FAISS (the default) and Milvus Lite (a real
milvus-lite file, as `indexer build --store milvus:FILE` makes); the FAISS halves run
without the [milvus] extra. The same operations give the
same answers; the same gallery built into each answers `search query` with the same top 5,
and add, remove and check behave alike through the command line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faces.imaging import load_image
from indexer.cli import main as indexer_main
from indexer.settings import SETTINGS_FILE, IndexSettings, SettingsError, load_settings, parse_store
from indexer.store import FaissStore
from search.cli import main as search_main

from conftest import identity_image, invoke_cli, last_json, write_identity_folders

def milvus_lite_or_skip() -> None:
    """FAISS runs everywhere; the Milvus half of each test needs the [milvus] extra."""
    pytest.importorskip("pymilvus", reason="Milvus tests need pip install 'facesearch[milvus]'")
    pytest.importorskip("milvus_lite", reason="Milvus Lite tests need pip install 'facesearch[milvus]'")


BACKENDS = ["faiss", "milvus"]


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Backend:
    """Make, save and reopen one store of either kind, the way the indexer does."""

    def __init__(self, kind: str, folder: Path):
        if kind == "milvus":
            milvus_lite_or_skip()
        self.kind, self.folder = kind, folder
        self.settings = IndexSettings(store="faiss" if kind == "faiss" else parse_store(f"milvus:{folder / 'm.db'}"))

    def create(self, dim: int, index_type: str, training: np.ndarray):
        if self.kind == "faiss":
            return FaissStore.create(dim, index_type, training if index_type == "ivf" else None)
        from indexer.milvus_store import MilvusStore
        store = MilvusStore.open(self.settings.milvus, dim)
        return store.converted(index_type) if index_type != "flat" else store

    def reopen(self, store, dim: int):
        store.save(self.folder / "v.faiss")
        store.close()
        if self.kind == "faiss":
            return FaissStore.load(self.folder / "v.faiss")
        from indexer.milvus_store import MilvusStore
        return MilvusStore.open(self.settings.milvus, dim)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_store_keeps_database_ids_through_remove_save_and_reopen(kind, index_type, tmp_path):
    backend = Backend(kind, tmp_path)
    vectors = unit_vectors(400)
    ids = np.arange(400, dtype=np.int64) * 3 + 1000        # not 0..n-1: the store must keep ours
    store = backend.create(16, index_type, vectors)
    store.add(ids, vectors)
    assert store.ntotal == 400
    # Ids that are not there do not count: Milvus' delete answers every id it was given.
    assert store.remove(np.concatenate([ids[:10], [7, 8, 9]])) == 10 and store.ntotal == 390
    assert store.remove([7]) == 0
    store = backend.reopen(store, 16)
    try:
        assert store.index_type == index_type and sorted(store.ids().tolist()) == sorted(ids[10:].tolist())
        scores, found = store.search(vectors[10:20], k=3)
        assert found.shape == (10, 3) and found[:, 0].tolist() == ids[10:20].tolist()
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        exact = vectors[10:] @ vectors[10:20].T          # the true top 3 by inner product
        assert found[:, 1].tolist() == [ids[10:][np.argsort(-exact[:, j])[1]] for j in range(10)]
        np.testing.assert_allclose(store.vectors(ids[[52, 50]]), vectors[[52, 50]], atol=1e-6)
        converted = store.converted("flat" if index_type != "flat" else "hnsw")
        assert sorted(converted.ids().tolist()) == sorted(ids[10:].tolist())
        _, few = converted.search(vectors[:1], k=1000)       # k beyond the size: all, no padding
        assert few.shape == (1, 390) and set(few[0].tolist()) == set(ids[10:].tolist())
    finally:
        store.close()


def test_store_flag_is_checked_and_kept_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_store("milvus:faces.db") == f"milvus:{tmp_path / 'faces.db'}#facesearch"
    assert parse_store("milvus:http://milvus:19530#lfw") == "milvus:http://milvus:19530#lfw"
    assert parse_store(None) == parse_store("faiss") == "faiss"
    for bad in ("milvus:", "redis://x", "milvus:x.db#9lives"):
        with pytest.raises(SettingsError, match="--store"):
            parse_store(bad)


# --- the same gallery through the command line, in both stores ------------------------------

@pytest.fixture(scope="module")
def checkpoint(fresh_checkpoint) -> Path:
    return fresh_checkpoint


run = invoke_cli


def top5(index: Path, photos: list[Path]) -> list[list[tuple[str, float]]]:
    code, output = run(search_main, "query", *photos, "--index", index, "-k", 5, "--detector", "none", "--json")
    assert code == 0, output
    answers = [json.loads(line) for line in output.strip().splitlines() if line.startswith("{")]
    return [[(m["path"], round(m["distance"], 4)) for m in answer["faces"][0]["matches"]] for answer in answers]


def test_faiss_and_milvus_lite_answer_alike_through_build_search_add_remove_check(tmp_path, checkpoint):
    milvus_lite_or_skip()
    gallery = write_identity_folders(tmp_path / "gallery", identities=4, per_identity=4)
    photos = [gallery / f"person_0{i}" / f"person_0{i}_0002.jpg" for i in range(4)]
    extra = tmp_path / "extra.jpg"
    identity_image(2, 9).save(extra)
    indexes = {"faiss": tmp_path / "faiss-index", "milvus": tmp_path / "milvus-index"}
    answers = {}
    for kind, index in indexes.items():
        store = [] if kind == "faiss" else ["--store", f"milvus:{tmp_path / 'lite.db'}"]
        code, output = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--detector",
                           "none", "--workers", 0, "--no-progress", "--json", *store)
        assert code == 0 and last_json(output)["faces_added"] == 16, output
        found = [top5(index, photos)]
        code, output = run(indexer_main, "add", extra, "--identity", "person_02", "--index", index, "--workers", 0,
                           "--no-progress", "--json")                        # no --store: remembered
        assert code == 0 and last_json(output)["faces_added"] == 1
        code, output = run(indexer_main, "remove", "--identity", "person_00", "--index", index, "--json")
        assert code == 0 and last_json(output)["removed"] == 4
        found.append(top5(index, photos[1:] + [extra]))
        code, output = run(indexer_main, "check", "--index", index, "--sample", 13, "--json", "--no-progress")
        report = last_json(output)
        assert code == 0 and report["ok"] and (report["check"]["indexed"], report["check"]["vectors"]) == (13, 13)
        code, output = run(indexer_main, "stats", "--index", index, "--json")
        assert code == 0 and last_json(output)["index"] == {"type": "flat", "vectors": 13}
        code, output = run(indexer_main, "export", "--index", index, "--out", tmp_path / f"{kind}.npz")
        assert code == 0 and "exported 13 faces" in output
        answers[kind] = found
    # The same faces in the same order; distances alike to float32 rounding, which the square
    # root in sqrt(2 - 2 cos) magnifies near 0 (a self-match reads 0.0 or 0.0003).
    paths = {kind: [[[path for path, _ in matches] for matches in answer] for answer in found]
             for kind, found in answers.items()}
    assert paths["milvus"] == paths["faiss"]
    for faiss_answer, milvus_answer in zip(answers["faiss"], answers["milvus"]):
        for faiss_matches, milvus_matches in zip(faiss_answer, milvus_answer):
            assert np.allclose([d for _, d in faiss_matches], [d for _, d in milvus_matches], atol=1e-3)
    assert all(len(matches) == 5 for matches in answers["faiss"][0])
    assert answers["faiss"][0][0][0][0] == "person_00/person_00_0002.jpg" and answers["faiss"][0][0][0][1] < 1e-3
    assert load_settings(indexes["milvus"]).milvus.uri == str(tmp_path / "lite.db")
    assert not (indexes["faiss"] / SETTINGS_FILE).exists()      # a default index is as before
    faiss_export, milvus_export = (np.load(tmp_path / f"{kind}.npz") for kind in indexes)
    order = np.argsort(faiss_export["paths"]), np.argsort(milvus_export["paths"])
    np.testing.assert_allclose(faiss_export["embeddings"][order[0]], milvus_export["embeddings"][order[1]], atol=1e-6)


def test_an_index_cannot_move_to_another_store(tmp_path, checkpoint):
    milvus_lite_or_skip()
    gallery = write_identity_folders(tmp_path / "gallery", identities=1, per_identity=2)
    index = tmp_path / "index"
    code, _ = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                  "--workers", 0, "--no-progress", "--store", f"milvus:{tmp_path / 'a.db'}")
    assert code == 0
    code, output = run(indexer_main, "build", gallery, "--index", index, "--no-progress",
                       "--store", f"milvus:{tmp_path / 'b.db'}")
    assert code == 1 and "an index cannot move" in output and "Traceback" not in output


def test_an_unreachable_milvus_is_one_line_naming_it_and_nothing_is_kept(tmp_path, checkpoint):
    milvus_lite_or_skip()
    gallery = write_identity_folders(tmp_path / "gallery", identities=1, per_identity=1)
    index = tmp_path / "index"
    code, output = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--no-progress",
                       "--store", "milvus:http://127.0.0.1:1")              # nothing listens on port 1
    assert code == 1 and output.startswith("Error: milvus:http://127.0.0.1:1: cannot connect (")
    assert "Traceback" not in output and not (index / SETTINGS_FILE).exists()
    code, output = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--no-progress",
                       "--detector", "none", "--workers", 0, "--store", f"milvus:{tmp_path / 'lite.db'}")
    assert code == 0, output                                    # the right URI then makes the index


@pytest.mark.parametrize("kind", BACKENDS)
def test_check_finds_lost_vectors_and_repair_restores_them_in_either_store(kind, tmp_path, checkpoint):
    if kind == "milvus":
        milvus_lite_or_skip()
    gallery = write_identity_folders(tmp_path / "gallery", identities=2, per_identity=3)
    index = tmp_path / "index"
    store = [] if kind == "faiss" else ["--store", f"milvus:{tmp_path / 'lite.db'}"]
    code, _ = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                  "--workers", 0, "--no-progress", *store)
    assert code == 0
    from indexer.writer import IndexWriter
    with IndexWriter(index, progress=False) as writer:        # damage: two vectors go, rows stay
        lost = np.sort(writer.store.ids())[:2]
        assert writer.store.remove(lost) == 2
        writer.store.save(writer.vectors_path)
    code, output = run(indexer_main, "check", "--index", index, "--json", "--no-progress")
    report = last_json(output)
    assert code == 1 and report["check"]["problems"][0].startswith("2 indexed faces have no vector")
    code, output = run(indexer_main, "check", "--index", index, "--repair", "--json", "--no-progress")
    report = last_json(output)
    assert code == 0 and report["ok"] and report["repair"]["faces_added"] == 2
    assert report["after_repair"]["vectors"] == 6


def test_search_serve_answers_from_a_milvus_lite_index_with_no_flag(tmp_path, checkpoint):
    milvus_lite_or_skip()
    from web import create_app
    gallery = write_identity_folders(tmp_path / "gallery", identities=2, per_identity=3)
    index = tmp_path / "index"
    code, _ = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                  "--workers", 0, "--no-progress", "--store", f"milvus:{tmp_path / 'lite.db'}")
    assert code == 0
    client = create_app({"INDEX": str(index), "DETECTOR": "none", "TESTING": True}).test_client()
    photo = gallery / "person_01" / "person_01_0003.jpg"
    response = client.post("/api/search", data={"image": (photo.open("rb"), "photo.jpg"), "k": "3"})
    assert response.status_code == 200, response.get_json()
    best = response.get_json()["faces"][0]["matches"][0]
    assert best["path"] == "person_01/person_01_0003.jpg" and best["distance"] < 1e-3
    assert client.get(f"/thumb/{best['id']}").status_code == 200
    assert client.get("/api/health").get_json()["gallery"]["vectors"] == 6


def test_auto_index_type_switches_milvus_to_ivf_above_the_size_limit(tmp_path, checkpoint, monkeypatch):
    milvus_lite_or_skip()
    from indexer import Gallery
    from indexer import store as store_module
    from indexer.writer import IndexWriter
    monkeypatch.setattr(store_module, "TRAINED_INDEX_MIN_SIZE", 8)
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=4)
    with IndexWriter(tmp_path / "index", create=True, model=str(checkpoint), detector="none", workers=0,
                     progress=False, store=f"milvus:{tmp_path / 'lite.db'}") as writer:
        assert writer.build(gallery).index_type == "ivf"
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["index"] == {"type": "ivf", "vectors": 12}
        probe = gallery / "person_02" / "person_02_0004.jpg"
        best = view.search(view.load_model().embed_images([load_image(probe)]), k=3)[0][0]
        assert best["path"] == str(probe) and best["distance"] < 1e-3


def test_a_two_model_index_keeps_one_milvus_collection_per_model(tmp_path, checkpoint, fresh_dog_checkpoint):
    """`--models` with `--store milvus:`: the first model's vectors in the collection named,
    the other's in COLLECTION_dog; search, remove and check see both."""
    milvus_lite_or_skip()
    from pymilvus import MilvusClient
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=3)
    index, lite = tmp_path / "index", tmp_path / "lite.db"
    code, output = run(indexer_main, "build", gallery, "--models", f"{checkpoint},{fresh_dog_checkpoint}",
                       "--index", index, "--detector", "none", "--workers", 0, "--no-progress", "--json",
                       "--store", f"milvus:{lite}#faces")
    assert code == 0 and last_json(output)["faces_added"] == 18, output
    probe = gallery / "person_02" / "person_02_0003.jpg"
    code, output = run(search_main, "query", probe, "--index", index, "-k", 2, "--json")
    result = last_json(output)
    assert code == 0 and [f["species"] for f in result["faces"]] == ["human", "dog"]
    assert all(f["matches"][0]["path"] == "person_02/person_02_0003.jpg" for f in result["faces"])
    code, output = run(indexer_main, "remove", "--identity", "person_00", "--index", index, "--json")
    assert code == 0 and last_json(output)["removed"] == 6
    code, output = run(indexer_main, "check", "--index", index, "--json", "--no-progress")
    assert code == 0 and last_json(output)["ok"] and last_json(output)["check"]["vectors"] == 12, output
    client = MilvusClient(str(lite))
    try:
        assert sorted(client.list_collections()) == ["faces", "faces_dog"]
        assert [client.query(name, filter="id >= 0", output_fields=["id"]).__len__()
                for name in ("faces", "faces_dog")] == [6, 6]
    finally:
        client.close()
