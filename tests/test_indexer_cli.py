"""The `indexer` command line: JSON output, one-line errors, check after deliberate damage
and --repair, cluster and export, a busy index, and a build killed (-9) mid-way for real."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer import Gallery, IndexCorruptError
from indexer.cli import main
from indexer.config import DATABASE_FILE, INDEX_ENV_VAR, VECTORS_FILE
from indexer.lock import IndexLock
from indexer.store import FaissStore
from indexer.writer import IndexWriter
from faces.checkpoint import save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet

from conftest import LFW, REPO, invoke_cli, last_json, write_identity_folders



@pytest.fixture(scope="module")
def checkpoint(fresh_checkpoint) -> Path:
    return fresh_checkpoint


@pytest.fixture
def gallery(tmp_path) -> Path:
    return write_identity_folders(tmp_path / "gallery", identities=4, per_identity=4)


def run(*args: str) -> tuple[int, str]:
    return invoke_cli(main, *args)


@pytest.fixture
def built(tmp_path, gallery, checkpoint) -> Path:
    index = tmp_path / "index"
    code, output = run("build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                       "--workers", 0, "--no-progress", "--json")
    assert code == 0 and last_json(output)["faces_added"] == 16
    return index


def check(index: Path, *extra) -> tuple[int, dict]:
    code, output = run("check", "--index", index, "--sample", 16, "--json", "--no-progress", *extra)
    return code, last_json(output)


def test_build_then_stats_through_the_environment_variable(built, monkeypatch, gallery):
    monkeypatch.setenv(INDEX_ENV_VAR, str(built))
    code, output = run("stats", "--json")
    stats = last_json(output)
    assert code == 0 and (stats["images"], stats["identities"], stats["skipped"]) == (16, 4, 0)
    assert stats["size_bytes"]["vectors"] > 16 * 128 * 4 and stats["index"]["type"] == "flat"
    # An uncalibrated model: matches per pair, and the stats say how to recalibrate.
    assert stats["decision"]["rule"] == "per-pair" and "trainer calibrate" in stats["decision"]["message"]
    code, output = run("stats")
    assert code == 0 and "16 images, 16 faces, 4 identities, 0 skipped" in output
    assert "match: distance <= " in output and "per pair (model" in output
    code, output = run("build", gallery, "--no-progress")      # again: nothing to do
    assert code == 0 and "0 images added" in output and "16 of 16 files unchanged" in output


def test_user_errors_are_one_line_without_traceback(tmp_path, built, checkpoint, gallery):
    code, output = run("stats", "--index", tmp_path / "nowhere")
    assert code == 1 and output.strip() == f"Error: no index at {tmp_path / 'nowhere'}: run `indexer build GALLERY` first"
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(other, EmbeddingNet("small", 128), Preprocess(64, 1.0), "human", 0.5)
    code, output = run("add", gallery / "person_00" / "person_00_0001.jpg", "--model", other, "--index", built)
    assert code == 1 and "cannot be mixed" in output and "Traceback" not in output
    code, output = run("build", gallery, "--index", built, "--detector", "no-such-detector")
    assert code == 2 and "unknown detector 'no-such-detector'" in output
    code, output = run("remove", "--index", built)
    assert code == 2 and "give FILES to remove, or --identity NAME" in output


def test_a_second_writer_is_refused_while_one_holds_the_index(built, gallery):
    with IndexLock(built):
        code, output = run("build", gallery, "--index", built, "--no-progress")
    assert code == 1 and f"another indexer process (pid {os.getpid()})" in output
    code, _ = run("build", gallery, "--index", built, "--no-progress")
    assert code == 0                     # released: the next build runs


def test_check_finds_a_deleted_row_and_repair_plus_build_restore_it(built, gallery):
    code, report = check(built)
    assert code == 0 and report["ok"] and report["check"]["sampled"] == 16
    with sqlite3.connect(built / DATABASE_FILE) as db:
        victim = db.execute("SELECT id, path FROM images ORDER BY id LIMIT 1 OFFSET 5").fetchone()
        db.execute("DELETE FROM images WHERE id = ?", (victim[0],))
    code, report = check(built)
    assert code == 1 and not report["ok"]
    assert f"1 vectors in the index have no database row: ids {victim[0]}" in report["check"]["problems"]
    code, report = check(built, "--repair")
    assert code == 0 and report["ok"] and report["after_repair"]["problems"] == []
    with Gallery.open(built) as view:       # the orphan vector is gone; nothing says which file it was
        assert view.stats()["faces"] == view.store.ntotal == 15
    # ...but a build finds that file again as new.
    code, output = run("build", gallery, "--index", built, "--no-progress", "--json")
    assert code == 0 and last_json(output)["images_added"] == 1
    with sqlite3.connect(built / DATABASE_FILE) as db:
        assert db.execute("SELECT count(*) FROM images WHERE path = ?", (victim[1],)).fetchone() == (1,)
    assert check(built)[1]["ok"]


def test_check_finds_a_truncated_index_file_and_repair_rebuilds_it(built, gallery):
    vectors = built / VECTORS_FILE
    vectors.write_bytes(vectors.read_bytes()[:300])
    with pytest.raises(IndexCorruptError, match="check --repair"):
        Gallery.open(built)
    code, output = run("build", gallery, "--index", built, "--no-progress")
    assert code == 1 and "unreadable vector index" in output
    code, report = check(built)
    assert code == 1 and report["check"]["vectors"] is None
    code, report = check(built, "--repair")
    assert code == 0 and report["repair"]["faces_added"] == 16 and report["after_repair"]["vectors"] == 16
    with Gallery.open(built) as view:
        assert view.stats()["faces"] == 16 and view.store.ntotal == 16


def test_check_finds_a_wrong_embedding_and_repair_recomputes_it(built):
    store = FaissStore.load(built / VECTORS_FILE)
    wrong = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
    store.remove([3])
    store.add([3], wrong / np.linalg.norm(wrong))
    store.save(built / VECTORS_FILE)
    code, report = check(built)
    assert code == 1 and any(p.startswith("id 3 (") and "stored embedding differs" in p
                             for p in report["check"]["problems"])
    code, report = check(built, "--repair")
    assert code == 0 and report["after_repair"]["ok"]


def test_cluster_writes_a_cluster_per_face_and_export_carries_it(built, tmp_path):
    code, output = run("cluster", "--index", built, "--json")
    summary = last_json(output)
    assert code == 0 and summary["faces"] == len(summary["assignment"]) == 16
    # The untrained model puts all these faces within 0.25 of each other: at its threshold
    # 0.5 they are one cluster, which holds every same-identity pair (4 x 6) of the 120.
    assert summary["clusters"] == 1 and summary["operating_point"]["name"] == "strict"
    assert summary["against_identities"] == {"faces": 16, "identities": 4, "pairwise_precision": 0.2,
                                             "pairwise_recall": 1.0, "pairwise_f1": 0.3333, "homogeneity": 0.0,
                                             "completeness": 1.0, "v_measure": 0.0}
    code, output = run("cluster", "--index", built, "--threshold", "0.0001")
    assert code == 0 and "16 faces in 16 clusters" in output and "pairwise precision 1.0, recall 0.0" in output
    code, output = run("cluster", "--index", built, "--threshold", "loose")
    assert code == 1 and "expected strict or balanced" in output
    code, output = run("cluster", "--index", built, "--json")    # the stored clusters are the default's again
    with sqlite3.connect(built / DATABASE_FILE) as db:
        clusters = dict(db.execute("SELECT id, cluster FROM images"))
    assert clusters == {a["id"]: a["cluster"] for a in summary["assignment"]}

    code, output = run("export", "--index", built, "--out", tmp_path / "gallery.npz")
    assert code == 0 and "exported 16 faces" in output
    exported = np.load(tmp_path / "gallery.npz")
    assert exported["embeddings"].shape == (16, 128) and exported["ids"].tolist() == sorted(clusters)
    np.testing.assert_allclose(np.linalg.norm(exported["embeddings"], axis=1), 1.0, atol=1e-5)
    assert exported["clusters"].tolist() == [clusters[i] for i in exported["ids"].tolist()]
    assert set(exported["identities"].tolist()) == {f"person_{i:02d}" for i in range(4)}


# --- a build killed with SIGKILL ---------------------------------------------------------------

def indexed_count(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index / DATABASE_FILE}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM images WHERE status = 'indexed'").fetchone()[0]
    except sqlite3.OperationalError:     # not created yet
        return 0


def build_and_kill(gallery: Path, index: Path, checkpoint: Path, kill_after: int | None) -> int:
    """Run `indexer build` in a subprocess; SIGKILL it once more than `kill_after` faces are
    indexed (None: let it finish). Returns the exit status."""
    command = [sys.executable, "-m", "indexer.cli", "build", str(gallery), "--index", str(index),
               "--model", str(checkpoint), "--detector", "none", "--workers", "1", "--batch-size", "8", "--checkpoint-every", "16",
               "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if kill_after is not None:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if indexed_count(index) > kill_after:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    output = process.communicate(timeout=120)[0].decode()
    assert kill_after is not None or process.returncode == 0, output
    return process.returncode


@pytest.mark.skipif(not LFW.is_dir(), reason="shared LFW images not present")
def test_a_killed_build_leaves_a_usable_index_and_the_next_build_completes(tmp_path, checkpoint):
    gallery, index = tmp_path / "lfw", tmp_path / "index"
    gallery.mkdir()
    folders = sorted(p for p in LFW.iterdir() if p.is_dir())
    first, rest, total = folders[0], [], 0
    for folder in folders[1:]:
        if total >= 100:
            break
        rest.append(folder)
        total += len(list(folder.glob("*.jpg")))
    os.symlink(first, gallery / first.name)
    with IndexWriter(index, create=True, model=str(checkpoint), detector="none", workers=0,
                     progress=False) as writer:
        writer.build(gallery)
    previous = indexed_count(index)
    for folder in rest:
        os.symlink(folder, gallery / folder.name)        # read in place, never copied
    expected = previous + total

    assert build_and_kill(gallery, index, checkpoint, previous + 16) == -signal.SIGKILL
    partial = indexed_count(index)
    assert previous < partial < expected
    with Gallery.open(index) as view:                    # the last snapshot serves searches
        assert view.stats()["faces"] == partial
        (records, vectors), = view.embeddings()
        hits = view.search(vectors[:previous], k=1)
        assert [h[0]["id"] for h in hits] == [r.id for r in records[:previous]]

    assert build_and_kill(gallery, index, checkpoint, partial + 16) == -signal.SIGKILL
    assert build_and_kill(gallery, index, checkpoint, None) == 0

    with sqlite3.connect(index / DATABASE_FILE) as db:
        paths = [r[0] for r in db.execute("SELECT path FROM images WHERE status = 'indexed'")]
        statuses = dict(db.execute("SELECT status, count(*) FROM images GROUP BY status"))
    assert len(paths) == len(set(paths)) == expected and statuses == {"indexed": expected}
    stored = FaissStore.load(index / VECTORS_FILE).ids()
    assert len(stored) == len(set(stored.tolist())) == expected
    code, report = check(index)
    assert code == 0 and report["ok"]


def test_an_index_keeps_its_model_when_a_bundled_name_comes_to_mean_another(tmp_path, monkeypatch, gallery):
    """`dog` became an ensemble and the network it was ships as `dog-fast`: an index built
    with the old `dog` is searched and grown with `dog-fast`, found by its embedding digest."""
    from search.cli import main as search_main
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("FACESEARCH_MODELS", str(models))
    for seed, name in ((0, "dog"), (1, "human")):
        torch.manual_seed(seed)
        save_checkpoint(models / f"{name}.pt", EmbeddingNet("small", 128), Preprocess(64, 1.0), name, 0.5)
    index = tmp_path / "index"
    photo = gallery / "person_01" / "person_01_0002.jpg"
    code, output = run("build", gallery, "--model", "dog", "--index", index, "--detector", "none", "--no-progress")
    assert code == 0, output

    def nearest() -> tuple[int, dict]:
        code, output = invoke_cli(search_main, "query", photo, "--index", index, "--detector", "none", "--json")
        return code, (last_json(output) if code == 0 else output)
    code, before = nearest()
    assert code == 0 and before["faces"][0]["matches"][0]["distance"] == pytest.approx(0, abs=1e-5)
    (models / "dog.pt").rename(models / "dog-fast.pt")
    torch.manual_seed(2)
    save_checkpoint(models / "dog.pt", EmbeddingNet("small", 64), Preprocess(64, 1.0), "dog", 0.5)
    code, after = nearest()
    assert code == 0 and after["faces"][0]["matches"] == before["faces"][0]["matches"]
    code, output = run("build", gallery, "--index", index, "--no-progress", "--json")
    assert code == 0 and last_json(output)["faces_added"] == 0
    code, output = run("stats", "--index", index, "--json")
    assert last_json(output)["model"]["name"] == "dog-fast"          # recorded under its new name
    (models / "dog-fast.pt").unlink()                               # nowhere now: refused, not mixed
    code, output = nearest()
    assert code != 0 and "dog-fast" in output
