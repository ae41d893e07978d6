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
# Further models' vectors (`indexer build --models human,dog`): vectors-dog.faiss and so on.
MORE_VECTORS_FILE = "vectors-{species}.faiss"
LOCK_FILE = "indexer.lock"        # held (flock) by the one process changing the index
SETTINGS_FILE = "index.json"      # where store and database live, when not the two files above

# The FAISS index types (indexer.store describes each); `auto` picks one by size.
INDEX_TYPES = ("flat", "ivf", "hnsw")

# A killed build redoes at most this many faces (or a quarter of the index, if larger).
DEFAULT_CHECKPOINT_EVERY = 2048


def vectors_file(species: str | None = None) -> str:
    """The FAISS file of a model's vectors: the main model's (species None) is vectors.faiss."""
    return VECTORS_FILE if species is None else MORE_VECTORS_FILE.format(species=species)


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def default_workers(finds_faces: bool) -> int:
    """Decoding worker processes for a build; `finds_faces`: each image goes through dlib's
    detector or landmarks (faces.detectors.finds_faces).

    Detecting builds keep one core for the model in the main process and give the rest (up
    to 8) to detection: on 2 cores one detecting worker beside the model built 500 LFW photos
    with `human` at 97-101 images/s, two workers (three busy processes on two cores) at
    87-95 (four runs of each, interleaved, in one process). Plain decoding costs about as
    much as the small model's forward pass: on 2 cores decoding in the main process while
    the model keeps both cores is fastest (`bench/bench_indexer.py` on LFW: 1,022 images/s, against 907 with
    `--workers 1`); beyond that, one core is kept for the model.
    """
    cores = available_cores()
    if finds_faces:
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else min(4, cores - 1)


def resolve_index_dir(option: str | os.PathLike | None = None) -> Path:
    """The index folder: the option if given, else $FACESEARCH_INDEX, else ./facesearch-index."""
    if option:
        return Path(option)
    return Path(os.environ.get(INDEX_ENV_VAR) or DEFAULT_INDEX_DIR)


def existing_index(option: str | os.PathLike | None = None) -> Path:
    """The index folder (resolve_index_dir) when it holds a database (or index.json naming
    one elsewhere), else IndexMissingError:
    checked before anything heavy loads, so a missing index is said at once."""
    from .errors import IndexMissingError
    index_dir = resolve_index_dir(option)
    if not (index_dir / DATABASE_FILE).is_file() and not (index_dir / SETTINGS_FILE).is_file():
        raise IndexMissingError(f"no index at {index_dir}: run `indexer build GALLERY` first")
    return index_dir
