"""MilvusStore: the VectorStore protocol (indexer.store) on Milvus, for galleries beyond one
machine. One collection per index: `id` INT64 primary key (the database image id, never
auto-generated) and `vector` FLOAT_VECTOR, inner-product metric as in FaissStore.

The same pymilvus MilvusClient code talks to Milvus Lite (a local file, one process at a
time: `search serve` cannot run while `indexer add` changes the same file) and to a Milvus
server or cluster (`http://host:19530`; token from $MILVUS_TOKEN).

Index types map to Milvus' own: flat -> FLAT, ivf -> IVF_FLAT (nlist as FaissStore's, nprobe
likewise), hnsw -> HNSW (M 32, efConstruction 80, ef 64). Changing type re-indexes the
collection in place. Milvus keeps what is inserted, so `save` only flushes: the writer's
pending -> indexed order (indexer.writer) holds as it does with a FAISS snapshot.

Measured pitfalls (pymilvus 3.0, milvus-lite 3.2): `delete` answers every id it was given,
present or not, so `remove` counts with `get` first; `query` returns at most 16,384 rows, so
`ids` walks a query iterator.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from .config import INDEX_TYPES
from .errors import IndexCorruptError, IndexerError
from .settings import MilvusLocation
from .store import HNSW_NEIGHBOURS, HNSW_SEARCH_EF, _as_ids, _as_vectors, ivf_lists, ivf_probes

log = logging.getLogger(__name__)

TOKEN_ENV_VAR = "MILVUS_TOKEN"
MILVUS_INDEX_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}
INSERT_CHUNK = 5_000        # rows per insert call (a gRPC message stays far under its 64 MB cap)
GET_CHUNK = 1_000           # ids per get / delete call (the filter expression stays short)
QUERY_BATCH = 16_384        # Milvus' largest query page
MAX_LIMIT = 16_384          # Milvus' largest top-k


class MilvusStoreError(IndexerError):
    """Milvus cannot be reached, or the collection is not one this indexer makes."""


def quiet_client_logs() -> None:
    """Milvus Lite logs each start and stop of its server and each background index build at
    INFO, its gRPC server logs as an ERROR the timestamp call that query_iterator tries first
    (Lite lacks it; the client falls back and says so with a WARNING), and gRPC's C core logs
    forks: none of it is news to a facesearch user, so only -v (DEBUG) shows them."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # milvus_lite.server_manager logs a traceback when the file is taken; connect() says
        # it in one line instead.
        for name, level in (("milvus_lite", logging.WARNING), ("milvus_lite.server_manager", logging.CRITICAL),
                            ("pymilvus", logging.ERROR), ("grpc._server", logging.CRITICAL)):
            logging.getLogger(name).setLevel(level)


def connect(location: MilvusLocation):
    """A MilvusClient on the location; MilvusStoreError naming the URI and the reason."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MilvusStoreError(f"milvus:{location.uri}: pymilvus is not installed; "
                               "pip install 'facesearch[milvus]'") from None
    quiet_client_logs()      # after the import, which sets pymilvus' own levels
    try:
        return MilvusClient(uri=location.uri, token=os.environ.get(TOKEN_ENV_VAR, ""))
    except Exception as error:      # pymilvus raises its own exception types, and OSError
        hint = (" (Milvus Lite opens a file in one process at a time: is an indexer or "
                "search serve using it?)" if location.is_local_file else "")
        reason = getattr(error, "message", None) or str(error)     # pymilvus errors carry a message
        raise MilvusStoreError(f"milvus:{location.uri}: cannot connect ({reason}){hint}") from None


class MilvusStore:
    def __init__(self, client, location: MilvusLocation, dim: int, index_type: str):
        self.client = client
        self.location = location
        self.collection = location.collection
        self.dim = dim
        self.index_type = index_type
        self._nlist: int | None = None      # an ivf index's lists, read once

    # --- making ----------------------------------------------------------------------

    @classmethod
    def open(cls, location: MilvusLocation, dim: int, index_type: str = "flat") -> "MilvusStore":
        """The location's collection, made (empty, of `index_type`) if it does not exist."""
        client = connect(location)
        try:
            if client.has_collection(location.collection):
                return cls._existing(client, location, dim)
            store = cls(client, location, dim, index_type)
            store._create_collection()
            return store
        except BaseException:
            client.close()
            raise

    @classmethod
    def _existing(cls, client, location: MilvusLocation, dim: int) -> "MilvusStore":
        described = client.describe_collection(location.collection)
        fields = {field["name"]: field for field in described["fields"]}
        vector = fields.get("vector")
        if "id" not in fields or vector is None:
            raise IndexCorruptError(f"milvus:{location.uri}: collection {location.collection!r} is not a "
                                    "facesearch index (no id and vector fields); name another with #COLLECTION")
        if int(vector["params"]["dim"]) != dim:
            raise IndexCorruptError(f"milvus:{location.uri}: collection {location.collection!r} holds "
                                    f"{vector['params']['dim']}-D vectors, the index's model gives {dim}-D")
        # A collection is searchable only once loaded; Milvus forgets that when its process ends
        # (Milvus Lite: whenever the last client closes).
        client.load_collection(location.collection)
        milvus_type = client.describe_index(location.collection, "vector").get("index_type", "FLAT")
        index_type = next((ours for ours, theirs in MILVUS_INDEX_TYPES.items() if theirs == milvus_type), None)
        if index_type is None:
            raise IndexCorruptError(f"milvus:{location.uri}: collection {location.collection!r} has a "
                                    f"{milvus_type} index, not one of {', '.join(MILVUS_INDEX_TYPES.values())}")
        return cls(client, location, dim, index_type)

    def _create_collection(self) -> None:
        from pymilvus import DataType, MilvusClient
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        # Strong consistency: a search, get or count sees every insert and delete before it;
        # the writer's reconcile and `check` compare ids with the database right after changes
        # (a server's default, Bounded, may lag a few seconds).
        self.client.create_collection(self.collection, schema=schema, consistency_level="Strong",
                                      index_params=self._index_params(self.index_type, 0))

    def _index_params(self, index_type: str, ntotal: int):
        if index_type not in MILVUS_INDEX_TYPES:
            raise ValueError(f"unknown index type {index_type!r}; choose from {', '.join(INDEX_TYPES)}")
        params = {"flat": {}, "ivf": {"nlist": max(1, min(65_536, ivf_lists(max(ntotal, 1))))},
                  "hnsw": {"M": HNSW_NEIGHBOURS, "efConstruction": 80}}[index_type]
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_name="vector", index_type=MILVUS_INDEX_TYPES[index_type],
                               metric_type="IP", params=params)
        return index_params

    def converted(self, index_type: str, seed: int = 0) -> "MilvusStore":
        """The same collection re-indexed as `index_type` (Milvus trains IVF itself; `seed`
        is FaissStore's, unused here)."""
        ntotal = self.ntotal
        self.client.release_collection(self.collection)
        self.client.drop_index(self.collection, "vector")
        self.client.create_index(self.collection, self._index_params(index_type, ntotal))
        self.client.load_collection(self.collection)
        self.index_type, self._nlist = index_type, None
        self._wait_for_index()
        return self

    def _wait_for_index(self, timeout_s: float = 3600) -> None:
        """Milvus builds an index in the background and meanwhile searches by brute force:
        return once every row is indexed, so the next search is as fast as the type promises."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = self.client.describe_index(self.collection, "vector")
            if not described.get("pending_index_rows") and described.get("indexed_rows", 0) >= described.get("total_rows", 0):
                return
            time.sleep(0.5)
        log.warning("milvus:%s: the %s index of %r is still building after %.0f s", self.location.uri,
                    self.index_type, self.collection, timeout_s)

    def drop(self) -> None:
        """Remove the collection and everything in it (`check --repair` of an unreadable one)."""
        self.client.drop_collection(self.collection)

    # --- the interface --------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def add(self, ids, vectors) -> None:
        ids, vectors = _as_ids(ids), _as_vectors(vectors).reshape(-1, self.dim)
        for start in range(0, len(ids), INSERT_CHUNK):
            rows = [{"id": int(i), "vector": v} for i, v in
                    zip(ids[start:start + INSERT_CHUNK].tolist(), vectors[start:start + INSERT_CHUNK])]
            self.client.insert(self.collection, rows)

    def remove(self, ids) -> int:
        """Remove every vector with one of `ids`; returns how many were there."""
        present = self._present(_as_ids(ids))
        for start in range(0, len(present), GET_CHUNK):
            self.client.delete(self.collection, ids=present[start:start + GET_CHUNK].tolist())
        return len(present)

    def search(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), both N x k, best first; id -1 where fewer than k exist."""
        vectors = _as_vectors(vectors).reshape(-1, self.dim)
        k = min(k, MAX_LIMIT)
        if k <= 0 or not len(vectors):
            return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        # No count first (a second round trip per query): Milvus returns fewer hits when it
        # holds fewer than k, and the answer is as wide as the longest row, as FAISS's is.
        answers = self.client.search(self.collection, data=[v for v in vectors], limit=k, output_fields=["id"],
                                     search_params={"metric_type": "IP", "params": self._search_params(k)})
        width = max((len(hits) for hits in answers), default=0)
        similarities = np.full((len(vectors), width), -np.inf, np.float32)
        found = np.full((len(vectors), width), -1, np.int64)
        for row, hits in enumerate(answers):
            for column, hit in enumerate(hits):
                found[row, column] = int(hit["id"])
                similarities[row, column] = float(hit["distance"])   # the inner product, for IP
        return similarities, found

    def ids(self) -> np.ndarray:
        """Every id in the collection (unordered)."""
        iterator = self.client.query_iterator(self.collection, batch_size=QUERY_BATCH, filter="",
                                              output_fields=["id"])
        parts = []
        try:
            while batch := iterator.next():
                parts.append(np.fromiter((row["id"] for row in batch), np.int64, len(batch)))
        finally:
            iterator.close()
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of `ids` (each must be present)."""
        ids = _as_ids(ids)
        found = {}
        for start in range(0, len(ids), GET_CHUNK):
            chunk = np.unique(ids[start:start + GET_CHUNK]).tolist()
            for row in self.client.get(self.collection, ids=chunk, output_fields=["vector"]):
                found[int(row["id"])] = row["vector"]
        missing = [i for i in ids.tolist() if i not in found]
        if missing:
            raise KeyError(f"milvus:{self.location.uri} collection {self.collection!r} has no vector for ids "
                           f"{missing[:10]}")
        return np.array([found[i] for i in ids.tolist()], dtype=np.float32).reshape(-1, self.dim)

    def save(self, path=None) -> None:
        """Milvus already keeps every insert and delete; flushing seals them into segments on
        its storage, which is what a FAISS snapshot on disk promises. `path` is unused."""
        self.client.flush(self.collection)

    def close(self) -> None:
        self.client.close()

    # --- helpers --------------------------------------------------------------------

    def _present(self, ids: np.ndarray) -> np.ndarray:
        present = []
        for start in range(0, len(ids), GET_CHUNK):
            chunk = np.unique(ids[start:start + GET_CHUNK]).tolist()
            present.extend(int(row["id"]) for row in
                           self.client.get(self.collection, ids=chunk, output_fields=["id"]))
        return np.array(sorted(set(present)), dtype=np.int64)

    def _search_params(self, k: int) -> dict:
        if self.index_type == "hnsw":
            return {"ef": max(HNSW_SEARCH_EF, k)}     # Milvus refuses an ef below k
        if self.index_type == "ivf":
            if self._nlist is None:
                self._nlist = int(self.client.describe_index(self.collection, "vector").get("nlist", 16))
            return {"nprobe": ivf_probes(self._nlist)}
        return {}
