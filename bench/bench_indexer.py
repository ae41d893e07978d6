"""Indexer benchmark: build throughput against the bare model, and trained-index recall.

1. Build throughput: `indexer build` (IndexWriter.build: walk, hash, decode in worker
   processes, embed, SQLite, FAISS snapshots) on LFW, as images/s and as a ratio to the
   model's own forward throughput on ready-made uint8 batches, measured in the same process
   just before and after the build (averaged, since the machine's load drifts).
2. Recall: synthetic face-like unit vectors (identities of ~5 images, same-identity cosine
   about 0.7), more than TRAINED_INDEX_MIN_SIZE of them so `auto` picks the trained index;
   its top-k against exact flat search on held-out queries.

    .venv/bin/python bench/bench_indexer.py --limit 1000          # quick
    .venv/bin/python bench/bench_indexer.py                       # all 9,525 LFW images
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexer.embedding import available_cores, default_workers
from indexer.store import TRAINED_INDEX_MIN_SIZE, FaissStore, auto_index_type
from indexer.writer import IndexWriter
from faces.checkpoint import FaceModel, load_model, save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet

REPO = Path(__file__).resolve().parent.parent
LFW = REPO.parent / "shared" / "data" / "lfw" / "images"


def forward_throughput(model, batch_size: int, seconds: float = 4.0) -> dict[int, float]:
    """Images/s of the bare model on uint8 batches already in memory (no decoding), with
    one torch thread and with torch's default: on a small shared CPU one thread can win."""
    default = torch.get_num_threads()
    rates = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        rates[threads] = _forward_rate(model, batch_size, seconds)
    torch.set_num_threads(default)
    return rates


def _forward_rate(model, batch_size: int, seconds: float) -> float:
    size = model.preprocess.input_size
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    for _ in range(2):
        model.embed_tensor(batch)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.embed_tensor(batch)
        images += batch_size
    return images / (time.perf_counter() - started)


def time_model_calls() -> list[float]:
    """From now on, add the seconds every FaceModel.embed_tensor call takes to the returned cell."""
    seconds = [0.0]
    embed_tensor = FaceModel.embed_tensor

    def timed(self, batch):
        started = time.perf_counter()
        try:
            return embed_tensor(self, batch)
        finally:
            seconds[0] += time.perf_counter() - started

    FaceModel.embed_tensor = timed
    return seconds


def gallery_slice(data: Path, limit: int, into: Path) -> Path:
    """A gallery of links to the first `limit` images of `data` (identity folders kept)."""
    count = 0
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.jpg")):
            if count == limit:
                return into
            (into / folder.name).mkdir(parents=True, exist_ok=True)
            os.symlink(image.resolve(), into / folder.name / image.name)
            count += 1
    return into


def bench_build(args, work: Path) -> dict:
    model_path = args.model
    if model_path is None:
        torch.manual_seed(0)
        model_path = str(work / "small.pt")
        # LFW faces fill the central half of the image: crop 0.5, as a trained model would.
        save_checkpoint(model_path, EmbeddingNet("small", 128), Preprocess(64, 0.5), "human", 1.0)
    model = load_model(model_path, device=args.device)
    gallery = gallery_slice(args.data, args.limit, work / "gallery") if args.limit else args.data

    before = forward_throughput(model, args.batch_size)
    model_seconds = time_model_calls()
    # LFW is already cropped: the build decodes and embeds, as the bare model is compared with.
    with IndexWriter(work / "index", create=True, model=model_path, detector="none",
                     batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress) as writer:
        report = writer.build(gallery)
        model_busy = model_seconds[0]
        unchanged = writer.build(gallery)     # nothing changed: hashes every file, embeds none
    after = forward_throughput(model, args.batch_size)
    # The model's own speed: its best thread count, averaged over before and after the build.
    by_threads = {threads: (before[threads] + after[threads]) / 2 for threads in before}
    forward = max(by_threads.values())
    build_rate = report.images_added / report.seconds
    return {"images": report.images_added, "skipped": report.skipped, "seconds": report.seconds,
            "build_images_per_s": round(build_rate, 1), "forward_images_per_s": round(forward, 1),
            "forward_by_threads": {t: round(r, 1) for t, r in by_threads.items()},
            "forward_before_after": [round(max(before.values()), 1), round(max(after.values()), 1)],
            "ratio_build_to_forward": round(build_rate / forward, 3),
            # Load-independent view: how much of the build's wall time the model was busy.
            "model_busy_fraction": round(model_busy / report.seconds, 3),
            "rebuild_unchanged_seconds": unchanged.seconds,
            "workers": default_workers(False) if args.workers is None else args.workers,
            "batch_size": args.batch_size, "cores": available_cores(),
            "peak_rss_mb": {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                            "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}}


def face_like_vectors(n: int, dim: int, per_identity: int, rng: np.random.Generator,
                      centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around identity centres; noise 0.65 per dimension gives cosine ~0.7
    between two images of one identity, ~0 between identities (as trained embeddings)."""
    if centres is None:
        centres = rng.standard_normal((max(1, n // per_identity), dim)).astype(np.float32)
    owners = rng.integers(0, len(centres), n)
    vectors = centres[owners] + 0.65 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), centres


def bench_recall(args) -> dict:
    rng = np.random.default_rng(0)
    vectors, centres = face_like_vectors(args.synthetic, args.dim, 5, rng)
    queries, _ = face_like_vectors(args.queries, args.dim, 5, rng, centres)
    exact = FaissStore.create(args.dim, "flat")
    exact.add(np.arange(len(vectors)), vectors)
    chosen = auto_index_type("flat", exact.ntotal)
    started = time.perf_counter()
    trained = exact.converted(chosen)
    build_seconds = time.perf_counter() - started

    def timed_search(store):
        started = time.perf_counter()
        scores, ids = store.search(queries, args.k)
        return scores, ids, 1000 * (time.perf_counter() - started) / len(queries)

    exact_scores, exact_ids, exact_ms = timed_search(exact)
    _, found_ids, trained_ms = timed_search(trained)
    overlap = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact_ids.tolist(), found_ids.tolist())])
    # Matches that matter to face search: exact neighbours within the verification distance.
    within = exact_scores >= 1 - args.match_distance ** 2 / 2
    found_matches = sum(len(set(e[w]) & set(f)) for e, w, f in zip(exact_ids, within, found_ids))
    return {"vectors": len(vectors), "dim": args.dim, "queries": len(queries), "auto_index_type": chosen,
            "nlist": getattr(trained.index, "nlist", None), "nprobe": getattr(trained.index, "nprobe", None),
            "train_and_fill_seconds": round(build_seconds, 2),
            "recall@1": round(float(np.mean(exact_ids[:, 0] == found_ids[:, 0])), 4),
            f"recall@{args.k}": round(float(overlap), 4),
            "match_recall": round(found_matches / max(1, int(within.sum())), 4),
            "match_distance": args.match_distance,
            "query_ms": {"flat": round(exact_ms, 3), chosen: round(trained_ms, 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=LFW)
    parser.add_argument("--limit", type=int, help="Index only the first N images.")
    parser.add_argument("--model", help="Checkpoint to embed with (default: a fresh small 64 px model; "
                                        "throughput does not depend on the weights).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help=f"Decoding workers (default {default_workers(False)}).")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--synthetic", type=int, default=TRAINED_INDEX_MIN_SIZE + 50_000,
                        help="Synthetic vectors for the recall test.")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--match-distance", type=float, default=1.0,
                        help="L2 distance within which an exact neighbour counts as a match.")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result = {}
    with tempfile.TemporaryDirectory(prefix="bench_indexer_") as work:
        if not args.skip_build:
            result["build"] = bench_build(args, Path(work))
    if not args.skip_recall:
        result["recall"] = bench_recall(args)
    if args.json:
        print(json.dumps(result))
        return
    if "build" in result:
        b = result["build"]
        print(f"build: {b['images']} images ({b['skipped']} skipped) in {b['seconds']:.1f} s = "
              f"{b['build_images_per_s']} images/s; bare model forward {b['forward_images_per_s']} images/s "
              f"(best of threads {b['forward_by_threads']}; before/after {b['forward_before_after']}); "
              f"ratio {b['ratio_build_to_forward']:.2f}; model busy {b['model_busy_fraction']:.0%} of the build; "
              f"rebuild with nothing changed {b['rebuild_unchanged_seconds']:.1f} s "
              f"[{b['cores']} cores, {b['workers']} workers, batch {b['batch_size']}; "
              f"peak RSS main {b['peak_rss_mb']['main']} MB, workers {b['peak_rss_mb']['workers']} MB]")
    if "recall" in result:
        r = result["recall"]
        print(f"recall: {r['vectors']} x {r['dim']}-D synthetic vectors, auto chose {r['auto_index_type']} "
              f"(nlist {r['nlist']}, nprobe {r['nprobe']}, trained+filled in {r['train_and_fill_seconds']} s): "
              f"recall@1 {r['recall@1']}, recall@{args.k} {r[f'recall@{args.k}']}, "
              f"match recall {r['match_recall']} (exact neighbours within L2 {r['match_distance']}); "
              f"ms/query flat {r['query_ms']['flat']} vs {r['auto_index_type']} "
              f"{r['query_ms'][r['auto_index_type']]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
