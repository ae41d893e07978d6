"""The gallery index as a library: builds, incremental changes, bad input, migrations, the
vector store. Real SQLite files and FAISS indexes in tmp_path, small generated images."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import faces.detectors
from indexer import Gallery, IndexBusyError, IndexMissingError, ModelMismatchError
from indexer import store as store_module
from indexer.config import DATABASE_FILE, INDEX_ENV_VAR, VECTORS_FILE, resolve_index_dir
from indexer.db import current_revision, downgrade, head_revision, open_database, upgrade, create_sqlite_engine
from indexer.lock import IndexLock
from indexer.store import FaissStore
from indexer.writer import IndexWriter
from faces.checkpoint import load_model, save_checkpoint
from faces.detectors import Face
from faces.imaging import Preprocess, load_image
from faces.models import EmbeddingNet

from conftest import LFW, identity_image, write_identity_folders



def make_checkpoint(path: Path, seed: int = 0, threshold: float = 1.0) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", threshold)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "fresh.pt")


@pytest.fixture
def gallery(tmp_path) -> Path:
    """3 identities x 4 images, plus one image in the root (no identity)."""
    root = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=4)
    identity_image(9, 0).save(root / "loose.jpg")
    return root


@pytest.fixture
def open_writer(tmp_path, checkpoint):
    def opener(**options) -> IndexWriter:
        # Generated pictures hold no real faces: take each whole image as the face.
        options = {"create": True, "model": str(checkpoint), "detector": "none", "workers": 0,
                   "progress": False, **options}
        return IndexWriter(tmp_path / "index", **options)
    return opener


def stored_and_database_ids(index: Path) -> tuple[list[int], list[int]]:
    stored = sorted(FaissStore.load(index / VECTORS_FILE).ids().tolist())
    with sqlite3.connect(index / DATABASE_FILE) as db:
        rows = [r[0] for r in db.execute("SELECT id FROM images WHERE status='indexed' ORDER BY id")]
    return stored, rows


def embed_file(gallery_view: Gallery, path: Path) -> np.ndarray:
    return gallery_view.load_model().embed_images([load_image(path)])


# --- building -------------------------------------------------------------------------------

def test_build_indexes_every_image_and_finds_it_again(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        report = writer.build(gallery)
    assert (report.images_added, report.faces_added, report.skipped) == (13, 13, 0)
    stored, rows = stored_and_database_ids(tmp_path / "index")
    assert stored == rows and len(rows) == 13

    with Gallery.open(tmp_path / "index") as view:
        stats = view.stats()
        assert (stats["images"], stats["identities"], stats["index"]["type"]) == (13, 3, "flat")
        assert view.species == "human" and view.threshold == 1.0 and len(view.model_sha256) == 64
        probe = gallery / "person_01" / "person_01_0002.jpg"
        best = view.search(embed_file(view, probe), k=3)[0][0]
        assert best["path"] == str(probe) and best["identity"] == "person_01" and best["box"] is None
        assert best["similarity"] == pytest.approx(1.0, abs=1e-4) and best["distance"] < 0.01
        loose = view.search(embed_file(view, gallery / "loose.jpg"), k=1)[0][0]
        assert loose["path"] == str(gallery / "loose.jpg") and loose["identity"] is None
        assert view.image(best["id"]).sha256 is not None and view.image(10**9) is None


def test_rebuild_with_nothing_changed_writes_nothing(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        writer.build(gallery)
    vectors = tmp_path / "index" / VECTORS_FILE
    before = (vectors.stat().st_mtime_ns, vectors.stat().st_ino)
    with open_writer() as writer:
        report = writer.build(gallery)
    assert (report.unchanged, report.images_added, report.removed, report.changed) == (13, 0, 0, False)
    assert (vectors.stat().st_mtime_ns, vectors.stat().st_ino) == before
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["builds"] == 1      # a run that changed nothing is not a build


def test_rebuild_adds_new_and_changed_files_and_prune_forgets_deleted(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        writer.build(gallery)
    identity_image(5, 0).save(gallery / "person_00" / "new.jpg")
    identity_image(6, 0).save(gallery / "person_01" / "person_01_0001.jpg")    # same name, new content
    (gallery / "person_02" / "person_02_0001.jpg").unlink()
    with open_writer() as writer:
        report = writer.build(gallery)
    assert (report.images_added, report.removed, report.missing, report.unchanged) == (2, 1, 1, 11)
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["images"] == 14     # the deleted file is kept until --prune
        changed = gallery / "person_01" / "person_01_0001.jpg"
        assert view.search(embed_file(view, changed), k=1)[0][0]["path"] == str(changed)
    with open_writer() as writer:
        report = writer.build(gallery, prune=True)
    assert (report.removed, report.images_added) == (1, 0)
    stored, rows = stored_and_database_ids(tmp_path / "index")
    assert stored == rows and len(rows) == 13
    with sqlite3.connect(tmp_path / "index" / DATABASE_FILE) as db:
        paths = [r[0] for r in db.execute("SELECT path FROM images")]
    assert len(paths) == len(set(paths)) and str(gallery / "person_02" / "person_02_0001.jpg") not in paths


def test_add_takes_identity_from_gallery_folder_or_option_and_remove_forgets(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        writer.build(gallery)
    inside = gallery / "person_02" / "extra.jpg"
    outside = tmp_path / "elsewhere" / "visitor.jpg"
    outside.parent.mkdir()
    identity_image(7, 1).save(inside)
    identity_image(8, 1).save(outside)
    with open_writer() as writer:
        report = writer.add([inside, outside])
        assert report.images_added == 2
        report = writer.add([outside], identity="visitor")     # unchanged file: only relabelled
        assert (report.images_added, report.unchanged, report.identities_updated) == (0, 1, 1)
    with Gallery.open(tmp_path / "index") as view:
        found = {m["path"]: m["identity"] for m in view.search(embed_file(view, inside), k=15)[0]}
        assert found[str(inside)] == "person_02" and found[str(outside)] == "visitor"

    with open_writer() as writer:
        report = writer.remove([outside, tmp_path / "never-indexed.jpg"])
        assert report.removed == 1 and report.not_found == [str(tmp_path / "never-indexed.jpg")]
        report = writer.remove(identity="person_00")
        assert report.removed == 4
    stored, rows = stored_and_database_ids(tmp_path / "index")
    assert stored == rows and len(rows) == 13 + 2 - 1 - 4


def test_bad_files_are_skipped_with_their_reason_and_the_build_goes_on(gallery, open_writer, tmp_path):
    bad = gallery / "person_00"
    good = (bad / "person_00_0001.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a picture")
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (bad / "bomb.png").write_bytes(huge_png_header(30_000, 30_000))
    os.symlink(bad / "loop_b.jpg", bad / "loop_a.jpg")
    os.symlink(bad / "loop_a.jpg", bad / "loop_b.jpg")
    os.symlink(tmp_path / "nowhere.jpg", bad / "dangling.jpg")
    os.symlink(gallery, bad / "back_to_root")          # a folder loop
    (bad / "notes.txt").write_text("not an image name: passed over")
    unreadable = bad / "secret.jpg"
    identity_image(0, 9).save(unreadable)
    unreadable.chmod(0)

    with open_writer() as writer:
        report = writer.build(gallery)
    reasons = {example.split(": ", 1)[0]: example.split(": ", 1)[1] for example in report.skipped_examples}
    assert reasons[str(bad / "truncated.jpg")].startswith("corrupt or truncated image")
    assert reasons[str(bad / "empty.jpg")] == "empty file (0 bytes)"
    assert reasons[str(bad / "text.jpg")] == "not an image (unrecognised format)"
    assert str(bad / "corrupt.png") in reasons
    assert reasons[str(bad / "bomb.png")].startswith("image too large")
    assert reasons[str(bad / "loop_a.jpg")] == "symlink loop"
    assert reasons[str(bad / "dangling.jpg")].startswith("file not found")
    assert reasons[str(bad / "back_to_root")].startswith("symlink loop")
    running_as_root = os.geteuid() == 0      # root reads mode-000 files, so nothing to skip then
    expected_skips = 9 if running_as_root else 10
    if not running_as_root:
        assert reasons[str(unreadable)] == "permission denied"
    assert report.skipped == expected_skips and report.images_added == 13 + running_as_root

    with Gallery.open(tmp_path / "index") as view:
        stats = view.stats()
    assert stats["skipped"] == expected_skips and stats["skip_reasons"]["symlink loop"] == 2
    with open_writer() as writer:       # skipped files are remembered, not retried while unchanged
        again = writer.build(gallery)
    assert (again.skipped, again.images_added, again.changed) == (0, 0, False)


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny file that claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class TwoHalves:
    """A stand-in detector: every image holds two 'faces', its left and right halves."""

    name = "halves"

    def __init__(self, alignment: str = "lfw", size: int = 64, chip_padding: float = 0.25):
        self.alignment, self.size = alignment, size   # detectors align as the model asks

    def __call__(self, image):
        w, h = image.size
        return [Face(image.crop(box), box, 0.9) for box in ((0, 0, w // 2, h), (w // 2, 0, w, h))]


def test_one_row_per_detected_face_with_its_box(gallery, open_writer, tmp_path, monkeypatch):
    monkeypatch.setitem(faces.detectors.FACTORIES, "halves", TwoHalves)
    with open_writer(detector="halves") as writer:
        report = writer.build(gallery)
    assert (report.images_added, report.faces_added) == (13, 26)
    with Gallery.open(tmp_path / "index") as view:
        assert view.detector == "halves" and view.stats()["faces"] == 26
        face = TwoHalves()(load_image(gallery / "person_00" / "person_00_0003.jpg"))[1]
        best = view.search(view.load_model().embed_images([face.image]), k=1)[0][0]
        assert best["box"] == (32, 0, 64, 64) and best["similarity"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ModelMismatchError, match="detector"):
        open_writer(detector="none")


def test_worker_processes_give_the_same_embeddings(gallery, open_writer, tmp_path, checkpoint):
    with open_writer(workers=1, batch_size=4) as writer:
        writer.build(gallery)
    other = IndexWriter(tmp_path / "single", create=True, model=str(checkpoint), detector="none", workers=0,
                        progress=False)
    with other:
        other.build(gallery)
    with Gallery.open(tmp_path / "index") as a, Gallery.open(tmp_path / "single") as b:
        (records_a, vectors_a), = a.embeddings()
        (records_b, vectors_b), = b.embeddings()
    order_a = np.argsort([r.path for r in records_a])
    order_b = np.argsort([r.path for r in records_b])
    assert len(records_a) == 13
    np.testing.assert_allclose(vectors_a[order_a], vectors_b[order_b], atol=1e-5)


def test_another_model_is_refused_and_a_moved_one_is_followed(gallery, open_writer, tmp_path, checkpoint):
    with open_writer() as writer:
        writer.build(gallery)
    moved = tmp_path / "moved" / "same.pt"
    moved.parent.mkdir()
    shutil.copy(checkpoint, moved)
    with open_writer(model=str(moved)) as writer:
        assert writer.build(gallery).unchanged == 13
    with Gallery.open(tmp_path / "index") as view:
        assert view.model_source == str(moved) and view.load_model().sha256 == view.model_sha256
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(ModelMismatchError, match="cannot be mixed"):
        with open_writer(model=str(other)) as writer:
            writer.build(gallery)
    with Gallery.open(tmp_path / "index") as view:
        with pytest.raises(ModelMismatchError):
            view.check_model(load_model(other))
        with pytest.raises(ModelMismatchError, match="dimensions"):
            view.search(np.zeros((1, 64), np.float32))


def test_missing_index_and_busy_index_are_clear_errors(tmp_path, open_writer, monkeypatch):
    with pytest.raises(IndexMissingError, match="run `indexer build GALLERY` first"):
        Gallery.open(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()      # looking must not create an index
    with pytest.raises(IndexMissingError):
        IndexWriter(tmp_path / "nothing")
    (tmp_path / "index").mkdir()
    with IndexLock(tmp_path / "index"):
        with pytest.raises(IndexBusyError, match=f"pid {os.getpid()}"):
            open_writer()
    monkeypatch.setenv(INDEX_ENV_VAR, str(tmp_path / "from-env"))
    assert resolve_index_dir() == tmp_path / "from-env"
    assert resolve_index_dir(tmp_path / "option") == tmp_path / "option"
    monkeypatch.delenv(INDEX_ENV_VAR)
    assert resolve_index_dir() == Path("facesearch-index")


@pytest.mark.skipif(not LFW.is_dir(), reason="shared LFW images not present")
def test_lfw_slice_every_image_is_its_own_nearest_neighbour(tmp_path, open_writer):
    root = tmp_path / "lfw"
    root.mkdir()
    names = ["Aaron_Peirsol", "Abdoulaye_Wade", "Abel_Pacheco", "Adam_Sandler", "Aaron_Sorkin"]
    for name in names:
        os.symlink(LFW / name, root / name)     # read in place, never copied
    files = sorted(root.glob("*/*.jpg"))
    with open_writer() as writer:
        report = writer.build(root)
    assert report.images_added == len(files) == 18
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["identities"] == len(names)
        model = view.load_model()
        embeddings = model.embed_images([load_image(f) for f in files])
        for path, matches in zip(files, view.search(embeddings, k=2)):
            assert matches[0]["path"] == str(path) and matches[0]["identity"] == path.parent.name


# --- migrations -------------------------------------------------------------------------------

def test_database_at_first_revision_upgrades_without_losing_rows(tmp_path):
    database = tmp_path / DATABASE_FILE
    engine = create_sqlite_engine(database)
    upgrade(engine, "0001")
    engine.dispose()
    with sqlite3.connect(database) as db:
        assert "cluster" not in [c[1] for c in db.execute("PRAGMA table_info(images)")]
        db.execute("INSERT INTO models (name, source, sha256, embedding_dim, species, threshold, detector, "
                   "added_at) VALUES ('m', '/m.pt', 'ab', 128, 'dog', 0.9, 'none', '2026-01-01 00:00:00')")
        db.executemany("INSERT INTO images (path, sha256, identity, file_size, species, added_at, status) "
                       "VALUES (?, 'cd', ?, 10, 'dog', '2026-01-01 00:00:00', 'indexed')",
                       [(f"/g/rex/{i}.jpg", "rex") for i in range(5)])
    engine = open_database(database)
    assert current_revision(engine) == head_revision() == "0007"
    engine.dispose()
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, path, identity, cluster FROM images ORDER BY id").fetchall()
        # File names are kept as the file system's bytes since revision 0003.
        assert rows == [(i + 1, f"/g/rex/{i}.jpg".encode(), b"rex", None) for i in range(5)]
        assert db.execute("SELECT name, threshold FROM models").fetchall() == [("m", 0.9)]


def _open_and_report(database: str, barrier, results) -> None:
    barrier.wait()                      # all processes open the old database at the same moment
    try:
        results.put(current_revision(open_database(Path(database))))
    except Exception as error:          # the failure itself is what the test reports
        results.put(repr(error))


def test_processes_opening_an_old_database_at_once_all_see_it_upgraded(tmp_path):
    database = tmp_path / DATABASE_FILE
    engine = create_sqlite_engine(database)
    upgrade(engine, "0001")
    engine.dispose()
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_and_report, args=(str(database), barrier, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join()
    assert outcomes == ["0007"] * 4


def test_real_index_downgraded_to_first_revision_opens_upgraded(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        writer.build(gallery)
    engine = create_sqlite_engine(tmp_path / "index" / DATABASE_FILE)
    downgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    engine.dispose()
    with Gallery.open(tmp_path / "index") as view:     # opening upgrades
        assert current_revision(view.engine) == "0007"
        assert view.stats()["faces"] == 13
        probe = gallery / "person_02" / "person_02_0004.jpg"
        assert view.search(embed_file(view, probe), k=1)[0][0]["path"] == str(probe)


# --- the vector store (test_stores.py runs the store's own tests on FAISS and Milvus alike) ---

def test_auto_switches_to_a_trained_index_above_the_size_limit(gallery, open_writer, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "TRAINED_INDEX_MIN_SIZE", 8)
    with open_writer() as writer:
        report = writer.build(gallery)
    assert report.index_type == "ivf"
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["index"] == {"type": "ivf", "vectors": 13}
        probe = gallery / "person_00" / "person_00_0002.jpg"
        assert view.search(embed_file(view, probe), k=1)[0][0]["path"] == str(probe)
    with open_writer(index_type="hnsw") as writer:           # an explicit choice wins
        assert writer.build(gallery).index_type == "hnsw"


def test_gallery_sees_a_writers_new_snapshot_without_reopening(gallery, open_writer, tmp_path):
    with open_writer() as writer:
        writer.build(gallery)
    with Gallery.open(tmp_path / "index") as view:
        assert view.stats()["faces"] == 13
        identity_image(4, 4).save(gallery / "late.jpg")
        with open_writer() as writer:
            writer.add([gallery / "late.jpg"])
        best = view.search(embed_file(view, gallery / "late.jpg"), k=1)[0][0]
        assert best["path"] == str(gallery / "late.jpg")
