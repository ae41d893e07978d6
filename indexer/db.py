"""The gallery database: SQLAlchemy 2.0 models and opening (with migration) of gallery.db,
or of any SQLAlchemy database named by a URL (PostgreSQL: `indexer build --db URL`).

The schema is created and changed only by the Alembic migrations in indexer/migrations/
(package data, found by Alembic through importlib.resources as `indexer:migrations`);
opening a database upgrades it to the newest revision.

Image rows move through three states. A row is written `pending` before its vector goes into
the FAISS index, and becomes `indexed` only once an index snapshot holding that vector is
safely on disk. So after a crash, pending rows tell the next writer what to reconcile, and an
`indexed` row always has its vector in the saved index. `skipped` rows record files that
could not be used, and why; they have no vector.
"""
from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (BigInteger, Engine, Float, ForeignKey, Index, Integer, LargeBinary, String, TypeDecorator,
                        create_engine, event, select)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import IndexerError

# Alembic resolves "package:folder" with importlib.resources, so installed copies find it too.
MIGRATIONS = "indexer:migrations"

# Any number, the same in every facesearch process: the PostgreSQL advisory lock of upgrades.
UPGRADE_LOCK_KEY = 0x66616365

PENDING = "pending"
INDEXED = "indexed"
SKIPPED = "skipped"

# Image ids are the vector store's ids, and a gallery may hold billions: 64-bit everywhere.
# SQLite's INTEGER PRIMARY KEY is 64-bit already, and only that exact type is its rowid
# (AUTOINCREMENT needs it), so SQLite keeps INTEGER (migration 0004).
ImageId = BigInteger().with_variant(Integer(), "sqlite")


class DatabaseError(IndexerError):
    """The metadata database cannot be reached, or its driver is missing."""


def utc_now() -> datetime:
    """Naive UTC: SQLite has no time zones, so every timestamp in the database is UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class FileName(TypeDecorator):
    """A file system name (path, folder name), stored as the exact bytes of the file system.

    Python gives names that are not UTF-8 as text with surrogate escapes (os.fsdecode);
    they go in and come out unchanged. Show them with faces.errors.readable."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value, dialect):
        return None if value is None else os.fsdecode(value)


class Base(DeclarativeBase):
    pass


class ImageRecord(Base):
    """One face of one image file, or one skipped file (status 'skipped', with its reason)."""

    __tablename__ = "images"
    # AUTOINCREMENT: an id is never reused, so a FAISS id can never point at a different image.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(ImageId, primary_key=True)
    path: Mapped[str] = mapped_column(FileName, index=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    identity: Mapped[str | None] = mapped_column(FileName, index=True)
    file_size: Mapped[int | None]
    species: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[datetime] = mapped_column(default=utc_now)
    status: Mapped[str] = mapped_column(String(16), index=True)
    skip_reason: Mapped[str | None]
    # The face's box in the image; all NULL when the whole image is the face (detector 'none').
    box_x0: Mapped[int | None]
    box_y0: Mapped[int | None]
    box_x1: Mapped[int | None]
    box_y1: Mapped[int | None]
    cluster: Mapped[int | None] = mapped_column(index=True)
    # The individual (person or pet) this face belongs to (indexer.individuals); NULL until
    # `indexer cluster` has grouped the index.
    individual: Mapped[int | None] = mapped_column(
        ImageId, ForeignKey("individuals.id", name="fk_images_individual", ondelete="SET NULL"), index=True)

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        if self.box_x0 is None:
            return None
        return (self.box_x0, self.box_y0, self.box_x1, self.box_y1)


NAME_LENGTH = 100     # the longest name an individual may be given, in characters


class Individual(Base):
    """One person or pet: the faces that `indexer cluster` (and later builds) put together,
    with the name a user gave it. Its faces are the images rows pointing at it."""

    __tablename__ = "individuals"
    __table_args__ = {"sqlite_autoincrement": True}     # ids are never reused: links stay true

    id: Mapped[int] = mapped_column(ImageId, primary_key=True)
    species: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    cover: Mapped[int | None] = mapped_column(ImageId)   # the face shown for it (an images id)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)


class ModelRecord(Base):
    """An embedding model (and its face detector) an index is built with: one row per model,
    at most one per species (migration 0007), in the order `--models` gave them (by id; the
    first is the index's main model, the only one of an index built with `--model`)."""

    __tablename__ = "models"
    __table_args__ = (Index("ux_models_species", "species", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    source: Mapped[str]            # what load_model() takes: a bundled name or an absolute path
    sha256: Mapped[str] = mapped_column(String(64))
    embedding_dim: Mapped[int]
    species: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)  # the model's verification threshold (L2 distance)
    detector: Mapped[str]
    added_at: Mapped[datetime] = mapped_column(default=utc_now)


class BuildRecord(Base):
    """One change to the index: a build, add, remove, repair or cluster run that finished."""

    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    gallery_root: Mapped[str | None] = mapped_column(FileName)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    added: Mapped[int] = mapped_column(default=0)       # faces added
    removed: Mapped[int] = mapped_column(default=0)     # rows removed (faces and skip records)
    skipped: Mapped[int] = mapped_column(default=0)     # files skipped in this run
    unchanged: Mapped[int] = mapped_column(default=0)   # files already indexed as they are
    index_type: Mapped[str] = mapped_column(String(16))
    vectors: Mapped[int] = mapped_column(BigInteger, default=0)   # vectors in the index afterwards


def model_records(session) -> list[ModelRecord]:
    """The index's models, the main one first (empty before the first build)."""
    return list(session.scalars(select(ModelRecord).order_by(ModelRecord.id)))


def gallery_roots(session) -> list[str]:
    """Every gallery folder a build has walked, the deepest first (so it wins as a prefix)."""
    roots = session.scalars(select(BuildRecord.gallery_root).distinct().where(BuildRecord.gallery_root.is_not(None)))
    return sorted(roots, key=len, reverse=True)


def alembic_config(database: Path | None = None) -> Config:
    """Alembic configuration built in code, so migrations run wherever the package is used."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    if database is not None:
        config.set_main_option("sqlalchemy.url", f"sqlite:///{database}")
    return config


def create_sqlite_engine(database: Path) -> Engine:
    engine = create_engine(f"sqlite:///{database}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin, so DDL in
        # migrations is transactional too (SQLAlchemy's documented SQLite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (search, web) never block the writer and see only committed data.
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL skips the fsync per commit and still never corrupts; a power cut
        # may lose the last commits, which the writer's reconcile handles like a crash.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection):
        # A transaction that reads before it writes must take the write lock first (see
        # `for_writing`): else SQLite refuses its write at once when another writer
        # committed in between ("database is locked"), whatever the timeout.
        immediate = connection.get_execution_options().get(IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


IMMEDIATE = "facesearch_immediate"


def for_writing(engine: Engine) -> Engine:
    """The engine for a transaction that reads, then writes on what it read: on SQLite it
    begins by waiting for the write lock (BEGIN IMMEDIATE), so two such transactions at once
    run one after the other instead of one failing. Other databases lock rows themselves."""
    return engine.execution_options(**{IMMEDIATE: True})


def is_url(database) -> bool:
    return isinstance(database, str) and "://" in database


def shown_url(url: str) -> str:
    """The URL as the user wrote it, unless it holds a password: then SQLAlchemy's rendering
    with the password as ***."""
    parsed = make_url(url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def create_url_engine(url: str) -> Engine:
    """An engine on any SQLAlchemy database (PostgreSQL, MySQL, ...); errors name the URL
    (password hidden) and what to install or fix."""
    try:
        shown = shown_url(url)
    except ArgumentError:
        raise DatabaseError(f"{url!r}: not a database URL (e.g. postgresql://user@host/dbname)") from None
    try:
        # pre_ping: a long-lived `search serve` survives the database server restarting.
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise DatabaseError(f"{shown}: its driver is not installed ({error}); for PostgreSQL "
                            "pip install 'facesearch[postgres]'") from None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Processes on other machines may open the same new database at once: one upgrades,
            # the others wait here and find it done (Alembic's version table is then current).
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK_KEY})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def open_database(database: Path | str, lock_dir: Path | None = None) -> Engine:
    """An engine on `database`, its schema upgraded to the newest revision: a path is an
    SQLite file (created if missing), a URL any SQLAlchemy database (created by its server;
    `lock_dir`: the index folder, where the local upgrade lock lives)."""
    if is_url(database):
        url = make_url(database)
        if url.drivername.startswith("sqlite") and url.database:
            database = Path(url.database)
        else:
            engine = create_url_engine(database)
            lock_file = Path(lock_dir or ".") / "database.upgrade-lock"
            return _upgraded(engine, lock_file, shown_url(database))
    database = Path(database)
    return _upgraded(create_sqlite_engine(database), database.parent / f"{database.name}.upgrade-lock", str(database))


def _upgraded(engine: Engine, lock_file: Path, shown: str) -> Engine:
    try:
        if current_revision(engine) != head_revision():
            # Processes opening an old database at once would each start the upgrade, and SQLite
            # refuses all but one ("database is locked"): upgrade one at a time, re-checking.
            with open(lock_file, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if current_revision(engine) != head_revision():
                    upgrade(engine)
    except OperationalError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseError(f"{shown}: cannot open the database ({reason})") from None
    return engine
