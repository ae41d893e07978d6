"""Individuals: the people and pets of a library, each a group of faces with an optional name.

`indexer cluster` groups every face (indexer.clustering, per species) and stores the groups
as individuals, keeping the ids and names of those it finds again. After that, every build
and `add` puts each new face into the individual of its nearest grouped face when
`same_individual` says they are one, else starts a new individual: the grouping stays
stable as the library grows. Users name, merge and split individuals and forget them
(their faces leave the index and the database; the photos stay on disk).

Names and merges change only the database; forgetting removes vectors, so it goes through
the index's one writer (IndexWriter, with its lock). Merging and splitting take that lock
too, so they never race a build's assignment of new faces.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict

import numpy as np
from sqlalchemy import delete, distinct, func, insert, select, update
from sqlalchemy.orm import Session

from .db import INDEXED, NAME_LENGTH, PENDING, ImageRecord, Individual, for_writing, utc_now
from .errors import IndividualError, IndividualNotFound

# Neighbours looked up for each new face when assigning it to an individual.
ASSIGN_NEIGHBOURS = 10
LISTED = (INDEXED, PENDING)     # faces that count (pending ones have their vectors already)


def same_individual(distance: float, threshold: float) -> bool:
    """THE decision whether a new face joins the individual of a grouped face `distance`
    away (L2 between unit embeddings). Every automatic assignment goes through here and
    nowhere else. `threshold` is the index's match rule at its size (faces.open_set: the
    distance a stranger's nearest face comes within in 4% of searches by default), so a face
    joins someone exactly when `search identify` would name them."""
    return distance <= threshold


# --- names ---------------------------------------------------------------------------------

def clean_name(name) -> str | None:
    """A name as stored: None (no name) or text of 1 to NAME_LENGTH characters, without
    control characters, spaces trimmed. Anything else is an IndividualError saying why.
    HTML is kept as text: every page escapes it."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise IndividualError(f"a name must be text (or null to remove it), not {type(name).__name__}")
    trimmed = name.strip()
    if not trimmed:
        raise IndividualError("a name cannot be empty; send null (or leave it out in `indexer name`) "
                              "to remove a name")
    if len(trimmed) > NAME_LENGTH:
        raise IndividualError(f"a name is at most {NAME_LENGTH} characters; this one has {len(trimmed)}")
    bad = sorted({hex(ord(c)) for c in trimmed if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")})
    if bad:
        raise IndividualError(f"a name cannot hold control or invisible characters (found {', '.join(bad[:5])})")
    return unicodedata.normalize("NFC", trimmed)


# --- reading -------------------------------------------------------------------------------

def _summaries(session: Session, where=(), order=True, offset: int = 0, limit: int | None = None) -> list[dict]:
    faces = func.count(ImageRecord.id).label("faces")
    query = (select(Individual.id, Individual.species, Individual.name, Individual.cover, faces,
                    func.count(distinct(ImageRecord.path)).label("photos"), func.min(ImageRecord.id).label("first"))
             .join(ImageRecord, ImageRecord.individual == Individual.id)
             .where(ImageRecord.status.in_(LISTED), *where).group_by(Individual.id))
    if order:
        query = query.order_by(faces.desc(), Individual.id)
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(limit)
    rows = session.execute(query).all()
    # A cover that is no longer one of its faces (removed, moved out) falls back to the first face.
    covers = set(session.scalars(select(ImageRecord.id).where(
        ImageRecord.id.in_([r.cover for r in rows if r.cover is not None]),
        ImageRecord.individual.in_([r.id for r in rows]), ImageRecord.status.in_(LISTED)))) if rows else set()
    return [{"id": r.id, "species": r.species, "name": r.name,
             "cover": r.cover if r.cover in covers else r.first, "faces": r.faces, "photos": r.photos}
            for r in rows]


def list_individuals(engine, species: str | None = None, offset: int = 0, limit: int | None = None) -> dict:
    """{"total", "offset", "limit", "individuals": [{"id", "species", "name", "cover",
    "faces", "photos"}]}: those with at least one face, largest first (then oldest)."""
    where = [] if species is None else [Individual.species == species]
    with Session(engine) as session:
        total = session.scalar(select(func.count(distinct(Individual.id)))
                               .join(ImageRecord, ImageRecord.individual == Individual.id)
                               .where(ImageRecord.status.in_(LISTED), *where))
        return {"total": total, "offset": offset, "limit": limit,
                "individuals": _summaries(session, where, offset=offset, limit=limit)}


def get_individual(engine, individual_id: int) -> dict:
    """One individual's summary and its faces [{"id", "path", "identity", "box"}] in id order."""
    with Session(engine) as session:
        found = _summaries(session, [Individual.id == _checked_id(individual_id)], order=False)
        if not found:
            raise IndividualNotFound(f"no individual {individual_id}")
        faces = session.scalars(select(ImageRecord).where(ImageRecord.individual == individual_id,
                                                          ImageRecord.status.in_(LISTED))
                                .order_by(ImageRecord.id)).all()
        return {**found[0], "face_list": [{"id": f.id, "path": f.path, "identity": f.identity,
                                           "box": list(f.box) if f.box else None} for f in faces]}


def names_of(session: Session, individual_ids) -> dict[int, str]:
    """{id: name} of the named ones among `individual_ids`."""
    ids = sorted({int(i) for i in individual_ids if i is not None})
    if not ids:
        return {}
    return dict(session.execute(select(Individual.id, Individual.name)
                                .where(Individual.id.in_(ids), Individual.name.is_not(None))).all())


def has_individuals(session: Session) -> bool:
    return session.scalar(select(Individual.id).limit(1)) is not None


def _checked_id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 63:
        raise IndividualNotFound(f"no individual {value!r}")
    return value


def _existing(session: Session, ids) -> dict[int, Individual]:
    ids = [_checked_id(i) for i in ids]
    found = {i.id: i for i in session.scalars(select(Individual).where(Individual.id.in_(ids)))}
    # An individual without faces (all removed) is as good as gone.
    with_faces = set(session.scalars(select(ImageRecord.individual).distinct().where(
        ImageRecord.individual.in_(ids), ImageRecord.status.in_(LISTED))))
    missing = [i for i in ids if i not in found or i not in with_faces]
    if missing:
        raise IndividualNotFound(f"no individual {', '.join(map(str, missing))}")
    return found


# --- changes that touch only the database ---------------------------------------------------

def rename(engine, individual_id: int, name) -> dict:
    """Give an individual a name (None removes it). Two renames at once: the last one wins."""
    name = clean_name(name)
    with Session(for_writing(engine)) as session, session.begin():
        _existing(session, [individual_id])
        session.execute(update(Individual).where(Individual.id == individual_id)
                        .values(name=name, updated_at=utc_now()))
    return get_individual(engine, individual_id)


def merge(engine, ids) -> dict:
    """Merge individuals (two or more, one species) into the first one given; it keeps its
    name, else takes the first name among the others. Call with the index's writer lock held."""
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise IndividualError("give the individuals to merge as a list of ids, e.g. [12, 40]")
    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise IndividualError("merging needs two or more different individuals")
    with Session(for_writing(engine)) as session, session.begin():
        found = _existing(session, ids)
        species = {found[i].species for i in ids}
        if len(species) > 1:
            raise IndividualError("cannot merge individuals of different species ("
                                  + ", ".join(f"{i}: {found[i].species}" for i in ids) + ")")
        target, others = ids[0], ids[1:]
        name = found[target].name or next((found[i].name for i in others if found[i].name), None)
        session.execute(update(ImageRecord).where(ImageRecord.individual.in_(others)).values(individual=target))
        session.execute(delete(Individual).where(Individual.id.in_(others)))
        session.execute(update(Individual).where(Individual.id == target).values(name=name, updated_at=utc_now()))
    return get_individual(engine, target)


def split(engine, individual_id: int, face_ids) -> dict:
    """Move faces out of an individual into a new one of their own (a wrong face, or a group
    of them); the new individual is answered. Call with the index's writer lock held."""
    if (not isinstance(face_ids, (list, tuple)) or not face_ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in face_ids)):
        raise IndividualError("give the faces to move out as a list of face ids, e.g. [3105]")
    with Session(for_writing(engine)) as session, session.begin():
        source = _existing(session, [individual_id])[individual_id]
        faces = set(session.scalars(select(ImageRecord.id).where(ImageRecord.individual == individual_id,
                                                                 ImageRecord.status.in_(LISTED))))
        strangers = [i for i in face_ids if i not in faces]
        if strangers:
            raise IndividualNotFound(f"individual {individual_id} has no face {', '.join(map(str, strangers))}")
        created = Individual(species=source.species, cover=min(face_ids))
        session.add(created)
        session.flush()
        session.execute(update(ImageRecord).where(ImageRecord.id.in_(list(face_ids))).values(individual=created.id))
        new_id = created.id
    return get_individual(engine, new_id)


def drop_empty(session: Session) -> int:
    """Delete individuals left without faces (all removed or moved); how many."""
    empty = select(Individual.id).where(~select(ImageRecord.id).where(
        ImageRecord.individual == Individual.id).exists())
    ids = list(session.scalars(empty))
    if ids:
        session.execute(delete(Individual).where(Individual.id.in_(ids)))
    return len(ids)


def face_ids_of(engine, individual_id: int) -> list[int]:
    """Every row (any status) of an individual's faces, for forgetting it."""
    with Session(engine) as session:
        _existing(session, [individual_id])
        return list(session.scalars(select(ImageRecord.id).where(ImageRecord.individual == individual_id)))


# --- grouping ------------------------------------------------------------------------------

def _distance(similarity: float) -> float:
    return math.sqrt(max(0.0, 2.0 - 2.0 * similarity))


def assign_new_faces(engine, store, threshold: float, species: str | None = None) -> dict:
    """Put every indexed face without an individual into one, once the index has been
    grouped (`indexer cluster`): the individual of its nearest grouped face of the same
    species when `same_individual` says so, else a new one. Faces are taken in id order, so
    a new face can join one assigned just before it. `species`: only faces of this species
    (an index of several models: `store` holds that species' vectors alone). Returns
    {"assigned", "new_individuals"}."""
    with Session(engine) as session:
        if not has_individuals(session):
            return {"assigned": 0, "new_individuals": 0}
        where = [] if species is None else [ImageRecord.species == species]
        rows = session.execute(select(ImageRecord.id, ImageRecord.species).where(
            ImageRecord.status == INDEXED, ImageRecord.individual.is_(None), *where).order_by(ImageRecord.id)).all()
    if not rows:
        return {"assigned": 0, "new_individuals": 0}
    ids = np.array([r.id for r in rows], dtype=np.int64)
    species_of = {r.id: r.species for r in rows}
    size = store.ntotal
    similarities, found = store.search(store.vectors(ids), min(ASSIGN_NEIGHBOURS + 1, size))
    neighbours = sorted(set(found[found >= 0].tolist()) - set(species_of))
    known: dict[int, tuple[int, str]] = {}
    with Session(engine) as session:
        for start in range(0, len(neighbours), 500):
            chunk = neighbours[start:start + 500]
            for row in session.execute(select(ImageRecord.id, ImageRecord.individual, ImageRecord.species)
                                       .where(ImageRecord.id.in_(chunk), ImageRecord.individual.is_not(None))):
                known[row.id] = (row.individual, row.species)
    assigned: dict[int, int] = {}
    new = 0
    with Session(for_writing(engine)) as session, session.begin():
        for face, row_similarities, row_found in zip(ids.tolist(), similarities.tolist(), found.tolist()):
            species = species_of[face]
            chosen = None
            for similarity, other in zip(row_similarities, row_found):
                if other < 0 or other == face:
                    continue
                if other in assigned:
                    individual, other_species = assigned[other], species_of[other]
                elif other in known:
                    individual, other_species = known[other]
                else:
                    continue
                if other_species != species:
                    continue
                # The nearest grouped face decides: a farther one cannot be nearer the rule.
                if same_individual(_distance(similarity), threshold):
                    chosen = individual
                break
            if chosen is None:
                created = Individual(species=species, cover=face)
                session.add(created)
                session.flush()
                chosen, new = created.id, new + 1
            assigned[face] = chosen
        session.execute(update(ImageRecord), [{"id": f, "individual": i} for f, i in assigned.items()])
    return {"assigned": len(assigned), "new_individuals": new}


def store_grouping(engine, ids: np.ndarray, species: list[str], labels: np.ndarray, vectors: np.ndarray) -> dict:
    """Make the individuals exactly the groups `labels` gives the faces `ids` (a full
    re-cluster), keeping each existing individual's id and name for the group holding most
    of its faces (each at most once); the others get new ids. A group's cover is the face
    nearest its mean. Returns {"individuals", "kept", "new", "names_dropped"}."""
    keys = [(label, kind) for label, kind in zip(labels.tolist(), species)]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        groups[key].append(position)
    id_list = ids.tolist()
    with Session(for_writing(engine)) as session, session.begin():
        old = dict(session.execute(select(ImageRecord.id, ImageRecord.individual)
                                   .where(ImageRecord.individual.is_not(None))).all())
        existing = {i.id: i for i in session.scalars(select(Individual))}
        overlaps = []
        for key, members in groups.items():
            for individual, count in Counter(old.get(id_list[m]) for m in members).items():
                if individual in existing and existing[individual].species == key[1]:
                    overlaps.append((-count, individual, key))
        owner: dict[tuple, int] = {}
        taken = set()
        for _, individual, key in sorted(overlaps, key=lambda o: (o[0], o[1])):
            if key not in owner and individual not in taken:
                owner[key] = individual
                taken.add(individual)
        dropped = sorted(existing[i].name for i in set(existing) - taken if existing[i].name)
        session.execute(update(ImageRecord).values(individual=None))
        session.execute(delete(Individual).where(Individual.id.not_in(list(taken))) if taken
                        else delete(Individual))
        updates, new = [], 0
        for key, members in groups.items():
            member_ids = [id_list[m] for m in members]
            centre = vectors[members].mean(axis=0)
            cover = member_ids[int(np.argmax(vectors[members] @ centre))]
            if key in owner:
                individual = owner[key]
                session.execute(update(Individual).where(Individual.id == individual)
                                .values(cover=cover, updated_at=utc_now()))
            else:
                individual = session.scalar(insert(Individual).values(species=key[1], cover=cover, created_at=utc_now(),
                                                                      updated_at=utc_now()).returning(Individual.id))
                new += 1
            updates.extend({"id": face, "individual": individual} for face in member_ids)
        for start in range(0, len(updates), 500):
            session.execute(update(ImageRecord), updates[start:start + 500])
    return {"individuals": len(groups), "kept": len(owner), "new": new, "names_dropped": dropped}
