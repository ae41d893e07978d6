"""`indexer build --engine ray`: decode, detect/align and embed over Ray Data.

The writer (indexer.writer) stays one process: it plans the files against the database and
writes rows and vectors in the same crash-safe order as ever. Only the work per image moves:
a Ray Dataset of the files to embed goes through `FaceEmbedder` actors, each loading the
index's model once and running faces.imaging / faces.detectors / the network on its batches,
and the writer takes the (results, vectors) batches back as from the local pipeline
(indexer.embedding.embed_files), in the files' order.

Ray runs on the cluster $RAY_ADDRESS names (every node needs facesearch installed and the
model where its path says; bundled models are inside the package), else on a local one
started here with this machine's cores and shut down afterwards.

Actors ask for a fraction of a CPU: on 2 cores `map_batches(concurrency=2, num_cpus=1)` left no
CPU for Ray Data's own tasks and never finished (ray issue 44687); with ACTOR_CPUS each actor
still runs torch on one thread, so actors x 1 thread = the cores.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from typing import Iterator

import numpy as np

from .embedding import FaceCrops, ImageResult, WorkItem, collate
from .errors import IndexerError

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.5


class RayBuildError(IndexerError):
    """Ray is missing, or the cluster cannot be reached."""


class FaceEmbedder:
    """A Ray Data actor: one model for its lifetime; a batch of files in, their faces out.
    Each row comes back as `result` (the pickled ImageResult: paths may be any bytes, which
    Arrow strings cannot hold) and `vectors` (its faces' float32 embeddings, as bytes)."""

    def __init__(self, model_source: str, model_sha256: str, detector: str):
        import torch
        from faces.checkpoint import load_model
        torch.set_num_threads(1)
        self.model = load_model(model_source, device="cpu")
        if self.model.sha256 != model_sha256:
            raise RuntimeError(f"{model_source} on this Ray node is not the index's model "
                               f"(sha256 {self.model.sha256[:12]}, not {model_sha256[:12]})")
        self.detector = detector

    def __call__(self, batch: dict) -> dict:
        items = [WorkItem(os.fsdecode(path), None if identity is None else os.fsdecode(identity))
                 for path, identity in zip(batch["path"], batch["identity"])]
        crops = FaceCrops(items, self.model.preprocess, self.detector)
        faces = collate(crops.__getitems__(list(range(len(items)))))   # as a local build's loader does
        vectors = (self.model.embed_tensor(faces.crops) if len(faces.crops)
                   else np.empty((0, self.model.embedding_dim), np.float32))
        rows_vectors, offset = [], 0
        for result in faces.results:
            rows_vectors.append(vectors[offset:offset + len(result.boxes)].astype(np.float32).tobytes())
            offset += len(result.boxes)
        return {"result": np.array([pickle.dumps(r) for r in faces.results], dtype=object),
                "vectors": np.array(rows_vectors, dtype=object)}


def _start_ray():
    """(ray, started_here): connect to $RAY_ADDRESS, or start a local Ray on this machine."""
    try:
        import ray
    except ImportError:
        raise RayBuildError("--engine ray needs Ray: pip install 'facesearch[cluster]'") from None
    if ray.is_initialized():
        return ray, False
    address = os.environ.get("RAY_ADDRESS")
    # A local Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine that
    # once ran out (tests/test_ray_build.py, load average 7.5): a second start then succeeds.
    attempts = 1 if address else 2
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            return ray, True
        except Exception as error:       # Ray raises ConnectionError, RuntimeError, ValueError...
            ray.shutdown()
            if attempt == attempts:
                raise RayBuildError(f"Ray cluster {address or '(local)'}: cannot start or connect ({error})") from None
            log.warning("local Ray did not start (%s); trying once more", error)


@contextlib.contextmanager
def ray_session():
    """Ray started (or joined) once around a build's embedding streams (one per model), and
    stopped afterwards if started here: a stream then neither starts nor stops Ray itself."""
    ray, started_here = _start_ray()
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def embed_files_on_ray(items: list[WorkItem], model_source: str, model_sha256: str, dim: int, detector: str,
                       batch_size: int = 64, actors: int | None = None
                       ) -> Iterator[tuple[list[ImageResult], np.ndarray]]:
    """(results, vectors) per batch, as indexer.embedding.embed_files gives them, computed
    by `actors` FaceEmbedder actors (default: one per CPU of the cluster)."""
    if not items:
        return
    ray, started_here = _start_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True     # ids in file order, as a local build
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)     # no per-dataset chatter
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = max(1, actors or cpus)
        # Enough blocks that every actor has work, however small the batch of new files.
        blocks = min(len(items), max(actors, min(-(-len(items) // batch_size), 4 * actors)))
        dataset = ray.data.from_items(
            [{"path": os.fsencode(item.path), "identity": None if item.identity is None else os.fsencode(item.identity)}
             for item in items],
            override_num_blocks=blocks)
        embedded = dataset.map_batches(
            FaceEmbedder, fn_constructor_kwargs={"model_source": model_source, "model_sha256": model_sha256,
                                                 "detector": detector},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=ACTOR_CPUS)
        for batch in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
            results = [pickle.loads(row) for row in batch["result"]]
            parts = [np.frombuffer(row, np.float32) for row in batch["vectors"]]
            yield results, np.concatenate(parts + [np.empty(0, np.float32)]).reshape(-1, dim)
    finally:
        if started_here:
            ray.shutdown()
