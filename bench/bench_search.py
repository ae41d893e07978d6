"""Search latency: warm queries against galleries of 10k, 100k (and, with --million, 1M)
faces, and the cold start of `search query` from the shell.

Warm: one QueryEngine per gallery, the photo already decoded; detection, embedding and
search are timed separately (p50 and p99 over --queries runs) and given as ratios to two
baselines measured in the same run: the bare model forward on the photo's face crops
(already preprocessed), and an exact numpy search (one matrix product + argpartition) over
the same vectors. Galleries are synthetic random unit vectors written through the
indexer's own writer (real SQLite rows and FAISS index), so search cost is what a real
index of that size pays.

Cold: `search query PHOTO --json` run as a new process, wall time to the answer, and the
same steps timed inside one fresh process: interpreter, imports, index load, model load,
first query.

    python bench/bench_search.py [--sizes 10000,100000] [--million] [--queries 50]
                                 [--photo PATH] [--model PATH] [--threads N] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexer.db import ImageRecord
from indexer.embedding import ImageResult
from indexer.writer import ChangeReport, IndexWriter
from search.engine import QueryEngine
from faces.checkpoint import load_model, resolve_model_path, save_checkpoint
from faces.imaging import Preprocess, load_image
from faces.models import EmbeddingNet

REPO = Path(__file__).resolve().parent.parent
GROUP_PHOTO = REPO.parent / "shared" / "data" / "samples" / "group_photo.jpg"
INSERT_CHUNK = 20_000
K = 10


def percentiles(samples_ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(samples_ms, 50)), 3),
            "p99": round(float(np.percentile(samples_ms, 99)), 3)}


def timed(fn, repeats: int) -> list[float]:
    fn()   # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_model(path: str | None, workdir: Path) -> str:
    """The bundled human model if there is one, else a fresh `small` checkpoint."""
    if path:
        return path
    try:
        return str(resolve_model_path("human"))
    except Exception:
        fresh = workdir / "small-untrained.pt"
        save_checkpoint(fresh, EmbeddingNet("small", 128).eval(), Preprocess(64, 0.5), "human", 1.0)
        return str(fresh)


def synthetic_index(index_dir: Path, model: str, size: int, seed: int = 0) -> np.ndarray:
    """An index of `size` random unit vectors (5 per identity); returns the vectors."""
    rng = np.random.default_rng(seed)
    with IndexWriter(index_dir, create=True, model=model, detector="none", progress=False) as writer:
        dim = writer.face_model().embedding_dim
        report = ChangeReport("build", gallery_root="synthetic")
        vectors = np.empty((size, dim), dtype=np.float32)
        for start in range(0, size, INSERT_CHUNK):
            count = min(INSERT_CHUNK, size - start)
            chunk = rng.standard_normal((count, dim), dtype=np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            vectors[start:start + count] = chunk
            results = [ImageResult(f"synthetic/{i // 5}/{i}.jpg", f"id{i // 5}", boxes=[None])
                       for i in range(start, start + count)]
            writer._insert(results, chunk, report)   # the writer's own path, minus decoding files
            report.images_added += count
        writer.finish(report)
    return vectors


def numpy_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def warm(index_dir: Path, vectors: np.ndarray, model_path: str, photo, repeats: int) -> dict:
    engine = QueryEngine(index_dir, model=model_path)
    model = engine.model
    stages = {"detect": [], "embed": [], "search": [], "total": []}

    def query():
        started = time.perf_counter()
        result = engine.query(photo, k=K)
        stages["total"].append((time.perf_counter() - started) * 1000)
        for stage in ("detect", "embed", "search"):
            stages[stage].append(result["timings_ms"][stage])
        return result

    faces = len(query()["faces"])     # warm-up, and the face count
    for samples in stages.values():
        samples.clear()
    for _ in range(repeats):
        query()

    crops = torch.stack([model.preprocess.to_uint8(face.image) for face in engine.pipeline.detector(photo)])
    inputs = model.preprocess.normalise(crops)

    def forward():
        with torch.inference_mode():
            model.net(inputs)
    queries = model.embed_tensor(crops)
    baselines = {"model_forward": percentiles(timed(forward, repeats)),
                 "numpy_search": percentiles(timed(lambda: numpy_search(vectors, queries, K), repeats))}
    report = {"faces": faces, "index_type": engine.gallery.store.index_type,
              **{stage: percentiles(samples) for stage, samples in stages.items()}, **baselines}
    forward_p50, numpy_p50 = baselines["model_forward"]["p50"], baselines["numpy_search"]["p50"]
    report["ratios_p50"] = {"detect / forward": round(report["detect"]["p50"] / forward_p50, 2),
                            "embed / forward": round(report["embed"]["p50"] / forward_p50, 2),
                            "search / numpy": round(report["search"]["p50"] / numpy_p50, 2),
                            "total / forward": round(report["total"]["p50"] / forward_p50, 2)}
    return report


COLD_STEPS = """
import json, sys, time
started = time.perf_counter()
import search.cli
cli_imported = time.perf_counter()
import search.engine, indexer.gallery, dlib, faiss, torch
imported = time.perf_counter()
torch.set_num_threads(1)   # as the search command does
engine = search.engine.QueryEngine(sys.argv[1], model=sys.argv[2])
loaded = time.perf_counter()
engine.query(sys.argv[3], k=10)
answered = time.perf_counter()
ms = lambda a, b: round((b - a) * 1000, 1)
print(json.dumps({"import search.cli": ms(started, cli_imported), "import engine": ms(cli_imported, imported),
                  "index load": engine.load_timings_ms["index"], "model load": engine.load_timings_ms["model"],
                  "first query": ms(loaded, answered), "in process": ms(started, answered)}))
"""


def cold(index_dir: Path, model_path: str, photo_path: Path, runs: int = 3) -> dict:
    search_cli = Path(sys.executable).with_name("search")
    command = [str(search_cli), "query", str(photo_path), "--index", str(index_dir), "--model", model_path, "--json"]
    walls, steps = [], []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        walls.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", COLD_STEPS, str(index_dir), model_path, str(photo_path)],
                                check=True, capture_output=True, text=True).stdout
        wall = (time.perf_counter() - started) * 1000
        step = json.loads(output)
        step["interpreter and exit"] = round(wall - step["in process"], 1)
        steps.append(step)
    median_steps = {key: float(np.median([s[key] for s in steps])) for key in steps[0]}
    return {"search query wall_ms": round(float(np.median(walls)), 1), "steps_ms": median_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="Gallery sizes, comma separated.")
    parser.add_argument("--million", action="store_true", help="Add a 1,000,000-face gallery (minutes, ~1 GB).")
    parser.add_argument("--queries", type=int, default=50, help="Warm queries per gallery.")
    parser.add_argument("--photo", type=Path, default=GROUP_PHOTO)
    parser.add_argument("--model", help="Checkpoint (default: bundled human, else an untrained small net).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (1, as `search` uses).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.million else [])

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        workdir = Path(tmp)
        model_path = bench_model(args.model, workdir)
        model = load_model(model_path)
        photo = load_image(args.photo)
        report = {"photo": str(args.photo), "model": model_path, "arch": model.net.arch,
                  "threads": torch.get_num_threads(), "k": K, "warm_ms": {}}
        for size in sizes:
            index_dir = workdir / f"index-{size}"
            started = time.perf_counter()
            vectors = synthetic_index(index_dir, model_path, size)
            build_seconds = round(time.perf_counter() - started, 1)
            report["warm_ms"][size] = {"build_s": build_seconds,
                                       **warm(index_dir, vectors, model_path, photo, args.queries)}
            if size == sizes[0]:
                report["cold"] = cold(index_dir, model_path, args.photo)
                report["cold"]["gallery"] = size
            del vectors
    if args.json:
        print(json.dumps(report))
        return
    print(f"photo {report['photo']}, model {report['arch']} ({report['model']}), "
          f"{report['threads']} threads, k={K}; times in ms, p50 / p99")
    for size, row in report["warm_ms"].items():
        stages = "  ".join(f"{name} {row[name]['p50']:.2f}/{row[name]['p99']:.2f}"
                           for name in ("detect", "embed", "search", "total", "model_forward", "numpy_search"))
        print(f"{size:>9,} faces ({row['index_type']}, {row['faces']} query faces): {stages}")
        print(f"{'':>9}  ratios at p50: {row['ratios_p50']}")
    c = report["cold"]
    print(f"cold `search query` ({c['gallery']:,} faces): {c['search query wall_ms']:.0f} ms wall; "
          f"steps {c['steps_ms']}")


if __name__ == "__main__":
    main()
