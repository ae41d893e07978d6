"""Changing an index: build, add, remove. One writer at a time (IndexLock).

Crash safety (a writer killed at any instant leaves a usable index, and the next one
finishes the job without duplicates) comes from the order of every change:

- adding: rows are committed as `pending` (their ids fixed), their vectors go into the
  in-memory FAISS index, and at each checkpoint the index is written to a temporary file
  and renamed over the old one; only then do the pending rows become `indexed`.
- removing: rows are deleted (committed) first, then their vectors; until the next
  snapshot the saved index holds vectors without rows, which readers ignore.

With Milvus (indexer.milvus_store) an insert is kept at once and a snapshot is a flush; the
same order still holds, since a pending row whose vector is stored is simply settled.

So on opening, `reconcile` needs only the saved index and the database: pending rows whose
vectors made it into the snapshot become indexed, the others are dropped (their files are
new again to the next build), and vectors without a row are removed.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from faces.checkpoint import BUNDLED_MODELS, DEFAULT_MODEL, FaceModel, file_sha256, load_model
from faces.detectors import concrete_name
from faces.errors import readable
from faces.imaging import not_regular_reason, os_error_reason, resolve_data_root

from .config import DATABASE_FILE, DEFAULT_CHECKPOINT_EVERY, VECTORS_FILE
from .gallery import gallery_size
from .db import (INDEXED, PENDING, SKIPPED, BuildRecord, ImageRecord, ModelRecord, gallery_roots, open_database,
                 utc_now)
from .embedding import ImageResult, WorkItem, embed_files
from .errors import IndexCorruptError, IndexMissingError, ModelMismatchError
from .lock import IndexLock, lock_for_writing
from .scan import GalleryFile, identity_of, walk_gallery
from .settings import IndexSettings, save_settings, settings_for_writer
from .store import INDEX_TYPES, FaissStore, VectorStore, auto_index_type, open_store

log = logging.getLogger(__name__)

SQL_CHUNK = 500            # ids per IN (...) clause
EXAMPLES_KEPT = 10         # skipped files named in a report (all are in the database)


def batched(iterable: Iterable, size: int) -> Iterator[tuple]:
    """itertools.batched, which Python 3.11 lacks."""
    iterator = iter(iterable)
    while chunk := tuple(islice(iterator, size)):
        yield chunk


@dataclass
class ChangeReport:
    """What one build / add / remove / repair did."""

    kind: str
    gallery_root: str | None = None
    files: int = 0                 # files looked at
    unchanged: int = 0
    images_added: int = 0          # files embedded (each gives one or more faces)
    faces_added: int = 0
    removed: int = 0               # database rows removed (changed, pruned or removed files)
    missing: int = 0               # indexed files gone from disk, kept (no --prune)
    identities_updated: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    skipped_examples: list = field(default_factory=list)
    not_found: list = field(default_factory=list)   # remove: paths not in the index
    individuals_joined: int = 0    # new faces put into an individual (once the index is grouped)
    individuals_new: int = 0       # individuals started by them
    index_type: str = "flat"
    vectors: int = 0
    seconds: float = 0.0
    started_at: datetime = field(default_factory=utc_now)
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def skipped(self) -> int:
        return sum(self.skip_reasons.values())

    @property
    def changed(self) -> bool:
        return bool(self.images_added or self.removed or self.skipped or self.identities_updated)

    def note_skip(self, path: str, reason: str) -> None:
        self.skip_reasons[reason] += 1
        if len(self.skipped_examples) < EXAMPLES_KEPT:
            self.skipped_examples.append(f"{readable(path)}: {reason}")

    def to_dict(self) -> dict:
        data = {key: value for key, value in self.__dict__.items() if not key.startswith("_")}
        data["started_at"] = self.started_at.isoformat()
        data["skip_reasons"] = dict(self.skip_reasons)
        data["gallery_root"] = readable(self.gallery_root) if self.gallery_root else None
        data["skipped"] = self.skipped
        data["images_per_second"] = round(self.images_added / self.seconds, 1) if self.seconds else None
        return data


@dataclass
class Plan:
    """What to do with a set of files, decided against the database before any change."""

    items: list[WorkItem] = field(default_factory=list)      # to embed
    stale_ids: list[int] = field(default_factory=list)       # rows of changed files, to delete
    skips: list[ImageResult] = field(default_factory=list)   # unusable before decoding
    identity_updates: dict[int, str | None] = field(default_factory=dict)


def model_source(name_or_path: str) -> str:
    """How the database records a model so it can be loaded again from anywhere."""
    return name_or_path if name_or_path in BUNDLED_MODELS else os.path.abspath(name_or_path)


class IndexWriter:
    """The index at `index_dir`, opened for changes (and locked) until `close()`."""

    def __init__(self, index_dir: str | os.PathLike, *, create: bool = False, model: str | None = None,
                 detector: str | None = None, index_type: str = "auto", batch_size: int = 64,
                 workers: int | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 progress: bool = True, lock: IndexLock | None = None, store: str | None = None,
                 database: str | None = None, build_engine: str = "local"):
        """`lock`: this index's lock_for_writing, when the caller took it already. `store`
        and `database`: --store and --db (indexer.settings), for a new index. `build_engine`
        (--engine): 'local' embeds in this process, 'ray' over Ray Data (indexer.ray_build)."""
        if index_type not in INDEX_TYPES + ("auto",):
            raise ValueError(f"unknown index type {index_type!r}")
        if build_engine not in ("local", "ray"):
            raise ValueError(f"unknown build engine {build_engine!r}; choose local or ray")
        self.index_dir = Path(index_dir)
        self.database_path = self.index_dir / DATABASE_FILE
        self.vectors_path = self.index_dir / VECTORS_FILE
        self.requested_model, self.requested_detector = model, detector
        self.index_type = index_type
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.checkpoint_every = checkpoint_every
        self._face_model: FaceModel | None = None
        self.build_engine = build_engine
        self._store: VectorStore | None = None
        self._unsaved = False         # the in-memory index differs from the saved one
        self._since_checkpoint = 0
        self.lock = lock or lock_for_writing(self.index_dir, create)
        try:
            self.settings, is_new = settings_for_writer(self.index_dir, store, database)
            if is_new and self.settings.milvus is not None:
                from .milvus_store import connect      # pymilvus: only for indexes that use it
                connect(self.settings.milvus).close()  # a wrong URI fails before anything is made
            self.engine = open_database(self.settings.database or self.database_path, lock_dir=self.index_dir)
            if is_new and self.settings != IndexSettings():
                save_settings(self.index_dir, self.settings)    # only once database and store answer
            with Session(self.engine) as session:
                self.model_record: ModelRecord | None = session.scalar(select(ModelRecord))
            if self.model_record is None and not create:
                raise IndexMissingError(f"no index at {self.index_dir} (nothing indexed yet): "
                                        "run `indexer build GALLERY` first")
            if (self.model_record is not None and detector
                    and concrete_name(detector, self.model_record.species) != self.model_record.detector):
                raise ModelMismatchError(
                    f"{self.index_dir} was built with detector {self.model_record.detector!r}, not "
                    f"{detector!r}: faces cropped differently do not compare; use another --index")
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        """The vector index, opened on first use (IndexCorruptError if unreadable)."""
        if self._store is None:
            self._store = open_store(self.settings, self.vectors_path, self.model_record.embedding_dim)
        return self._store

    @store.setter
    def store(self, store: VectorStore) -> None:
        if self._store is not None and self._store is not store:
            self._store.close()
        self._store = store
        self._unsaved = True

    def empty_store(self) -> None:
        """Start the vectors afresh (repairing an unreadable FAISS file): an empty FAISS index,
        or the Milvus collection emptied."""
        if self.settings.milvus is None:
            self.store = FaissStore.create(self.model_record.embedding_dim)
        else:
            self.store.remove(self.store.ids())
            self._unsaved = True

    def face_model(self) -> FaceModel:
        """The index's model, loaded on first use; a different model is refused."""
        if self._face_model is not None:
            return self._face_model
        record = self.model_record
        model = load_model(self.requested_model or (record.source if record else DEFAULT_MODEL))
        if record is None:
            # Recorded by its concrete name ('auto' resolved), so queries use the very same one.
            detector = concrete_name(self.requested_detector, model.species)   # an unknown name fails here
            record = ModelRecord(name=model.name, source=model_source(self.requested_model or DEFAULT_MODEL),
                                 sha256=model.sha256, embedding_dim=model.embedding_dim,
                                 species=model.species, threshold=model.threshold, detector=detector)
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                session.add(record)
            self.model_record = record
        elif model.sha256 != record.sha256:
            what = ("the model file has changed since" if not self.requested_model
                    else f"model {model.name} (sha256 {model.sha256[:12]}) is not the one")
            raise ModelMismatchError(
                f"{self.index_dir}: {what} the index was built with {record.name} "
                f"(sha256 {record.sha256[:12]}); embeddings of different models cannot be mixed: "
                "build a separate index with --index DIR")
        elif self.requested_model and model_source(self.requested_model) != record.source:
            # The same model file found somewhere else: remember where, for search and web.
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                record.source = model_source(self.requested_model)
                session.merge(record)
        self._face_model = model
        return model

    def reconcile(self, repairing: bool = False) -> np.ndarray:
        """Bring database and saved index together after an interrupted writer (see module doc).

        Returns the ids of indexed rows without a vector, which no crash can cause: that is
        damage, refused here unless `repairing` (check --repair re-embeds them)."""
        stored = self.store.ids()
        with Session(self.engine) as session:
            pending = np.array(session.scalars(select(ImageRecord.id).where(ImageRecord.status == PENDING)).all(),
                               dtype=np.int64)
            indexed = np.array(session.scalars(select(ImageRecord.id).where(ImageRecord.status == INDEXED)).all(),
                               dtype=np.int64)
        lost = np.setdiff1d(indexed, stored)
        if len(lost) and not repairing:
            raise IndexCorruptError(f"{self.index_dir}: {len(lost)} indexed images have no vector in "
                                    f"{self.vectors_path.name}; run `indexer check --repair`")
        orphans = np.setdiff1d(stored, np.concatenate([pending, indexed]))
        if len(orphans):
            log.info("removing %d vectors whose rows were deleted by an interrupted run", len(orphans))
            self.store.remove(orphans)
            self.store.save(self.vectors_path)
            self._unsaved = False
        saved, unsaved = np.intersect1d(pending, stored), np.setdiff1d(pending, stored)
        if len(saved) or len(unsaved):
            log.info("interrupted run: %d faces were saved, %d will be indexed again", len(saved), len(unsaved))
            with Session(self.engine) as session, session.begin():
                for chunk in batched(saved.tolist(), SQL_CHUNK):
                    session.execute(update(ImageRecord).where(ImageRecord.id.in_(chunk)).values(status=INDEXED))
                for chunk in batched(unsaved.tolist(), SQL_CHUNK):
                    session.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
        return lost

    def close(self) -> None:
        if getattr(self, "_store", None) is not None:
            self._store.close()
            self._store = None
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()
        self.lock.release()

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands ---------------------------------------------------------------------

    def build(self, gallery: str | os.PathLike, prune: bool = False) -> ChangeReport:
        """Index every new or changed image under `gallery`; with `prune`, forget deleted ones."""
        root = os.path.abspath(resolve_data_root(gallery))
        report = ChangeReport("build", gallery_root=root)
        self.face_model()        # refuse a mismatched model before looking at any file
        self.reconcile()
        plan = Plan()
        for chunk in batched(walk_gallery(root), SQL_CHUNK):
            self._plan_files(chunk, plan, report)
        gone = self._rows_gone_from_disk(root)
        if prune:
            plan.stale_ids.extend(row_id for row_id, _ in gone)
            report.removed += len(gone)
        else:
            report.missing = len({path for _, path in gone})
        self._apply(plan, report)
        return self.finish(report)

    def add(self, files: Iterable[str | os.PathLike], identity: str | None = None) -> ChangeReport:
        """Index the given files (again, if they changed)."""
        report = ChangeReport("add")
        self.face_model()
        self.reconcile()
        roots = self._gallery_roots()
        gallery_files = []
        for file in files:
            path = os.path.abspath(file)
            name = identity
            if name is None:
                root = next((r for r in roots if path.startswith(r + os.sep)), None)
                name = identity_of(path, root) if root else None
            try:
                gallery_files.append(GalleryFile(path, name, not_regular_reason(os.stat(path).st_mode)))
            except OSError as error:
                gallery_files.append(GalleryFile(path, name, os_error_reason(error)))
        plan = Plan()
        for chunk in batched(gallery_files, SQL_CHUNK):
            self._plan_files(chunk, plan, report)
        self._apply(plan, report)
        return self.finish(report)

    def forget(self, individual_id: int) -> ChangeReport:
        """Forget an individual: its faces leave the index and the database (the photos stay
        on disk), then the individual itself."""
        from .individuals import face_ids_of
        report = ChangeReport("forget")
        self.reconcile()
        ids = sorted(face_ids_of(self.engine, individual_id))
        report.removed = len(ids)
        self.delete_rows(ids)
        return self.finish(report)

    def remove(self, files: Iterable[str | os.PathLike] = (), identity: str | None = None) -> ChangeReport:
        """Forget the given files, or every image of `identity`."""
        report = ChangeReport("remove")
        self.reconcile()
        ids: list[int] = []
        with Session(self.engine) as session:
            if identity is not None:
                ids = list(session.scalars(select(ImageRecord.id).where(ImageRecord.identity == identity)))
                if not ids:
                    report.not_found.append(f"identity {readable(identity)}")
            for file in files:
                path = os.path.abspath(file)
                found = list(session.scalars(select(ImageRecord.id).where(ImageRecord.path == path)))
                ids.extend(found)
                if not found:
                    report.not_found.append(readable(path))
        ids = sorted(set(ids))
        report.removed = len(ids)
        self.delete_rows(ids)
        return self.finish(report)

    # --- the steps --------------------------------------------------------------------

    def _plan_files(self, files: tuple[GalleryFile, ...], plan: Plan, report: ChangeReport) -> None:
        with Session(self.engine) as session:
            known: dict[str, list[ImageRecord]] = defaultdict(list)
            for record in session.scalars(select(ImageRecord).where(ImageRecord.path.in_([f.path for f in files]))):
                known[record.path].append(record)
        for file in files:
            report.files += 1
            records = known.get(file.path, [])
            problem, sha256 = file.problem, None
            if records and problem is None:
                try:
                    sha256 = file_sha256(file.path)
                except OSError as error:
                    problem = os_error_reason(error)
            if problem is not None:
                # Unusable before decoding: unchanged if it was already recorded so.
                if records and all(r.status == SKIPPED and r.skip_reason == problem for r in records):
                    report.unchanged += 1
                else:
                    plan.stale_ids.extend(r.id for r in records)
                    report.removed += len(records)
                    plan.skips.append(ImageResult(file.path, file.identity, skip_reason=problem))
            elif not records:
                plan.items.append(WorkItem(file.path, file.identity))
            elif all(r.sha256 == sha256 for r in records):
                report.unchanged += 1
                for record in records:
                    if record.identity != file.identity:
                        plan.identity_updates[record.id] = file.identity
            else:
                plan.stale_ids.extend(r.id for r in records)
                report.removed += len(records)
                plan.items.append(WorkItem(file.path, file.identity))

    def _rows_gone_from_disk(self, root: str) -> list[tuple[int, str]]:
        """(id, path) of rows under `root` whose file no longer exists."""
        with Session(self.engine) as session:
            # Paths are bytes, compared byte-wise: those under root/ sort from "root/" up to
            # "root0" ("0" follows "/"), a range the path index serves.
            rows = session.execute(select(ImageRecord.id, ImageRecord.path)
                                   .where(ImageRecord.path >= root + os.sep,
                                          ImageRecord.path < root + chr(ord(os.sep) + 1))
                                   .execution_options(yield_per=5000))
            return [(row.id, row.path) for row in rows if not os.path.lexists(row.path)]

    def _apply(self, plan: Plan, report: ChangeReport) -> None:
        self.delete_rows(plan.stale_ids)
        if plan.identity_updates:
            with Session(self.engine) as session, session.begin():
                session.execute(update(ImageRecord), [{"id": i, "identity": name}
                                                      for i, name in plan.identity_updates.items()])
            report.identities_updated = len(plan.identity_updates)
        if plan.skips:
            self._insert(plan.skips, np.empty((0, self.store.dim), np.float32), report)
        self.index_items(plan.items, report)

    def index_items(self, items: list[WorkItem], report: ChangeReport) -> None:
        """Embed and insert `items`, saving a snapshot every `checkpoint_every` faces."""
        if not items:
            return
        bar = tqdm(total=len(items), unit="img", desc="indexing", disable=not self.progress,
                   dynamic_ncols=True)
        with bar:
            for results, vectors in self._embedded(items):
                self._insert(results, vectors, report)
                bar.update(len(results))
                bar.set_postfix(skipped=report.skipped, refresh=False)
                # The interval grows with the index, so snapshot writes stay O(N) in total.
                if self._since_checkpoint >= max(self.checkpoint_every, self.store.ntotal // 4):
                    self.checkpoint()

    def _embedded(self, items: list[WorkItem]):
        """(results, vectors) batches of `items`: in this process, or over Ray (--engine ray)."""
        model = self.face_model()
        if self.build_engine == "ray":
            from .ray_build import embed_files_on_ray     # Ray: only for builds that use it
            return embed_files_on_ray(items, self.model_record.source, model.sha256, model.embedding_dim,
                                      self.model_record.detector, self.batch_size, actors=self.workers)
        return embed_files(items, model, self.model_record.detector, self.batch_size, self.workers)

    def _insert(self, results: list[ImageResult], vectors: np.ndarray, report: ChangeReport) -> None:
        common = {"species": self.model_record.species, "added_at": utc_now()}
        skipped, faces = [], []
        for result in results:
            row = {**common, "path": result.path, "sha256": result.sha256, "identity": result.identity,
                   "file_size": result.file_size}
            if result.skip_reason is not None:
                report.note_skip(result.path, result.skip_reason)
                skipped.append({**row, "status": SKIPPED, "skip_reason": result.skip_reason})
                continue
            report.images_added += 1
            for box in result.boxes:
                x0, y0, x1, y1 = box if box is not None else (None,) * 4
                faces.append({**row, "status": PENDING, "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1})
        # Core inserts (one statement per kind of row): the ORM's unit of work would cost
        # more per batch than the model does.
        with self.engine.begin() as connection:
            if skipped:
                connection.execute(insert(ImageRecord), skipped)
            ids = list(connection.scalars(insert(ImageRecord).returning(ImageRecord.id, sort_by_parameter_order=True),
                                          faces)) if faces else []
        self.store.add(ids, vectors)
        report.faces_added += len(ids)
        self._since_checkpoint += len(ids)
        self._unsaved = self._unsaved or bool(ids)

    def delete_rows(self, ids: list[int]) -> None:
        """Delete rows (committed first), then their vectors (saved at the next checkpoint)."""
        if not ids:
            return
        with Session(self.engine) as session, session.begin():
            for chunk in batched(ids, SQL_CHUNK):
                session.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
        if self.store.remove(np.array(ids, dtype=np.int64)):
            self._unsaved = True

    def checkpoint(self, final: bool = False) -> None:
        """Save the index atomically, then mark the rows it now holds as indexed."""
        if final and self.store.ntotal:
            target = (auto_index_type(self.store.index_type, self.store.ntotal) if self.index_type == "auto"
                      else self.index_type)
            if target != self.store.index_type:
                log.info("converting the index from %s to %s (%d vectors)", self.store.index_type, target,
                         self.store.ntotal)
                self.store = self.store.converted(target)
        if not self._unsaved:
            return
        self.store.save(self.vectors_path)
        with Session(self.engine) as session, session.begin():
            session.execute(update(ImageRecord).where(ImageRecord.status == PENDING).values(status=INDEXED))
        self._unsaved = False
        self._since_checkpoint = 0

    def finish(self, report: ChangeReport) -> ChangeReport:
        """Final snapshot, and the run recorded in the builds table if it changed anything."""
        self.checkpoint(final=True)
        self._settle_individuals(report)
        report.index_type, report.vectors = self.store.index_type, self.store.ntotal
        report.seconds = round(time.perf_counter() - report._clock, 3)
        if report.changed:
            with Session(self.engine) as session, session.begin():
                session.add(BuildRecord(kind=report.kind, gallery_root=report.gallery_root, started_at=report.started_at,
                                        finished_at=utc_now(), added=report.faces_added, removed=report.removed,
                                        skipped=report.skipped, unchanged=report.unchanged,
                                        index_type=self.store.index_type, vectors=self.store.ntotal))
        return report

    def _settle_individuals(self, report: ChangeReport) -> None:
        """Once the index is grouped into individuals: each new face joins one (or starts
        one), and individuals left without faces go. After the snapshot, so a crash here
        leaves faces merely unassigned, which the next run assigns."""
        from .individuals import assign_new_faces, drop_empty
        if report.faces_added:
            size = gallery_size(self.engine)
            threshold = self.face_model().match_rule(size["individuals"], size["faces"]).threshold
            done = assign_new_faces(self.engine, self.store, threshold)
            report.individuals_joined = done["assigned"] - done["new_individuals"]
            report.individuals_new = done["new_individuals"]
        if report.removed:
            with Session(self.engine) as session, session.begin():
                drop_empty(session)

    def _gallery_roots(self) -> list[str]:
        with Session(self.engine) as session:
            return gallery_roots(session)
