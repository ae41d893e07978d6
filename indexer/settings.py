"""What an index folder remembers about where its parts live: DIR/index.json.

    {"store": "faiss"}                                             the default: DIR/vectors.faiss
    {"store": "milvus:/abs/path/faces.db#facesearch"}              Milvus Lite, one local file
    {"store": "milvus:http://milvus:19530#lfw", "database": "postgresql://facesearch@db/lfw"}

`indexer build --store ... --db ...` writes it when it makes the index; every later command
(search, add, remove, check, export, search serve) reads it, so none of them needs the flags.
An index folder without index.json is a plain FAISS + SQLite index, as before this file.

Secrets are never written here: a Milvus server's token comes from $MILVUS_TOKEN, a
PostgreSQL password from $PGPASSWORD (or ~/.pgpass), both read by the client at connection.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import DATABASE_FILE, SETTINGS_FILE
from .errors import IndexerError

FAISS = "faiss"
MILVUS_PREFIX = "milvus:"
DEFAULT_COLLECTION = "facesearch"

STORE_HELP = ("Where the vectors live: 'faiss' (default: a file in the index folder), or "
              "'milvus:URI[#COLLECTION]' with URI as pymilvus' MilvusClient takes it: a local file "
              "path runs Milvus Lite (pip install 'facesearch[milvus]'), http://host:19530 a Milvus "
              "server or cluster ($MILVUS_TOKEN for its token). COLLECTION defaults to "
              f"'{DEFAULT_COLLECTION}'. Remembered by the index: later commands need no flag.")
DB_HELP = ("Metadata database as an SQLAlchemy URL, e.g. postgresql://user@host/dbname (pip install "
           "'facesearch[postgres]'; the password from $PGPASSWORD); default: SQLite gallery.db in the "
           "index folder. The schema is created and upgraded there. Remembered by the index.")


class SettingsError(IndexerError):
    """An index.json, --store or --db that cannot be used."""


@dataclass(frozen=True)
class MilvusLocation:
    uri: str
    collection: str

    @property
    def is_local_file(self) -> bool:
        """Milvus Lite: a file path, not a server address."""
        return "://" not in self.uri


@dataclass(frozen=True)
class IndexSettings:
    store: str = FAISS               # "faiss" or "milvus:URI#COLLECTION"
    database: str | None = None      # SQLAlchemy URL; None: SQLite DIR/gallery.db

    @property
    def milvus(self) -> MilvusLocation | None:
        if not self.store.startswith(MILVUS_PREFIX):
            return None
        uri, _, collection = self.store[len(MILVUS_PREFIX):].partition("#")
        return MilvusLocation(uri, collection or DEFAULT_COLLECTION)

    def database_url(self, index_dir: Path) -> str:
        return self.database or f"sqlite:///{Path(index_dir) / DATABASE_FILE}"

    def describe(self) -> dict:
        """For `indexer stats`: the store and database, with any password in the URL hidden."""
        database = self.database
        if database:
            from .db import shown_url
            database = shown_url(database)
        return {"store": self.store, "database": database or DATABASE_FILE}


def parse_store(spec: str | None) -> str:
    """The --store value in the form index.json keeps (a Milvus Lite file made absolute, so
    the index works from any folder); SettingsError naming the value if it is not one."""
    if spec is None or spec == FAISS:
        return FAISS
    if not spec.startswith(MILVUS_PREFIX) or not spec[len(MILVUS_PREFIX):].partition("#")[0]:
        raise SettingsError(f"--store {spec!r}: give 'faiss' or 'milvus:URI' (a local file such as "
                            "milvus:./faces.db, or a server such as milvus:http://localhost:19530)")
    location = IndexSettings(spec).milvus
    if not location.collection.replace("_", "a").isalnum() or location.collection[0].isdigit():
        raise SettingsError(f"--store {spec!r}: Milvus collection names are letters, digits and _, "
                            f"not starting with a digit ({location.collection!r})")
    uri = location.uri
    if location.is_local_file:
        uri = os.path.abspath(uri)
    return f"{MILVUS_PREFIX}{uri}#{location.collection}"


def parse_database(url: str | None) -> str | None:
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(f"--db {url!r}: not a database URL (e.g. postgresql://user@host/dbname, "
                            "sqlite:////abs/path/gallery.db)") from None
    if parsed.drivername.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
        return f"sqlite:///{os.path.abspath(parsed.database)}"
    return url


def load_settings(index_dir: str | os.PathLike) -> IndexSettings:
    """The folder's index.json, or the defaults (FAISS + SQLite) when it has none."""
    path = Path(index_dir) / SETTINGS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return IndexSettings()
    except (OSError, ValueError) as error:
        raise SettingsError(f"{path}: unreadable index settings ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("store", FAISS), str):
        raise SettingsError(f"{path}: not index settings (expected {{\"store\": ..., \"database\": ...}})")
    return IndexSettings(store=data.get("store", FAISS), database=data.get("database"))


def save_settings(index_dir: str | os.PathLike, settings: IndexSettings) -> None:
    """Write index.json atomically (temporary file, then rename)."""
    path = Path(index_dir) / SETTINGS_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    os.replace(temporary, path)


def settings_for_writer(index_dir: Path, store: str | None, database: str | None) -> tuple[IndexSettings, bool]:
    """(settings, is_new): the settings a writer runs with. An existing index keeps its own
    (--store/--db may only repeat them); a new one (no database yet) takes the flags, which
    the writer saves (save_settings) once the database has opened."""
    current = load_settings(index_dir)
    requested = IndexSettings(store=parse_store(store), database=parse_database(database))
    is_new = not (Path(index_dir) / SETTINGS_FILE).exists() and not (Path(index_dir) / DATABASE_FILE).exists()
    if is_new:
        return requested, True
    for what, given, wanted, kept in (("store", store, requested.store, current.store),
                                      ("database", database, requested.database, current.database)):
        if given is not None and wanted != kept:
            raise SettingsError(f"{index_dir} keeps its {what} at {kept or DATABASE_FILE}, not {given}: "
                                "an index cannot move; build a new one with --index DIR")
    return current, False
