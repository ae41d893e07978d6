"""Keeping an index honest, and grouping it: check (and repair), cluster."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from faces.errors import ModelError

from .db import INDEXED, PENDING, ImageRecord
from .embedding import WorkItem, embed_files
from .errors import IndexCorruptError, ModelMismatchError
from .writer import SQL_CHUNK, ChangeReport, IndexWriter, batched

# A stored embedding and a fresh one of the same file by the same model agree to float
# rounding (thread counts change summation order); anything further off is a real mismatch.
EMBEDDING_TOLERANCE = 1e-3
IDS_SHOWN = 10


def _some(ids) -> str:
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids[:IDS_SHOWN])) + (f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else "")


@dataclass
class CheckReport:
    """What `check` found: every problem in words, and the ids a repair must re-embed."""

    indexed: int = 0                 # database rows with status indexed
    vectors: int | None = None       # vectors in the index (None: unreadable)
    sampled: int = 0                 # embeddings re-computed and compared
    problems: list[str] = field(default_factory=list)
    store_unreadable: set[str] = field(default_factory=set)   # species whose vectors cannot be read
    reembed_ids: set[int] = field(default_factory=set)   # rows whose files must be embedded again

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "indexed": self.indexed, "vectors": self.vectors, "sampled": self.sampled,
                "problems": self.problems}


def check_index(writer: IndexWriter, sample: int = 20, seed: int = 0) -> CheckReport:
    """Prove that the vector index and the database agree: same ids, same count, and stored
    embeddings of a random sample equal to freshly computed ones. Changes nothing. With
    several models, each model's store against the rows of its species."""
    report = CheckReport()
    report.vectors = 0
    comparable_parts = []
    for record in writer.model_records:
        species = record.species
        where = f"{species}: " if writer.several else ""
        with Session(writer.engine) as session:
            def ids_of(status):
                query = select(ImageRecord.id).where(ImageRecord.status == status)
                if writer.several:           # a one-model index: every row is its model's
                    query = query.where(ImageRecord.species == species)
                return np.array(session.scalars(query).all(), dtype=np.int64)
            indexed, pending = ids_of(INDEXED), ids_of(PENDING)
        report.indexed += len(indexed)
        path = writer.vectors_path_of(species)
        try:
            if writer.settings.milvus is None and not path.is_file() and len(indexed):
                raise IndexCorruptError(f"{path}: missing, but the database has {len(indexed)} indexed faces")
            stored = writer.store_of(species).ids()
        except IndexCorruptError as error:
            report.problems.append(str(error))
            report.store_unreadable.add(species)
            report.reembed_ids.update(indexed.tolist() + pending.tolist())
            continue
        report.vectors += len(stored)
        unique, counts = np.unique(stored, return_counts=True)
        duplicated = unique[counts > 1]
        missing = np.setdiff1d(indexed, unique)
        orphans = np.setdiff1d(unique, np.concatenate([indexed, pending]))
        for ids, what, after in ((missing, "indexed faces have no vector in the index", ""),
                                 (orphans, "vectors in the index have no database row", ""),
                                 (duplicated, "ids are in the index more than once", ""),
                                 (pending, "faces are pending from an interrupted run",
                                  " (the next build or --repair settles them)")):
            if len(ids):
                report.problems.append(f"{where}{len(ids)} {what}: ids {_some(ids)}{after}")
        if len(stored) != len(indexed) + len(np.intersect1d(pending, unique)):
            report.problems.append(f"{where}count: the index holds {len(stored)} vectors, the database "
                                   f"{len(indexed)} indexed faces")
        report.reembed_ids.update(missing.tolist() + duplicated.tolist() + np.setdiff1d(pending, unique).tolist())
        comparable_parts.append(np.setdiff1d(np.intersect1d(indexed, unique), duplicated))
    if report.store_unreadable:
        if len(report.store_unreadable) == len(writer.model_records):
            report.vectors = None
        return report
    comparable = np.concatenate(comparable_parts) if comparable_parts else np.empty(0, np.int64)
    if sample and len(comparable):
        chosen = np.random.default_rng(seed).choice(comparable, min(sample, len(comparable)), replace=False)
        _compare_sample(writer, chosen, report)
    return report


def _compare_sample(writer: IndexWriter, ids: np.ndarray, report: CheckReport) -> None:
    try:
        models = writer.face_models()
    except (ModelError, ModelMismatchError) as error:
        report.problems.append(f"cannot re-compute embeddings: {error}")
        return
    with Session(writer.engine) as session:
        chosen = list(session.scalars(select(ImageRecord).where(ImageRecord.id.in_(ids.tolist()))))
    main = writer.model_record.species
    for model_record in writer.model_records:
        species = model_record.species
        faces_by_path: dict[str, list[ImageRecord]] = defaultdict(list)
        for record in chosen:
            if (record.species if writer.several else main) == species:
                faces_by_path[record.path].append(record)
        if not faces_by_path:
            continue
        store = writer.store_of(species)
        items = [WorkItem(path, records[0].identity) for path, records in faces_by_path.items()]
        for results, vectors in embed_files(items, models[species], model_record.detector, workers=0):
            offset = 0
            for result in results:
                fresh = dict(zip(result.boxes, vectors[offset:offset + len(result.boxes)]))
                offset += len(result.boxes)
                for record in faces_by_path[result.path]:
                    report.sampled += 1
                    if result.skip_reason is not None:
                        report.problems.append(f"{record.path}: indexed, but now {result.skip_reason}")
                        report.reembed_ids.add(record.id)
                    elif result.sha256 != record.sha256:
                        report.problems.append(f"{record.path}: changed on disk since it was indexed "
                                               "(`indexer build` or `indexer add` updates it)")
                        report.reembed_ids.add(record.id)
                    elif record.box not in fresh:
                        report.problems.append(f"id {record.id} ({record.path}): the detector no longer finds "
                                               f"the face at {record.box}")
                        report.reembed_ids.add(record.id)
                    else:
                        stored = store.vectors([record.id])[0]
                        similarity = float(stored @ fresh[record.box])
                        if similarity < 1 - EMBEDDING_TOLERANCE:
                            report.problems.append(f"id {record.id} ({record.path}): stored embedding differs "
                                                   f"from a fresh one (cosine similarity {similarity:.4f})")
                            report.reembed_ids.add(record.id)


def repair_index(writer: IndexWriter, found: CheckReport) -> ChangeReport:
    """Make the index agree with the database again: settle an interrupted run, drop vectors
    without rows, and re-embed (from their files) every face whose vector is missing, doubled,
    stale or wrong. An unreadable vector file is rebuilt from all the files."""
    report = ChangeReport("repair")
    for species in found.store_unreadable:
        writer.empty_store(species)
    broken = _files_of(writer, found.reembed_ids)      # before reconcile, which drops pending rows
    broken.update(_files_of(writer, writer.reconcile(repairing=True).tolist()))
    with Session(writer.engine) as session:
        stale_ids = []
        for chunk in batched(list(broken), SQL_CHUNK):
            stale_ids.extend(session.scalars(select(ImageRecord.id).where(ImageRecord.path.in_(chunk))))
    writer.delete_rows(stale_ids)
    report.removed = len(stale_ids)
    writer.index_items([WorkItem(path, identity) for path, identity in broken.items()], report)
    return writer.finish(report)


def _files_of(writer: IndexWriter, ids) -> dict[str, str | None]:
    """{path: identity} of the files these rows belong to."""
    files = {}
    with Session(writer.engine) as session:
        for chunk in batched(sorted(ids), SQL_CHUNK):
            for record in session.scalars(select(ImageRecord).where(ImageRecord.id.in_(chunk))):
                files[record.path] = record.identity
    return files


# --- clustering ----------------------------------------------------------------------------

def cluster_gallery(writer: IndexWriter, threshold: str | float | None = None, neighbours: int = 100) -> dict:
    """Group the indexed faces into individuals (indexer.clustering.cluster_faces: average
    linkage at the operating point's distance, default strict, over each face's `neighbours`
    nearest faces from the index itself) and write each face's cluster to the database,
    and the groups as its individuals (indexer.individuals.store_grouping: ids and names of
    those found again are kept). Later builds and adds assign new faces incrementally.
    Where faces have identities (gallery folders), the summary scores the clusters against
    them (pairwise precision, recall, F1; V-measure)."""
    from .clustering import cluster_faces, cluster_scores
    from .individuals import store_grouping

    models = writer.face_models()
    points = {record.species: models[record.species].operating_point(threshold) for record in writer.model_records}
    point = dict(points[writer.model_record.species])
    writer.reconcile()
    with Session(writer.engine) as session:
        records = list(session.execute(select(ImageRecord.id, ImageRecord.path, ImageRecord.identity,
                                              ImageRecord.species)
                                       .where(ImageRecord.status == INDEXED).order_by(ImageRecord.id)))
    ids = np.array([r.id for r in records], dtype=np.int64)
    labels = np.zeros(len(ids), dtype=np.int64)
    dim = max(record.embedding_dim for record in writer.model_records)
    vectors = np.zeros((len(ids), dim), np.float32)
    main = writer.model_record.species
    # Each species apart: its own store, its own model's threshold; labels never shared.
    next_label = 0
    for model_record in writer.model_records:
        species = model_record.species
        mine = np.array([i for i, r in enumerate(records) if (r.species if writer.several else main) == species],
                        dtype=np.int64)
        if not len(mine):
            continue
        store = writer.store_of(species)
        vectors[mine, :store.dim] = store.vectors(ids[mine])
        part = np.zeros(len(mine), dtype=np.int64)
        if len(mine) >= 2:
            similarities, found = store.search(vectors[mine, :store.dim], min(neighbours + 1, len(mine)))
            position = {image_id: i for i, image_id in enumerate(ids[mine].tolist())}
            rows = np.array([[position.get(i, -1) for i in row] for row in found.tolist()], dtype=np.int64)
            distances = np.sqrt(np.clip(2.0 - 2.0 * similarities, 0.0, None))
            part = cluster_faces(rows, distances, points[species]["threshold"])
        labels[mine] = part + next_label
        next_label = int(labels[mine].max()) + 1
    with Session(writer.engine) as session, session.begin():
        session.execute(update(ImageRecord).values(cluster=None))
        for chunk in batched(list(zip(ids.tolist(), labels.tolist())), SQL_CHUNK):
            session.execute(update(ImageRecord), [{"id": i, "cluster": c} for i, c in chunk])
    # The groups become the individuals (per species), keeping the ids and names of those
    # found again (indexer.individuals).
    individuals = store_grouping(writer.engine, ids, [r.species for r in records], labels, vectors)
    sizes = Counter(labels.tolist())
    summary = {"faces": len(ids), "clusters": len(sizes), "singletons": sum(1 for n in sizes.values() if n == 1),
               "largest": [n for _, n in sizes.most_common(5)], "threshold": point.pop("threshold"),
               "operating_point": point, "neighbours": neighbours, "individuals": individuals}
    if writer.several:
        summary["models"] = [{"model": r.name, "species": r.species, "threshold": points[r.species]["threshold"],
                              "faces": sum(1 for f in records if f.species == r.species)}
                             for r in writer.model_records]
    named = [(r.identity, label) for r, label in zip(records, labels.tolist()) if r.identity is not None]
    if named:
        summary["against_identities"] = {"faces": len(named), **cluster_scores(*zip(*named))}
    summary["assignment"] = [{"id": r.id, "path": r.path, "identity": r.identity, "cluster": label}
                             for r, label in zip(records, labels.tolist())]
    return summary
