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

# A killed build redoes at most this many faces (or a quarter of the index, if larger).
DEFAULT_CHECKPOINT_EVERY = 2048


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def default_workers() -> int:
    """Decoding worker processes: every core but the one the model runs on, at most 4."""
    return min(4, max(1, available_cores() - 1))


def resolve_index_dir(option: str | os.PathLike | None = None) -> Path:
    """The index folder: the option if given, else $FACESEARCH_INDEX, else ./facesearch-index."""
    if option:
        return Path(option)
    return Path(os.environ.get(INDEX_ENV_VAR) or DEFAULT_INDEX_DIR)
