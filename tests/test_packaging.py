"""What a plain (non-editable) install needs travels inside the wheel: the bundled models
and their cards, the database migrations, the web page's templates and static files, all
read through importlib.resources. (.ci/run installs the wheel into a fresh virtual
environment and builds and queries an index from another folder.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from alembic.script import ScriptDirectory

from conftest import REPO
from faces.checkpoint import models_dir, resolve_model_path
from indexer.db import alembic_config

# Folders of package data, and the files in them that run-time code reads.
DATA = {"faces/bundled": ("*.pt", "*.md"), "indexer/migrations": ("*.py", "*.mako", "versions/*.py"),
        "web/templates": ("*.html",), "web/static": ("*",)}
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "runs", "facesearch-index", "evaluation", "tests", "bench")


def test_the_wheel_carries_every_data_file(tmp_path):
    source = tmp_path / "source"       # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, timeout=600)
    wheel, = (tmp_path / "wheel").glob("facesearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(REPO).as_posix() for folder, patterns in DATA.items()
                for pattern in patterns for path in (REPO / folder).glob(pattern) if path.is_file()}
    assert {"faces/bundled/human.pt", "faces/bundled/dog.pt", "faces/bundled/dog-detector.pt",
            "faces/bundled/dog-detector.md", "indexer/migrations/env.py", "web/templates/search.html",
            "web/static/search.js", "web/static/boxtool.js"} <= expected
    assert expected - names == set()


def test_bundled_models_and_migrations_are_found_in_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("FACESEARCH_MODELS", raising=False)
    assert models_dir() == REPO / "faces" / "bundled"
    assert resolve_model_path("dog") == REPO / "faces" / "bundled" / "dog.pt"
    monkeypatch.setenv("FACESEARCH_MODELS", str(tmp_path))      # still the override
    assert models_dir() == tmp_path
    script = ScriptDirectory.from_config(alembic_config())
    assert Path(script.dir) == REPO / "indexer" / "migrations"
    assert script.get_current_head() is not None
