"""FAISS against Milvus Lite at 100k vectors, in one run, through the indexer's own stores
(indexer.store.FaissStore, indexer.milvus_store.MilvusStore), for each index type:

- insert: adding every vector (in the writer's chunks) and saving (FAISS: the file written;
  Milvus: flushed), seconds;
- search p50 / p99: one query of k=10 at a time, as `search query` and the web page ask,
  milliseconds;
- recall@10: the share of the exact top 10 (a numpy inner product over all vectors) that the
  store returns.

Vectors are face-like: identities drawn at random on the 128-D sphere with several noisy
photos each (as an embedding model gives), queries are new photos of known identities.
Every ratio is against FAISS of the same index type, measured in the same run.

    python bench/bench_stores.py [--size 100000] [--queries 200] [--types flat,hnsw,ivf] [--json]

Needs pip install 'facesearch[milvus]'.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.milvus_store import MilvusStore
from indexer.settings import IndexSettings, parse_store
from indexer.store import FaissStore, ivf_lists

DIM = 128
K = 10
CHUNK = 20_000
PHOTOS_PER_IDENTITY = 10
NOISE = 0.35          # per-dimension noise x sqrt(128): same-identity distance about 0.7


def face_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, identity centres): n unit vectors, PHOTOS_PER_IDENTITY per identity."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // PHOTOS_PER_IDENTITY), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owners = np.arange(n) % len(centres)
    vectors = centres[owners] + rng.standard_normal((n, DIM)).astype(np.float32) * NOISE / np.sqrt(DIM)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), centres


def queries_near(centres: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = centres[rng.integers(0, len(centres), count)]
    queries = chosen + rng.standard_normal(chosen.shape).astype(np.float32) * NOISE / np.sqrt(DIM)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ vectors.T
    return ids[np.argsort(-scores, axis=1)[:, :K]]


def make_store(kind: str, index_type: str, folder: Path, vectors: np.ndarray):
    if kind == "faiss":
        training = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * ivf_lists(len(vectors))),
                                                           replace=False)]
        return FaissStore.create(DIM, index_type, training if index_type == "ivf" else None,
                                 expected_size=len(vectors))
    location = IndexSettings(store=parse_store(f"milvus:{folder / f'{index_type}.db'}")).milvus
    return MilvusStore.open(location, DIM)


def measure(kind: str, index_type: str, folder: Path, vectors, ids, queries, exact) -> dict:
    store = make_store(kind, index_type, folder, vectors)
    started = time.perf_counter()
    for start in range(0, len(ids), CHUNK):
        store.add(ids[start:start + CHUNK], vectors[start:start + CHUNK])
    if kind == "milvus" and index_type != "flat":
        store = store.converted(index_type)     # as the writer does at the end of a build
    store.save(folder / f"{index_type}.faiss")
    insert_s = time.perf_counter() - started
    store.search(queries[:1], K)               # warm-up
    latencies, found = [], []
    for query in queries:
        began = time.perf_counter()
        _, top = store.search(query[None], K)
        latencies.append((time.perf_counter() - began) * 1000)
        found.append(top[0])
    store.close()
    recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / K for f, e in zip(found, exact)])
    return {"insert_s": round(insert_s, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3), "recall_at_10": round(float(recall), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="vectors in the store")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per store")
    parser.add_argument("--types", default="flat,hnsw,ivf", help="index types, comma-separated")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    vectors, centres = face_like(args.size, seed=0)
    ids = np.arange(args.size, dtype=np.int64) * 7 + 1      # database-like ids, not positions
    queries = queries_near(centres, args.queries, seed=1)
    exact = exact_top(vectors, ids, queries)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index_type in args.types.split(","):
            row = {kind: measure(kind, index_type, Path(folder), vectors, ids, queries, exact)
                   for kind in ("faiss", "milvus")}
            faiss, milvus = row["faiss"], row["milvus"]
            row["milvus_vs_faiss"] = {"insert": round(milvus["insert_s"] / faiss["insert_s"], 2),
                                      "p50": round(milvus["p50_ms"] / faiss["p50_ms"], 2)}
            results[index_type] = row
    if args.json:
        print(json.dumps({"size": args.size, "queries": args.queries, "dim": DIM, "results": results}))
        return
    print(f"{args.size:,} face-like {DIM}-D vectors, {args.queries} single queries of k={K}")
    print(f"{'type':<6} {'store':<12} {'insert s':>9} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}   vs FAISS")
    for index_type, row in results.items():
        for kind in ("faiss", "milvus"):
            r = row[kind]
            ratio = (f"insert x{row['milvus_vs_faiss']['insert']}, p50 x{row['milvus_vs_faiss']['p50']}"
                     if kind == "milvus" else "1.00")
            name = "FAISS" if kind == "faiss" else "Milvus Lite"
            print(f"{index_type:<6} {name:<12} {r['insert_s']:>9.2f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                  f"{r['recall_at_10']:>10.4f}   {ratio}")


if __name__ == "__main__":
    main()
