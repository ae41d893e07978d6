"""Where an index lives, and the names of the files inside it.

One rule, used by every command and by `Gallery.open`: the `--index DIR` option, else the
FACESEARCH_INDEX environment variable, else ./facesearch-index.
"""
from __future__ import annotations

import os
from pathlib import Path

INDEX_ENV_VAR = "FACESEARCH_INDEX"
DEFAULT_INDEX_DIR = "facesearch-index"

DATABASE_FILE = "gallery.db"      # SQLite: images, model, builds
VECTORS_FILE = "vectors.faiss"    # FAISS index; its ids are the database's image ids
LOCK_FILE = "indexer.lock"        # held (flock) by the one process changing the index


def resolve_index_dir(option: str | os.PathLike | None = None) -> Path:
    """The index folder: the option if given, else $FACESEARCH_INDEX, else ./facesearch-index."""
    if option:
        return Path(option)
    return Path(os.environ.get(INDEX_ENV_VAR) or DEFAULT_INDEX_DIR)
