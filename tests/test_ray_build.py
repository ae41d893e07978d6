"""`indexer build --engine ray` on a local Ray (this machine's cores): the same files give
the same rows and the same vectors as the in-process build, written into the chosen store
(here Milvus Lite, against an in-process build into FAISS)."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.cli import main as indexer_main

from conftest import invoke_cli, last_json, write_identity_folders

pytest.importorskip("ray", reason="Ray build tests need pip install 'facesearch[cluster]'")
pytest.importorskip("pymilvus", reason="the Ray build writes into Milvus Lite: pip install 'facesearch[milvus]'")


def run(*args) -> tuple[int, str]:
    return invoke_cli(indexer_main, *args)


def test_ray_build_stores_the_same_vectors_as_the_in_process_build(tmp_path, monkeypatch, fresh_checkpoint):
    checkpoint = fresh_checkpoint
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=4)
    (gallery / "person_02" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)          # a local Ray, started and stopped by the build
    reports = {}
    for engine, index, store in (("local", tmp_path / "local", "faiss"),
                                 ("ray", tmp_path / "ray", f"milvus:{tmp_path / 'ray.db'}")):
        code, output = run("build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                           "--engine", engine, "--store", store, "--workers", 0 if engine == "local" else 2,
                           "--batch-size", 4, "--no-progress", "--json")
        assert code == 0, output
        reports[engine] = last_json(output)
        code, output = run("export", "--index", index, "--out", tmp_path / f"{engine}.npz")
        assert code == 0 and "exported 12 faces" in output
    for key in ("faces_added", "images_added", "skipped", "skip_reasons", "vectors"):
        assert reports["ray"][key] == reports["local"][key]
    assert reports["ray"]["faces_added"] == 12 and reports["ray"]["skipped"] == 1
    local, ray = np.load(tmp_path / "local.npz"), np.load(tmp_path / "ray.npz")
    assert ray["ids"].tolist() == local["ids"].tolist()         # rows in file order, as locally
    assert ray["paths"].tolist() == local["paths"].tolist()
    np.testing.assert_allclose(ray["embeddings"], local["embeddings"], atol=1e-5)


def test_ray_build_of_two_models_stores_the_same_rows_and_vectors(tmp_path, monkeypatch, fresh_checkpoint,
                                                                  fresh_dog_checkpoint):
    """--models over Ray: one stream per model (batched as Ray likes), merged file by file
    into the same rows and vectors as the in-process build; Milvus keeps a collection per model."""
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=3)
    (gallery / "person_01" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    reports = {}
    for engine, index, store in (("local", tmp_path / "local", "faiss"),
                                 ("ray", tmp_path / "ray", f"milvus:{tmp_path / 'ray.db'}")):
        code, output = run("build", gallery, "--models", f"{fresh_checkpoint},{fresh_dog_checkpoint}", "--index",
                           index, "--detector", "none", "--engine", engine, "--store", store,
                           "--workers", 0 if engine == "local" else 2, "--batch-size", 4, "--no-progress", "--json")
        assert code == 0, output
        reports[engine] = last_json(output)
        code, output = run("export", "--index", index, "--out", tmp_path / f"{engine}.npz")
        assert code == 0 and "exported 18 faces" in output
    for key in ("faces_added", "images_added", "skipped", "skip_reasons", "vectors"):
        assert reports["ray"][key] == reports["local"][key]
    assert reports["ray"]["skipped"] == 1            # one skip row for the broken file, not one per model
    local, ray = np.load(tmp_path / "local.npz"), np.load(tmp_path / "ray.npz")
    assert ray["ids"].tolist() == local["ids"].tolist() and ray["paths"].tolist() == local["paths"].tolist()
    assert ray["species"].tolist() == local["species"].tolist() == ["human"] * 9 + ["dog"] * 9
    np.testing.assert_allclose(ray["embeddings"], local["embeddings"], atol=1e-5)
