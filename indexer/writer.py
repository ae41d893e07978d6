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

from faces.checkpoint import BUNDLED_MODELS, DEFAULT_MODEL, FaceModel, file_sha256, load_model, load_recorded_model
from faces.detectors import DETECTOR_SPECIES, concrete_name, detector_for
from faces.errors import ModelError, readable
from faces.imaging import not_regular_reason, os_error_reason, resolve_data_root

from .config import DATABASE_FILE, DEFAULT_CHECKPOINT_EVERY, VECTORS_FILE, vectors_file
from .gallery import gallery_size
from .db import (INDEXED, PENDING, SKIPPED, BuildRecord, ImageRecord, ModelRecord, gallery_roots, model_records,
                 open_database, utc_now)
from .embedding import ImageResult, WorkItem, embed_files, merge_models
from .errors import IndexCorruptError, IndexerError, IndexMissingError, ModelMismatchError
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
                 models: list[str] | None = None, detector: str | None = None, index_type: str = "auto", batch_size: int = 64,
                 workers: int | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 progress: bool = True, lock: IndexLock | None = None, store: str | None = None,
                 database: str | None = None, build_engine: str = "local"):
        """`lock`: this index's lock_for_writing, when the caller took it already. `store`
        and `database`: --store and --db (indexer.settings), for a new index. `build_engine`
        (--engine): 'local' embeds in this process, 'ray' over Ray Data (indexer.ray_build).
        `models` (--models): several models, one per species, for a new index; every face
        found by each model's detector is embedded by that model into its own vector store
        (the first model's is the main one: vectors.faiss, the Milvus collection's own name;
        the others' vectors-SPECIES.faiss, COLLECTION_SPECIES). `model` is one model."""
        if model and models:
            raise IndexerError("give --model or --models, not both")
        if index_type not in INDEX_TYPES + ("auto",):
            raise ValueError(f"unknown index type {index_type!r}")
        if build_engine not in ("local", "ray"):
            raise ValueError(f"unknown build engine {build_engine!r}; choose local or ray")
        self.index_dir = Path(index_dir)
        self.database_path = self.index_dir / DATABASE_FILE
        self.vectors_path = self.index_dir / VECTORS_FILE
        self.requested_models = list(models) if models else [model] if model else None
        self.requested_detector = detector
        self.index_type = index_type
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.checkpoint_every = checkpoint_every
        self._face_models: dict[str, FaceModel] = {}      # by species, in the models' order
        self.build_engine = build_engine
        self._stores: dict[str, VectorStore] = {}         # by species, opened on first use
        self._unsaved: set[str] = set()   # species whose in-memory index differs from the saved one
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
                self.model_records: list[ModelRecord] = model_records(session)
            if not self.model_records and not create:
                raise IndexMissingError(f"no index at {self.index_dir} (nothing indexed yet): "
                                        "run `indexer build GALLERY` first")
            for record in self.model_records if detector else ():
                if self._detector_asked(detector, record) not in (None, record.detector):
                    raise ModelMismatchError(
                        f"{self.index_dir} was built with detector {record.detector!r}"
                        + (f" for its {record.species} model" if self.several else "")
                        + f", not {detector!r}: faces cropped differently do not compare; use another --index")
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------

    @property
    def model_record(self) -> ModelRecord | None:
        """The main model's record (the only one of a one-model index); None before the first build."""
        return self.model_records[0] if self.model_records else None

    @property
    def several(self) -> bool:
        """Whether the index holds more than one model (`--models`)."""
        return len(self.model_records) > 1

    def _detector_asked(self, detector: str | None, record: ModelRecord) -> str | None:
        """The detector `detector` means for this model: in a one-model index any detector;
        among several, only one of its species' faces (or 'none'); else None (not for it)."""
        if not self.several:
            return concrete_name(detector, record.species)
        concrete = concrete_name(detector, record.species)
        return concrete if DETECTOR_SPECIES.get(concrete, record.species) == record.species else None

    def record_of(self, species: str) -> ModelRecord:
        for record in self.model_records:
            if record.species == species:
                return record
        raise ModelMismatchError(f"{self.index_dir} has no {species} model")

    def vectors_path_of(self, species: str) -> Path:
        """The FAISS file of a model's vectors: vectors.faiss for the main model."""
        return self.index_dir / vectors_file(None if species == self.model_records[0].species else species)

    def store_of(self, species: str) -> VectorStore:
        """A model's vector index, opened on first use (IndexCorruptError if unreadable)."""
        if species not in self._stores:
            record = self.record_of(species)
            main = record is self.model_records[0]
            self._stores[species] = open_store(self.settings, self.vectors_path_of(species), record.embedding_dim,
                                               None if main else species)
        return self._stores[species]

    def set_store(self, species: str, store: VectorStore) -> None:
        current = self._stores.get(species)
        if current is not None and current is not store:
            current.close()
        self._stores[species] = store
        self._unsaved.add(species)

    @property
    def store(self) -> VectorStore:
        """The main model's vector index (the only one of a one-model index)."""
        return self.store_of(self.model_record.species)

    @store.setter
    def store(self, store: VectorStore) -> None:
        self.set_store(self.model_record.species, store)

    def empty_store(self, species: str | None = None) -> None:
        """Start a model's vectors afresh (repairing an unreadable FAISS file): an empty FAISS
        index, or the Milvus collection emptied. `species` None: the main model's."""
        species = species or self.model_record.species
        if self.settings.milvus is None:
            self.set_store(species, FaissStore.create(self.record_of(species).embedding_dim))
        else:
            store = self.store_of(species)
            store.remove(store.ids())
            self._unsaved.add(species)

    def face_model(self) -> FaceModel:
        """The index's main model, loaded on first use (face_models)."""
        self.face_models()
        return self._face_models[self.model_record.species]

    def face_models(self) -> dict[str, FaceModel]:
        """The index's models by species (main first), loaded on first use; for a new index,
        the requested ones (default human) are recorded. A different model is refused."""
        if self._face_models:
            return self._face_models
        if not self.model_records:
            self._record_new_models()
            return self._face_models
        records = self.model_records
        names = ",".join(record.name for record in records)
        if self.requested_models is not None and len(self.requested_models) != len(records):
            raise ModelMismatchError(
                f"{self.index_dir} was built with {'models' if len(records) > 1 else 'model'} {names}, not "
                f"{','.join(self.requested_models)}: give --models {names} (or no model), or build a "
                "separate index with --index DIR")
        requested = {}
        for name in self.requested_models or ():
            loaded = load_model(name)
            requested[loaded.species] = (name, loaded)
        moved = []
        for record in records:
            if requested and record.species not in requested:
                raise ModelMismatchError(f"{self.index_dir}: no {record.species} model among "
                                         f"{','.join(self.requested_models)}; the index was built with {names}")
            asked, model = requested.get(record.species) or (None, None)
            if model is None:
                model = load_recorded_model(record.source, record.sha256)
                if model.name != record.source:
                    # A bundled name that now means another model: the index keeps its own, renamed.
                    record.source = record.name = model.name
                    moved.append(record)
            if not model.is_recorded_as(record.sha256):
                what = ("the model file has changed since" if not asked
                        else f"model {model.name} (sha256 {model.sha256[:12]}) is not the one")
                raise ModelMismatchError(
                    f"{self.index_dir}: {what} the index was built with {record.name} "
                    f"(sha256 {record.sha256[:12]}); embeddings of different models cannot be mixed: "
                    "build a separate index with --index DIR")
            if asked and model_source(asked) != record.source:
                record.source = model_source(asked)
                moved.append(record)
            self._face_models[record.species] = model
        if moved:
            # The same model file found somewhere else: remember where, for search and web.
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                for record in moved:
                    session.merge(record)
        return self._face_models

    def _record_new_models(self) -> None:
        sources = self.requested_models or [DEFAULT_MODEL]
        models = [load_model(source) for source in sources]
        seen: dict[str, str] = {}
        for source, model in zip(sources, models):
            if model.species in seen:
                raise ModelMismatchError(f"--models {','.join(sources)}: {seen[model.species]} and {source} are "
                                         f"both {model.species} models; an index holds one model per species")
            if len(models) > 1 and not model.species.isidentifier():
                raise ModelMismatchError(f"--models: {source}'s species {model.species!r} cannot name a vector "
                                         "store (letters, digits and _ only)")
            seen[model.species] = source
        records = []
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            for source, model in zip(sources, models):
                # Recorded by its concrete name ('auto' resolved), so queries use the very same one.
                detector = (detector_for(self.requested_detector, model.species) if len(models) > 1
                            else concrete_name(self.requested_detector, model.species))  # unknown: fails here
                record = ModelRecord(name=model.name, source=model_source(source), sha256=model.sha256,
                                     embedding_dim=model.embedding_dim, species=model.species,
                                     threshold=model.threshold, detector=detector)
                session.add(record)
                session.flush()          # ids in the order given: the first is the main model
                records.append(record)
        self.model_records = records
        self._face_models = {model.species: model for model in models}

    def reconcile(self, repairing: bool = False) -> np.ndarray:
        """Bring database and saved index together after an interrupted writer (see module doc).

        With several models each model's rows are compared with its own store; a file whose
        faces were saved in one store but not yet in another is indexed again whole (its
        saved faces' rows are deleted too), so no file is left with some of its faces.

        Returns the ids of indexed rows without a vector, which no crash can cause: that is
        damage, refused here unless `repairing` (check --repair re-embeds them)."""
        def ids_of(session, status: str, species: str) -> np.ndarray:
            query = select(ImageRecord.id).where(ImageRecord.status == status)
            if self.several:                     # a one-model index: every row is its model's
                query = query.where(ImageRecord.species == species)
            return np.array(session.scalars(query).all(), dtype=np.int64)

        lost_parts, saved, unsaved = [], {}, {}
        for record in self.model_records:
            store = self.store_of(record.species)
            stored = store.ids()
            with Session(self.engine) as session:
                indexed, pending = ids_of(session, INDEXED, record.species), ids_of(session, PENDING, record.species)
            lost = np.setdiff1d(indexed, stored)
            if len(lost) and not repairing:
                raise IndexCorruptError(f"{self.index_dir}: {len(lost)} indexed images have no vector in "
                                        f"{self._store_name(record.species)}; run `indexer check --repair`")
            lost_parts.append(lost)
            orphans = np.setdiff1d(stored, np.concatenate([pending, indexed]))
            if len(orphans):
                log.info("removing %d vectors whose rows were deleted by an interrupted run", len(orphans))
                store.remove(orphans)
                store.save(self.vectors_path_of(record.species))
                self._unsaved.discard(record.species)
            saved.update(dict.fromkeys(np.intersect1d(pending, stored).tolist(), record.species))
            unsaved.update(dict.fromkeys(np.setdiff1d(pending, stored).tolist(), record.species))
        if self.several and unsaved:
            # A file is settled whole: one face left unsaved sends all its pending faces back.
            with Session(self.engine) as session:
                paths = set()
                for chunk in batched(list(unsaved), SQL_CHUNK):
                    paths.update(session.scalars(select(ImageRecord.path).where(ImageRecord.id.in_(chunk))))
                for chunk in batched(list(paths), SQL_CHUNK):
                    for row in session.execute(select(ImageRecord.id, ImageRecord.species).where(
                            ImageRecord.path.in_(chunk), ImageRecord.status == PENDING)):
                        unsaved[row.id] = row.species
                        saved.pop(row.id, None)
        if saved or unsaved:
            log.info("interrupted run: %d faces were saved, %d will be indexed again", len(saved), len(unsaved))
            with Session(self.engine) as session, session.begin():
                for chunk in batched(list(saved), SQL_CHUNK):
                    session.execute(update(ImageRecord).where(ImageRecord.id.in_(chunk)).values(status=INDEXED))
                for chunk in batched(list(unsaved), SQL_CHUNK):
                    session.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
            for record in self.model_records:        # rows first, then their saved vectors
                gone = np.array([i for i, kind in unsaved.items() if kind == record.species], dtype=np.int64)
                if len(gone) and self.store_of(record.species).remove(gone):
                    self._unsaved.add(record.species)
        return np.concatenate(lost_parts) if lost_parts else np.empty(0, np.int64)

    def _store_name(self, species: str) -> str:
        if self.settings.milvus is not None:
            collection = self.settings.milvus.collection
            return f"collection {collection if species == self.model_record.species else collection + '_' + species}"
        return self.vectors_path_of(species).name

    def close(self) -> None:
        for store in getattr(self, "_stores", {}).values():
            store.close()
        self._stores = {}
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
        self.face_models()       # refuse a mismatched model before looking at any file
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
        self.face_models()
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
            self._insert(plan.skips, {}, report)
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
                if self._since_checkpoint >= max(self.checkpoint_every, self._vectors_total() // 4):
                    self.checkpoint()

    def _vectors_total(self) -> int:
        return sum(self.store_of(record.species).ntotal for record in self.model_records)

    def _embedded(self, items: list[WorkItem]):
        """(results, {species: vectors}) batches of `items`: in this process, or over Ray
        (--engine ray). With several models every photo goes through each model's detector
        and model, and each result lists its faces of every species (embedding.merge_models)."""
        models = self.face_models()
        streams = []
        if self.build_engine == "ray":
            from .ray_build import embed_files_on_ray, ray_session     # Ray: only for builds that use it
            session = ray_session()
            for record in self.model_records:
                model = models[record.species]
                streams.append(embed_files_on_ray(items, record.source, model.sha256, model.embedding_dim,
                                                  record.detector, self.batch_size, actors=self.workers))
        else:
            session = None
            for record in self.model_records:
                streams.append(embed_files(items, models[record.species], record.detector, self.batch_size,
                                           self.workers))
        species = [record.species for record in self.model_records]
        if session is None:
            return merge_models(species, streams)
        return _within(session, merge_models(species, streams))

    def _insert(self, results: list[ImageResult], vectors: dict[str, np.ndarray], report: ChangeReport) -> None:
        """Rows for `results` (faces pending, skipped files), then each species' vectors
        (rows of `vectors[species]`: that species' faces in the results' order) into its store."""
        main = self.model_record.species
        common = {"species": main, "added_at": utc_now()}
        skipped, faces = [], []
        for result in results:
            row = {**common, "path": result.path, "sha256": result.sha256, "identity": result.identity,
                   "file_size": result.file_size}
            if result.skip_reason is not None:
                report.note_skip(result.path, result.skip_reason)
                skipped.append({**row, "status": SKIPPED, "skip_reason": result.skip_reason})
                continue
            report.images_added += 1
            for box, kind in zip(result.boxes, result.species or [main] * len(result.boxes)):
                x0, y0, x1, y1 = box if box is not None else (None,) * 4
                faces.append({**row, "species": kind, "status": PENDING,
                              "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1})
        # Core inserts (one statement per kind of row): the ORM's unit of work would cost
        # more per batch than the model does.
        with self.engine.begin() as connection:
            if skipped:
                connection.execute(insert(ImageRecord), skipped)
            ids = list(connection.scalars(insert(ImageRecord).returning(ImageRecord.id, sort_by_parameter_order=True),
                                          faces)) if faces else []
        by_species: dict[str, list[int]] = defaultdict(list)
        for face_id, face in zip(ids, faces):
            by_species[face["species"]].append(face_id)
        for kind, kind_ids in by_species.items():
            self.store_of(kind).add(kind_ids, vectors[kind])
            self._unsaved.add(kind)
        report.faces_added += len(ids)
        self._since_checkpoint += len(ids)

    def delete_rows(self, ids: list[int]) -> None:
        """Delete rows (committed first), then their vectors (saved at the next checkpoint)."""
        if not ids:
            return
        main = self.model_record.species
        by_species: dict[str, list[int]] = defaultdict(list)
        with Session(self.engine) as session, session.begin():
            for chunk in batched(ids, SQL_CHUNK):
                if self.several:
                    for row in session.execute(select(ImageRecord.id, ImageRecord.species)
                                               .where(ImageRecord.id.in_(chunk))):
                        by_species[row.species].append(row.id)
                session.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
        if not self.several:
            by_species[main] = list(ids)
        for record in self.model_records:
            chosen = by_species.get(record.species)
            if chosen and self.store_of(record.species).remove(np.array(chosen, dtype=np.int64)):
                self._unsaved.add(record.species)

    def checkpoint(self, final: bool = False) -> None:
        """Save every changed store atomically, then mark the rows they now hold as indexed."""
        for record in self.model_records:
            store = self.store_of(record.species)
            if final and store.ntotal:
                target = (auto_index_type(store.index_type, store.ntotal) if self.index_type == "auto"
                          else self.index_type)
                if target != store.index_type:
                    log.info("converting the %s index from %s to %s (%d vectors)", record.species,
                             store.index_type, target, store.ntotal)
                    self.set_store(record.species, store.converted(target))
        if not self._unsaved:
            return
        for record in self.model_records:
            if record.species in self._unsaved:
                self.store_of(record.species).save(self.vectors_path_of(record.species))
        with Session(self.engine) as session, session.begin():
            session.execute(update(ImageRecord).where(ImageRecord.status == PENDING).values(status=INDEXED))
        self._unsaved.clear()
        self._since_checkpoint = 0

    def finish(self, report: ChangeReport) -> ChangeReport:
        """Final snapshot, and the run recorded in the builds table if it changed anything."""
        self.checkpoint(final=True)
        self._settle_individuals(report)
        report.index_type, report.vectors = self.store.index_type, self._vectors_total()
        report.seconds = round(time.perf_counter() - report._clock, 3)
        if report.changed:
            with Session(self.engine) as session, session.begin():
                session.add(BuildRecord(kind=report.kind, gallery_root=report.gallery_root, started_at=report.started_at,
                                        finished_at=utc_now(), added=report.faces_added, removed=report.removed,
                                        skipped=report.skipped, unchanged=report.unchanged,
                                        index_type=self.store.index_type, vectors=self._vectors_total()))
        return report

    def _settle_individuals(self, report: ChangeReport) -> None:
        """Once the index is grouped into individuals: each new face joins one (or starts
        one), and individuals left without faces go. After the snapshot, so a crash here
        leaves faces merely unassigned, which the next run assigns."""
        from .individuals import assign_new_faces, drop_empty
        if report.faces_added:
            # Each species among its own faces, by its own model's rule for its own gallery size.
            for record in self.model_records:
                species = record.species if self.several else None
                size = gallery_size(self.engine, species)
                try:
                    threshold = self.face_models()[record.species].match_rule(size["individuals"], size["faces"]).threshold
                except ModelError:
                    threshold = 0.0     # the model cannot keep its promise at this size: no face joins another
                done = assign_new_faces(self.engine, self.store_of(record.species), threshold, species)
                report.individuals_joined += done["assigned"] - done["new_individuals"]
                report.individuals_new += done["new_individuals"]
        if report.removed:
            with Session(self.engine) as session, session.begin():
                drop_empty(session)

    def _gallery_roots(self) -> list[str]:
        with Session(self.engine) as session:
            return gallery_roots(session)


def _within(context, iterator):
    """`iterator`'s items, with `context` (a context manager) entered around all of them."""
    with context:
        yield from iterator
