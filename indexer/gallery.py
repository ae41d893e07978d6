"""`Gallery`: the read-only view of an index that search and web query.

    gallery = Gallery.open()                      # --index / $FACESEARCH_INDEX / ./facesearch-index
    model = gallery.load_model()                  # the index's own model (sha256 checked)
    matches = gallery.search(model.embed_images(faces), k=5)

It takes no lock, so it can be open while `indexer build` runs: it sees only committed rows,
and reloads the vector file when a writer has replaced it.

An index built with several models (`indexer build --models human,dog`) holds one vector
store per model; `gallery.models` lists them (the main one, `gallery.model`, first), and
`search`, `size`, `load_model` take the `species` whose faces they are about (default the
main model's; `size()` without it counts every face).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from .config import DATABASE_FILE, VECTORS_FILE, existing_index, vectors_file
from .db import (INDEXED, PENDING, SKIPPED, BuildRecord, ImageRecord, Individual, ModelRecord, gallery_roots,
                 model_records, open_database)
from .errors import IndexMissingError, ModelMismatchError
from .individuals import names_of
from .settings import IndexSettings, load_settings
from .store import FaissStore, VectorStore, open_store

if TYPE_CHECKING:
    from faces.checkpoint import FaceModel

SQL_CHUNK = 500


def open_index_database(index_dir: Path, settings: IndexSettings):
    """The index's metadata database (its settings' URL, else DIR/gallery.db), upgraded."""
    return open_database(settings.database or index_dir / DATABASE_FILE, lock_dir=index_dir)


def disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (Milvus Lite keeps a folder); 0 if absent."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def similarity_to_distance(similarity: float) -> float:
    """L2 distance between unit vectors with this inner product: sqrt(2 - 2 sim)."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * similarity))


def gallery_size(engine, species: str | None = None) -> dict:
    """{"faces", "individuals"} of the indexed faces (Gallery.size says what counts); of one
    species' faces only, when given (an index of several models)."""
    indexed = [ImageRecord.status == INDEXED] + ([] if species is None else [ImageRecord.species == species])
    with Session(engine) as session:
        # count(identity) skips the faces without one: faces - that is how many are unnamed.
        faces, with_identity, named = session.execute(select(
            func.count(ImageRecord.id), func.count(ImageRecord.identity),
            func.count(distinct(ImageRecord.identity))).where(*indexed)).one()
    return {"faces": int(faces), "individuals": int(named + faces - with_identity)}


class Gallery:
    def __init__(self, index_dir: Path, engine, model: ModelRecord | list[ModelRecord],
                 settings: IndexSettings | None = None):
        self.index_dir = index_dir
        self.engine = engine
        self.models: list[ModelRecord] = list(model) if isinstance(model, list) else [model]
        self.model = self.models[0]
        self.settings = settings or IndexSettings()
        self.vectors_path = index_dir / VECTORS_FILE
        self._stores: dict[str, VectorStore] = {}
        self._store_versions: dict[str, object] = {}
        self._roots: list[str] | None = None
        self._sizes: dict[str | None, tuple[object, dict]] = {}   # species -> (store versions, size) last counted

    @classmethod
    def open(cls, index_dir: str | os.PathLike | None = None) -> "Gallery":
        """The index at `index_dir` (default: $FACESEARCH_INDEX, else ./facesearch-index)."""
        index_dir = existing_index(index_dir)
        settings = load_settings(index_dir)
        engine = open_index_database(index_dir, settings)
        with Session(engine, expire_on_commit=False) as session:
            models = model_records(session)
        if not models:
            engine.dispose()
            raise IndexMissingError(f"no index at {index_dir} (nothing indexed yet): "
                                    "run `indexer build GALLERY` first")
        gallery = cls(index_dir, engine, models, settings)
        try:
            for record in models:
                gallery.store_of(record.species)   # fail now, not at the first search, if unreadable
        except BaseException:
            gallery.close()
            raise
        return gallery

    @staticmethod
    def indexed_model(index_dir: str | os.PathLike | None = None) -> dict | None:
        """{"name", "species", "detector", "models"} of the model an index was built with (the
        main one; "models": each model's {"name", "species", "detector"}), read from its
        database alone (no vectors, no model loaded); None when there is no index yet."""
        try:
            index_dir = existing_index(index_dir)
        except IndexMissingError:
            return None
        engine = open_index_database(index_dir, load_settings(index_dir))
        try:
            with Session(engine) as session:
                models = [{"name": model.name, "species": model.species, "detector": model.detector}
                          for model in model_records(session)]
        finally:
            engine.dispose()
        return {**models[0], "models": models} if models else None

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores = {}
        self.engine.dispose()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the model --------------------------------------------------------------------

    @property
    def several(self) -> bool:
        """Whether the index holds more than one model (one per species)."""
        return len(self.models) > 1

    def model_of(self, species: str | None = None) -> ModelRecord:
        """The record of the model of `species` (None: the main model)."""
        if species is None:
            return self.model
        for record in self.models:
            if record.species == species:
                return record
        raise ModelMismatchError(f"{self.index_dir} has no {species} model (it holds "
                                 f"{', '.join(m.name + ' (' + m.species + ')' for m in self.models)})")

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def model_sha256(self) -> str:
        return self.model.sha256

    @property
    def model_source(self) -> str:
        """What faces.checkpoint.load_model takes to load the index's model (name or path)."""
        return self.model.source

    @property
    def threshold(self) -> float:
        """The model's verification threshold, an L2 distance (same individual if <=)."""
        return self.model.threshold

    @property
    def species(self) -> str:
        return self.model.species

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def detector(self) -> str:
        """The faces.detectors detector the gallery's faces were cropped with; queries need the same."""
        return self.model.detector

    def check_model(self, model: FaceModel) -> None:
        """Refuse a model other than the one the index was built with (for its species)."""
        record = next((r for r in self.models if r.species == model.species), self.model)
        if not model.is_recorded_as(record.sha256):
            raise ModelMismatchError(
                f"{self.index_dir} was built with model {record.name} (sha256 {record.sha256[:12]}), "
                f"not {model.name} (sha256 {model.sha256[:12]}): query with the index's model, or build a "
                f"new index with this one (`indexer build GALLERY --index NEW_FOLDER --model {model.name}`)")

    def load_model(self, device: str | None = None, species: str | None = None) -> FaceModel:
        """The index's own model (of `species`; None: the main one), checked to be the very
        file the index was built with."""
        from faces.checkpoint import load_recorded_model   # torch: only for callers that embed
        record = self.model_of(species)
        model = load_recorded_model(record.source, record.sha256, device=device)
        self.check_model(model)
        return model

    # --- vectors ----------------------------------------------------------------------

    def vectors_path_of(self, species: str | None = None) -> Path:
        """A model's FAISS file: vectors.faiss for the main model, vectors-SPECIES.faiss for the others."""
        record = self.model_of(species)
        return self.index_dir / vectors_file(None if record is self.model else record.species)

    @property
    def store(self) -> VectorStore:
        """The main model's vector store (store_of)."""
        return self.store_of(None)

    def store_of(self, species: str | None = None) -> VectorStore:
        """A model's saved vector index, reloaded whenever a writer has replaced the file; a
        Milvus collection is live, opened once."""
        record = self.model_of(species)
        key = record.species
        main = record is self.model
        path = self.vectors_path_of(key)
        if self.settings.milvus is not None:
            if key not in self._stores:
                self._stores[key] = open_store(self.settings, path, record.embedding_dim, None if main else key)
            return self._stores[key]
        try:
            info = os.stat(path)
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            version = None
        if key not in self._stores or version != self._store_versions.get(key):
            self._stores[key] = (FaissStore.load(path) if version is not None
                                 else FaissStore.create(record.embedding_dim))
            self._store_versions[key] = version
            self._roots = None        # a writer has run: it may have walked a new gallery folder
        return self._stores[key]

    def relative_path(self, path: str) -> str:
        """`path` relative to the gallery folder it was indexed from; the file name alone
        for a file added from outside every gallery folder."""
        if self._roots is None:
            with Session(self.engine) as session:
                self._roots = gallery_roots(session)
        root = next((r for r in self._roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
        return os.path.relpath(path, root) if root else os.path.basename(path)

    def search(self, embeddings: np.ndarray, k: int = 10, species: str | None = None) -> list[list[dict]]:
        """For each embedding (float32 N x D, unit length), its k nearest gallery faces, best
        first: {id, path, identity, individual, box, similarity, distance} (similarity = cosine,
        distance = L2; identity is the individual's name when it has one, else the folder's).
        `species`: among that species' faces, embedded by its model (None: the main model's)."""
        record = self.model_of(species)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim == 1:
            embeddings = embeddings[None]
        if embeddings.shape[1] != record.embedding_dim:
            raise ModelMismatchError(f"embeddings have {embeddings.shape[1]} dimensions; the index's "
                                     f"model {record.name} gives {record.embedding_dim}")
        similarities, ids = self.store_of(species).search(embeddings, k)
        records = self._records(np.unique(ids[ids >= 0]))
        # A name given to an individual is the identity its faces answer to (read afresh on
        # every search, so a rename shows at once); folder identities are the default.
        with Session(self.engine) as session:
            names = names_of(session, (r.individual for r in records.values()))
        results = []
        for row_similarities, row_ids in zip(similarities, ids):
            matches = []
            for similarity, image_id in zip(row_similarities.tolist(), row_ids.tolist()):
                record = records.get(image_id)
                if record is None:   # -1 padding, or a vector whose row a writer just deleted
                    continue
                matches.append({"id": image_id, "path": record.path,
                                "identity": names.get(record.individual, record.identity),
                                "individual": record.individual, "box": record.box, "similarity": similarity,
                                "distance": similarity_to_distance(similarity)})
            results.append(matches)
        return results

    def size(self, species: str | None = None) -> dict:
        """{"faces", "individuals"} the index holds (of `species`' faces only, when given, in
        an index of several models): individuals are the distinct identities, each face
        without one counting as its own individual (so an unnamed gallery is never taken for
        a smaller one). The open-set threshold follows this (faces.open_set)."""
        for record in self.models:
            self.store_of(record.species)          # reloads after a writer has run
        version = (tuple(self._store_versions.get(r.species) for r in self.models)
                   if self.settings.milvus is None else object())
        key = species if self.several else None
        if key not in self._sizes or self._sizes[key][0] != version:
            self._sizes[key] = (version, gallery_size(self.engine, key))
        return self._sizes[key][1]

    def _records(self, ids) -> dict[int, ImageRecord]:
        records = {}
        with Session(self.engine) as session:
            for start in range(0, len(ids), SQL_CHUNK):
                chunk = [int(i) for i in ids[start:start + SQL_CHUNK]]
                # Pending rows count too: their vectors are in this snapshot.
                for record in session.scalars(select(ImageRecord).where(
                        ImageRecord.id.in_(chunk), ImageRecord.status.in_([INDEXED, PENDING]))):
                    records[record.id] = record
        return records

    def image(self, image_id: int) -> ImageRecord | None:
        """The database row of one face (or skipped file), or None (also for an id outside
        SQLite's 64-bit INTEGER, which no row can have)."""
        if not 0 < image_id < 2 ** 63:
            return None
        with Session(self.engine) as session:
            return session.get(ImageRecord, int(image_id))

    def embeddings(self, batch: int = 10_000, species: str | None = None):
        """(records, float32 vectors) of every indexed face (of one species' model, when
        given), model by model (the main one first), in id order, `batch` at a time."""
        for record in self.models if species is None else [self.model_of(species)]:
            store = self.store_of(record.species)
            stored = np.sort(store.ids())
            for start in range(0, len(stored), batch):
                ids = stored[start:start + batch]
                records = self._records(ids)
                kept = np.array([i for i in ids.tolist() if i in records], dtype=np.int64)
                yield [records[i] for i in kept.tolist()], store.vectors(kept)

    def export(self, out: str | os.PathLike) -> int:
        """Write ids, paths, identities, species, boxes, clusters and embeddings of every indexed
        face to an .npz file (atomically); returns how many. An index of several models writes
        each model's faces in turn (`species` says whose each row is, `embedding_dims` how
        many of its row's numbers are its embedding): a model of fewer dimensions than the
        largest has its vectors padded with zeros, which leaves every distance between them
        as it was."""
        dims = {record.species: record.embedding_dim for record in self.models}
        width = max(dims.values())
        ids, paths, identities, species, boxes, clusters, parts = [], [], [], [], [], [], []
        for records, vectors in self.embeddings():
            if vectors.shape[1] < width:
                vectors = np.pad(vectors, ((0, 0), (0, width - vectors.shape[1])))
            for record in records:
                species.append(record.species)
                ids.append(record.id)
                paths.append(record.path)
                identities.append(record.identity or "")
                boxes.append(record.box or (-1, -1, -1, -1))
                clusters.append(-1 if record.cluster is None else record.cluster)
            parts.append(vectors)
        out = Path(out)
        temporary = out.with_name(out.name + ".tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, ids=np.array(ids, dtype=np.int64), paths=np.array(paths, dtype=str),
                     identities=np.array(identities, dtype=str), species=np.array(species, dtype=str),
                     boxes=np.array(boxes, dtype=np.int64).reshape(-1, 4),
                     clusters=np.array(clusters, dtype=np.int64),
                     embeddings=np.concatenate(parts) if parts else np.empty((0, width), np.float32),
                     embedding_dims=np.array([dims[kind] for kind in species], dtype=np.int64),
                     model_name=np.array(self.model_name), model_sha256=np.array(self.model_sha256))
        os.replace(temporary, out)
        return len(ids)

    # --- summary ----------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts, skip reasons, model, index type and size on disk."""
        with Session(self.engine) as session:
            def count(*where, what=ImageRecord.id):
                return session.scalar(select(func.count(what)).where(*where))
            indexed = ImageRecord.status == INDEXED
            skip_reasons = Counter(dict(session.execute(
                select(ImageRecord.skip_reason, func.count()).where(ImageRecord.status == SKIPPED)
                .group_by(ImageRecord.skip_reason)).all()))
            last_build = session.scalar(select(BuildRecord).order_by(BuildRecord.id.desc()).limit(1))
            stats = {
                "index_dir": str(self.index_dir),
                "images": count(indexed, what=distinct(ImageRecord.path)),
                "faces": count(indexed),
                "identities": count(indexed, what=distinct(ImageRecord.identity)),
                "skipped": sum(skip_reasons.values()),
                "skip_reasons": dict(skip_reasons.most_common()),
                "pending": count(ImageRecord.status == PENDING),
                "clusters": count(indexed, what=distinct(ImageRecord.cluster)),
                "individuals": count(indexed, what=distinct(ImageRecord.individual)),
                "named_individuals": session.scalar(
                    select(func.count(distinct(Individual.id))).join(ImageRecord, ImageRecord.individual == Individual.id)
                    .where(indexed, Individual.name.is_not(None))),
                "model": {"name": self.model.name, "source": self.model.source, "sha256": self.model.sha256,
                          "embedding_dim": self.model.embedding_dim, "species": self.model.species,
                          "threshold": self.model.threshold, "detector": self.model.detector},
                "index": {"type": self.store.index_type,
                          "vectors": sum(self.store_of(m.species).ntotal for m in self.models)},
                "models": [{"name": m.name, "source": m.source, "sha256": m.sha256, "embedding_dim": m.embedding_dim,
                            "species": m.species, "threshold": m.threshold, "detector": m.detector,
                            "faces": count(indexed, ImageRecord.species == m.species) if self.several
                            else count(indexed),
                            "index": {"type": self.store_of(m.species).index_type,
                                      "vectors": self.store_of(m.species).ntotal}}
                           for m in self.models],
                "builds": session.scalar(select(func.count(BuildRecord.id))),
                "last_build": None if last_build is None else {
                    "kind": last_build.kind, "gallery_root": last_build.gallery_root,
                    "finished_at": last_build.finished_at.isoformat(), "added": last_build.added,
                    "removed": last_build.removed, "skipped": last_build.skipped},
            }
        stats.update(self.settings.describe())
        # Sizes of what lies on this machine: a database or Milvus server elsewhere counts 0.
        files = [self.index_dir / DATABASE_FILE, self.index_dir / (DATABASE_FILE + "-wal")]
        database_bytes = sum(f.stat().st_size for f in files if f.exists()) if not self.settings.database else 0
        milvus = self.settings.milvus
        vectors_files = ([self.vectors_path_of(m.species) for m in self.models] if milvus is None
                         else [Path(milvus.uri)] if milvus.is_local_file else [])
        vectors_bytes = sum(disk_bytes(path) for path in vectors_files)
        stats["size_bytes"] = {"database": database_bytes, "vectors": vectors_bytes,
                               "total": database_bytes + vectors_bytes}
        return stats
