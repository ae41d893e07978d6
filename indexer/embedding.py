"""The embedding pipeline: files in, face embeddings out, in batches.

DataLoader worker processes read each file once (hashing the bytes), decode it with
faces.imaging.load_image, find its faces with the faces.detectors detector and crop them
with the model's Preprocess; the main process runs the model on whole batches. So decoding
overlaps the model, and only a few batches are ever in memory.
"""
from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from faces.checkpoint import FaceModel
from faces.detectors import finds_faces, get_detector, shadowed
from faces.imaging import ImageError, Preprocess, load_image, read_image_file

from .config import available_cores, default_workers


@dataclass(frozen=True)
class WorkItem:
    path: str
    identity: str | None


@dataclass
class ImageResult:
    """One file after decoding: its faces' boxes, or the reason it was skipped."""

    path: str
    identity: str | None
    sha256: str | None = None
    file_size: int | None = None
    boxes: list = field(default_factory=list)   # one entry per face: (x0, y0, x1, y1) or None
    skip_reason: str | None = None
    species: list = field(default_factory=list)  # each face's species (merge_models); empty: the one model's


@dataclass
class Batch:
    results: list[ImageResult]
    crops: torch.Tensor          # uint8 F x 3 x S x S, the faces of all results in order


class FaceCrops(Dataset):
    """items[i] -> (ImageResult, uint8 crops of its faces)."""

    def __init__(self, items: list[WorkItem], preprocess: Preprocess, detector: str):
        self.items = items
        self.preprocess = preprocess
        self.detector_name = detector
        self._detector = None    # made lazily, once in each worker process

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[ImageResult, torch.Tensor | None]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[ImageResult, torch.Tensor | None]]:
        """A whole batch at once (DataLoader's batched fetch): every photo is read, then the
        detector sees them together, so one that batches its network (blazeface) runs it
        across photos."""
        results, images = [], []
        for i in indices:
            item = self.items[i]
            result = ImageResult(item.path, item.identity)
            results.append(result)
            images.append(None)
            try:
                data = read_image_file(item.path)
            except ImageError as error:
                result.skip_reason = error.reason
                continue
            result.file_size = len(data)
            result.sha256 = hashlib.sha256(data).hexdigest()
            try:
                images[-1] = load_image(data, name=item.path)
            except ImageError as error:
                result.skip_reason = error.reason
        if self._detector is None:
            self._detector = get_detector(self.detector_name, self.preprocess)
        readable = [n for n, image in enumerate(images) if image is not None]
        found = dict(zip(readable, self._detector.detect_many([images[n] for n in readable]))
                     if hasattr(self._detector, "detect_many")
                     else ((n, self._detector(images[n])) for n in readable))
        samples = []
        for n, result in enumerate(results):
            faces = found.get(n)
            if faces is None:
                samples.append((result, None))
            elif not faces:
                result.skip_reason = "no face found"
                samples.append((result, None))
            else:
                result.boxes = [tuple(int(v) for v in face.box) if face.box is not None else None for face in faces]
                samples.append((result, torch.stack([self.preprocess.to_uint8(face.image) for face in faces])))
        return samples


def collate(samples: list[tuple[ImageResult, torch.Tensor | None]]) -> Batch:
    crops = [c for _, c in samples if c is not None]
    return Batch([r for r, _ in samples], torch.cat(crops) if crops else torch.empty(0, dtype=torch.uint8))


def _worker_init(_worker_id: int) -> None:
    # Each worker decodes one image at a time; torch threads would only fight the model.
    torch.set_num_threads(1)


def embed_files(items: list[WorkItem], model: FaceModel, detector: str, batch_size: int = 64,
                workers: int | None = None) -> Iterator[tuple[list[ImageResult], np.ndarray]]:
    """(results, vectors) per batch: vectors holds one row per face, in the results' order."""
    if not items:
        return
    workers = default_workers(finds_faces(detector, model.preprocess)) if workers is None else workers
    loader = DataLoader(FaceCrops(items, model.preprocess, detector), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate, worker_init_fn=_worker_init,
                        prefetch_factor=4 if workers else None)
    threads = torch.get_num_threads()
    if workers and model.device.type == "cpu":
        # Leave the decoding workers their cores: a CPU model whose threads outnumber the
        # free cores stalls at every parallel op while a worker holds one of them.
        torch.set_num_threads(max(1, min(threads, available_cores() - workers)))
    try:
        for batch in loader:
            vectors = (model.embed_tensor(batch.crops) if len(batch.crops)
                       else np.empty((0, model.embedding_dim), np.float32))
            yield batch.results, vectors
    finally:
        torch.set_num_threads(threads)


def merge_models(species: list[str], streams: list[Iterable[tuple[list[ImageResult], np.ndarray]]]
                 ) -> Iterator[tuple[list[ImageResult], dict[str, np.ndarray]]]:
    """One model's, or several models' (results, vectors) batches of the same items, as
    (results, {species: vectors}): each result holds the faces every model's detector found
    in the file (`species` says whose each is; `vectors[s]` has a row per face of species s,
    in the results' order). A file is skipped only when no model found a face in it (or it
    could not be read: every model says so alike). The streams may batch differently (Ray):
    items are matched by position."""
    if len(streams) == 1:
        for results, vectors in streams[0]:
            yield results, {species[0]: vectors}
        return
    threads = torch.get_num_threads()     # each stream sets and restores it: restored once, here
    iterators = [iter(stream) for stream in streams]
    buffers: list[deque] = [deque() for _ in streams]
    try:
        while True:
            for iterator, buffer in zip(iterators, buffers):
                while not buffer:
                    batch = next(iterator, None)
                    if batch is None:
                        break
                    results, vectors = batch
                    offset = 0
                    for result in results:
                        buffer.append((result, vectors[offset:offset + len(result.boxes)]))
                        offset += len(result.boxes)
            ready = min(len(buffer) for buffer in buffers)
            if not ready:
                if any(buffers):
                    raise RuntimeError("the models' embedding streams gave different numbers of files")
                return
            merged, vectors = [], {kind: [] for kind in species}
            for _ in range(ready):
                parts = [buffer.popleft() for buffer in buffers]
                if len({result.path for result, _ in parts}) != 1:
                    raise RuntimeError("the models' embedding streams gave files in different orders")
                found = [(kind, result, rows) for kind, (result, rows) in zip(species, parts)
                         if result.skip_reason is None]
                if not found:
                    merged.append(parts[0][0])
                    continue
                faces = [(kind, box, row) for kind, result, rows in found for box, row in zip(result.boxes, rows)]
                hidden = shadowed([(kind, box) for kind, box, _ in faces])
                faces = [face for face, hide in zip(faces, hidden) if not hide]   # another species' face seen again
                merged.append(replace(found[0][1], boxes=[box for _, box, _ in faces],
                                      species=[kind for kind, _, _ in faces]))
                for kind, _, row in faces:
                    vectors[kind].append(row[None])
            yield merged, {kind: np.concatenate(rows) if rows else np.empty((0, 0), np.float32)
                           for kind, rows in vectors.items()}
    finally:
        for iterator in reversed(iterators):
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        torch.set_num_threads(threads)
