"""The vector store: one small interface, FAISS behind it here and Milvus in
indexer.milvus_store (chosen per index by indexer.settings; `open_store` opens either).

Vectors are unit-length embeddings, so the inner product is the cosine similarity and the
L2 distance is sqrt(2 - 2 * similarity). A vector's id is its database image id.

Index types:
- flat: exact inner-product search (IndexIDMap2 over IndexFlatIP). The default, and what
  `auto` keeps until the index holds more than TRAINED_INDEX_MIN_SIZE vectors.
- ivf: IndexIVFFlat, trained (k-means) on the vectors present when it is made. It keeps
  ids itself (wrapping it in IndexIDMap would break removal) and a hash-table direct map,
  so vectors can be read back by id.
- hnsw: IndexIDMap2 over IndexHNSWFlat. HNSW cannot remove vectors, so removal rebuilds it
  from the vectors that stay.

With a GPU (faiss.get_num_gpus() > 0) searches run on a copy made by
faiss.index_cpu_to_all_gpus; the CPU index stays the master copy that changes and is saved,
because GPU indexes support neither removal nor writing to disk.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from .config import INDEX_TYPES
from .errors import IndexCorruptError

log = logging.getLogger(__name__)

# Exact search over this many 128-D vectors takes about 3 ms a query on one CPU core;
# beyond it a trained index answers far faster at a small cost in recall.
TRAINED_INDEX_MIN_SIZE = 200_000
HNSW_NEIGHBOURS = 32
HNSW_SEARCH_EF = 64        # candidates an HNSW search visits (at least k)
COPY_CHUNK = 65_536


class VectorStore(Protocol):
    """What the indexer needs from a vector store (a distributed engine can stand in later)."""

    dim: int
    index_type: str

    @property
    def ntotal(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | os.PathLike) -> None: ...

    def converted(self, index_type: str) -> "VectorStore": ...

    def close(self) -> None: ...


def open_store(settings, vectors_path: Path, dim: int, species: str | None = None) -> VectorStore:
    """The index's vector store as its settings (indexer.settings) name it: the FAISS file at
    `vectors_path` (empty if there is none yet), or the Milvus collection (made if missing).
    `species`: a further model's store (not the main one's), in Milvus the collection
    COLLECTION_<species>."""
    location = settings.milvus
    if location is not None:
        if species is not None:
            location = replace(location, collection=f"{location.collection}_{species}")
        from .milvus_store import MilvusStore     # pymilvus: only for indexes that use it
        return MilvusStore.open(location, dim)
    return FaissStore.load(vectors_path) if vectors_path.is_file() else FaissStore.create(dim)



def auto_index_type(current: str, ntotal: int) -> str:
    """`auto`: stay exact until the index outgrows flat search, then train an IVF index.
    A trained index, once chosen, is kept (it never turns back into flat by itself)."""
    return "ivf" if current == "flat" and ntotal > TRAINED_INDEX_MIN_SIZE else current


def ivf_lists(ntotal: int) -> int:
    # About 4 sqrt(N) lists, with the 39 training points per list k-means asks for.
    return max(1, min(int(4 * math.sqrt(ntotal)), ntotal // 39))


def ivf_probes(nlist: int) -> int:
    # Visiting 1/16 of the lists: on 250k face-like vectors (bench_indexer) recall@1 0.97 and
    # 95% of the matches within L2 1.0, at a third of exact search's time per query.
    return min(nlist, max(16, nlist // 16))


def _as_ids(ids) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _as_vectors(vectors) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))


class FaissStore:
    def __init__(self, index: faiss.Index, index_type: str):
        self.index = index
        self.index_type = index_type
        self.dim = index.d
        self._gpu_index = None

    # --- making ----------------------------------------------------------------------

    @classmethod
    def create(cls, dim: int, index_type: str = "flat", training_vectors: np.ndarray | None = None,
               expected_size: int | None = None) -> "FaissStore":
        """An empty store. An ivf store is trained on `training_vectors` first, with lists
        sized for `expected_size` vectors (default: as many as there are training vectors)."""
        if index_type == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat")
        if index_type == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.hnsw.efSearch = HNSW_SEARCH_EF
            return cls(faiss.IndexIDMap2(hnsw), "hnsw")
        if index_type == "ivf":
            if training_vectors is None or len(training_vectors) == 0:
                raise ValueError("an ivf index needs training vectors")
            nlist = min(ivf_lists(expected_size or len(training_vectors)), len(training_vectors))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(_as_vectors(training_vectors))
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            ivf.nprobe = ivf_probes(nlist)
            return cls(ivf, "ivf")
        raise ValueError(f"unknown index type {index_type!r}; choose from {', '.join(INDEX_TYPES)}")

    def converted(self, index_type: str, seed: int = 0) -> "FaissStore":
        """A new store of `index_type` holding the same vectors under the same ids."""
        ids = self.ids()
        training = None
        if index_type == "ivf":
            sample_size = min(len(ids), 64 * ivf_lists(len(ids)))
            training = self.vectors(np.random.default_rng(seed).choice(ids, sample_size, replace=False))
        store = FaissStore.create(self.dim, index_type, training, expected_size=len(ids))
        for start in range(0, len(ids), COPY_CHUNK):
            chunk = ids[start:start + COPY_CHUNK]
            store.add(chunk, self.vectors(chunk))
        return store

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaissStore":
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexCorruptError(f"{path}: unreadable vector index ({str(error).splitlines()[0][:120]}); "
                                    "run `indexer check --repair`") from None
        if isinstance(index, faiss.IndexIVFFlat):
            return cls(index, "ivf")
        if isinstance(index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(index.index)
            if isinstance(inner, faiss.IndexHNSWFlat):
                return cls(index, "hnsw")
            if isinstance(inner, faiss.IndexFlatIP):
                return cls(index, "flat")
        raise IndexCorruptError(f"{path}: not an index the indexer writes ({type(index).__name__})")

    # --- the interface --------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids, vectors) -> None:
        ids, vectors = _as_ids(ids), _as_vectors(vectors)
        if len(ids):
            self.index.add_with_ids(vectors, ids)
            self._gpu_index = None

    def remove(self, ids) -> int:
        """Remove every vector with one of `ids`; returns how many went."""
        ids = _as_ids(ids)
        if not len(ids) or not self.ntotal:
            return 0
        self._gpu_index = None
        if self.index_type == "hnsw":
            kept = self.ids()
            kept = kept[~np.isin(kept, ids)]
            rebuilt = FaissStore.create(self.dim, "hnsw")
            for start in range(0, len(kept), COPY_CHUNK):
                chunk = kept[start:start + COPY_CHUNK]
                rebuilt.add(chunk, self.vectors(chunk))
            removed = self.ntotal - rebuilt.ntotal
            self.index = rebuilt.index
            return removed
        return int(self.index.remove_ids(ids))   # FAISS picks the selector its direct map needs

    def search(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), both N x k, best first; id -1 where fewer than k exist."""
        vectors = _as_vectors(vectors).reshape(-1, self.dim)
        k = min(k, self.ntotal)
        if k <= 0 or not len(vectors):
            return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        if self.index_type == "hnsw":
            # HNSW looks at efSearch candidates per query, so a k beyond it came back padded
            # with -1 though the index held enough vectors (k=390 of 390 gave 80 missing).
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(HNSW_SEARCH_EF, k)
            return self.index.search(vectors, k, params=params)
        return self._searcher().search(vectors, k)

    def ids(self) -> np.ndarray:
        """Every id in the store (in storage order; an id added twice appears twice)."""
        if self.index_type == "ivf":
            lists = self.index.invlists
            parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                     for i in range(self.index.nlist) if lists.list_size(i)]
            return np.concatenate(parts) if parts else np.empty(0, np.int64)
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of `ids` (each must be present)."""
        ids = _as_ids(ids)
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        return self.index.reconstruct_batch(ids)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file beside `path`, flushed to disk, then renamed."""
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        """Nothing to let go: the index is memory (MilvusStore closes its connection)."""

    def _searcher(self) -> faiss.Index:
        if self.index_type == "hnsw" or faiss.get_num_gpus() == 0:
            return self.index        # FAISS has no GPU HNSW
        if self._gpu_index is None:
            log.debug("copying the %s index to %d GPU(s)", self.index_type, faiss.get_num_gpus())
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu_index
