"""Metadata on a real PostgreSQL server: the migrations (0003's file names as bytea, 0004's
64-bit ids) and a whole index built, searched and changed with `--db postgresql://...`.

The tests start a throwaway server themselves (Debian's `postgresql` package: initdb and
pg_ctl in a temporary folder, reached through a Unix socket there, as the `postgres` user
when run as root, since PostgreSQL refuses to run as root) and skip, saying why, when none
can start."""
from __future__ import annotations

import glob
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from indexer.cli import main as indexer_main
from indexer.db import current_revision, downgrade, head_revision, open_database, upgrade
from indexer.settings import load_settings
from search.cli import main as search_main

from conftest import identity_image, invoke_cli, last_json, write_identity_folders

pytest.importorskip("psycopg", reason="PostgreSQL tests need pip install 'facesearch[postgres]'")


def postgres_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="module")
def postgres_server():
    """The URL of a running throwaway PostgreSQL server's `postgres` database."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server here (initdb not found): apt-get install -y postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="facesearch-pg-"))
    if as_user:
        os.chown(folder, account.pw_uid, account.pw_gid)
    data, log = folder / "data", folder / "server.log"

    def run(*command):
        return subprocess.run(as_user + [str(c) for c in command], capture_output=True, text=True, timeout=120)

    made = run(binaries / "initdb", "-D", data, "-U", "facesearch", "-A", "trust", "-E", "UTF8", "--no-sync")
    started = made.returncode == 0 and run(
        binaries / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start",
        "-o", f"-k {folder} -c listen_addresses='' -F").returncode == 0
    if not started:
        reason = (made.stderr or (log.read_text() if log.exists() else "")).strip().splitlines()[-1:]
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {reason}")
    try:
        yield f"postgresql://facesearch@/postgres?host={folder}"
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database(postgres_server, request) -> str:
    """A new, empty database on the server for one test."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_server.replace("/postgres?", f"/{name}?")


def test_migrations_run_on_postgresql_and_keep_rows_through_text_to_bytea(database, tmp_path):
    engine = create_engine(database)
    upgrade(engine, "0002")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO images (path, identity, species, added_at, status) VALUES "
            "('/g/rex/1.jpg', 'rex', 'dog', now(), 'indexed'), ('/g/café/2.jpg', 'café', 'dog', now(), 'indexed')"))
    engine.dispose()
    engine = open_database(database, lock_dir=tmp_path)          # upgrades to the newest
    assert current_revision(engine) == head_revision() == "0007"
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("images")}
    assert (str(columns["id"]), str(columns["path"]), str(columns["identity"])) == ("BIGINT", "BYTEA", "BYTEA")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT path, identity FROM images ORDER BY id")).all()
        assert [(bytes(p), bytes(i)) for p, i in rows] == [(b"/g/rex/1.jpg", b"rex"),
                                                          ("/g/café/2.jpg".encode(), "café".encode())]
    downgrade(engine, "0001")                               # and back, names UTF-8 again
    with engine.connect() as connection:
        assert connection.execute(text("SELECT identity FROM images ORDER BY id")).scalars().all() == ["rex", "café"]
    upgrade(engine, "head")
    assert current_revision(engine) == "0007"
    engine.dispose()


def test_individuals_migration_up_and_down_on_postgresql(database, tmp_path):
    engine = open_database(database, lock_dir=tmp_path)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO individuals (id, species, name, created_at, updated_at) "
                                "VALUES (5000000001, 'dog', 'Rex <b>', now(), now())"))
        connection.execute(text("INSERT INTO images (path, identity, species, added_at, status, individual) VALUES "
                                "('/g/rex/1.jpg', 'rex', 'dog', now(), 'indexed', 5000000001)"))
    # The foreign key holds on PostgreSQL: a face cannot point at a missing individual.
    with pytest.raises(Exception, match="fk_images_individual"):
        with engine.begin() as connection:
            connection.execute(text("UPDATE images SET individual = 42"))
    downgrade(engine, "0005")
    columns = [c["name"] for c in inspect(engine).get_columns("images")]
    assert "individual" not in columns and "individuals" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM images")).scalar() == 1
    upgrade(engine, "head")
    assert current_revision(engine) == "0007" and "individuals" in inspect(engine).get_table_names()
    engine.dispose()


def _open_and_report(url: str, lock_dir: str, barrier, results) -> None:
    barrier.wait()                      # every process opens the new database at the same moment
    try:
        engine = open_database(url, lock_dir=Path(lock_dir))
        results.put(current_revision(engine))
        engine.dispose()
    except Exception as error:          # the failure itself is what the test reports
        results.put(repr(error))


def test_processes_on_separate_machines_creating_the_schema_at_once_all_see_it(database, tmp_path):
    # Each process has its own lock folder, as on separate machines: only PostgreSQL's
    # advisory lock keeps them from running the migrations twice.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_open_and_report, args=(database, str(tmp_path / str(i)), barrier, results))
                 for i in range(3)]
    for i, process in enumerate(processes):
        (tmp_path / str(i)).mkdir()
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    assert outcomes == ["0007"] * 3


@pytest.fixture(scope="module")
def checkpoint(fresh_checkpoint) -> Path:
    return fresh_checkpoint


run = invoke_cli


def test_an_index_with_its_metadata_on_postgresql(database, tmp_path, checkpoint):
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=3)
    odd_name = os.fsdecode(bytes(gallery / "person_01") + b"/caf\xe9.jpg")    # not UTF-8: kept as bytes
    identity_image(1, 7).save(odd_name, format="JPEG")
    # Ids past 32 bits, as a gallery of billions reaches: they must go through to the vectors.
    engine = open_database(database, lock_dir=tmp_path)
    with engine.begin() as connection:
        connection.execute(text("ALTER SEQUENCE images_id_seq RESTART WITH 5000000000"))
    engine.dispose()
    index = tmp_path / "index"
    code, output = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", index, "--detector", "none",
                       "--workers", 0, "--no-progress", "--json", "--db", database)
    assert code == 0 and last_json(output)["faces_added"] == 10, output
    assert load_settings(index).database == database and not (index / "gallery.db").exists()

    code, output = run(search_main, "query", odd_name, "--index", index, "-k", 2, "--detector", "none",
                       "--json")
    best = last_json(output)["faces"][0]["matches"][0]
    assert code == 0 and best["path"] == "person_01/caf\\xe9.jpg" and best["distance"] < 1e-3
    assert best["id"] >= 5_000_000_000 and best["identity"] == "person_01"

    code, output = run(indexer_main, "remove", "--identity", "person_00", "--index", index, "--json")
    assert code == 0 and last_json(output)["removed"] == 3
    code, output = run(indexer_main, "check", "--index", index, "--sample", 7, "--json", "--no-progress")
    assert code == 0 and last_json(output)["ok"] and last_json(output)["check"]["indexed"] == 7
    code, output = run(indexer_main, "stats", "--index", index, "--json")
    stats = last_json(output)
    assert (stats["faces"], stats["identities"], stats["database"]) == (7, 2, database)
    code, output = run(indexer_main, "build", gallery, "--index", index, "--no-progress", "--json")
    assert code == 0 and last_json(output)["faces_added"] == 3     # person_00 again, nothing else
    code, output = run(indexer_main, "cluster", "--index", index, "--threshold", 0.5, "--json")
    assert code == 0 and last_json(output)["faces"] == 10
    code, output = run(indexer_main, "export", "--index", index, "--out", tmp_path / "out.npz")
    assert code == 0 and "exported 10 faces" in output


def test_an_unreachable_database_is_one_line_naming_it(tmp_path, checkpoint):
    gallery = write_identity_folders(tmp_path / "gallery", identities=1, per_identity=1)
    url = f"postgresql://nobody@/nowhere?host={tmp_path}"          # no server listens there
    code, output = run(indexer_main, "build", gallery, "--model", checkpoint, "--index", tmp_path / "index",
                       "--no-progress", "--db", url)
    assert code == 1 and output.startswith(f"Error: {url}: cannot open the database (") and "Traceback" not in output
    assert not (tmp_path / "index" / "index.json").exists()       # nothing remembered from a failed start


def test_one_model_per_species_migration_up_and_down_on_postgresql(database, tmp_path):
    engine = open_database(database, lock_dir=tmp_path)
    model = ("INSERT INTO models (name, source, sha256, embedding_dim, species, threshold, detector, added_at) "
             "VALUES ('{0}', '{0}', 'x', 128, '{1}', 0.5, 'none', now())")
    with engine.begin() as connection:
        connection.execute(text(model.format("human", "human")))
        connection.execute(text(model.format("dog", "dog")))
    with pytest.raises(Exception, match="ux_models_species"):       # one model per species
        with engine.begin() as connection:
            connection.execute(text(model.format("dog2", "dog")))
    downgrade(engine, "0006")
    assert "ux_models_species" not in [i["name"] for i in inspect(engine).get_indexes("models")]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM models")).scalar() == 2
    upgrade(engine, "head")
    assert current_revision(engine) == "0007"
    assert [(i["name"], i["unique"]) for i in inspect(engine).get_indexes("models")] == [("ux_models_species", True)]
    engine.dispose()


def test_a_two_model_index_with_its_metadata_on_postgresql(database, tmp_path, checkpoint, fresh_dog_checkpoint):
    """Two models (an untrained human and dog network; --detector none, so each crop is a face
    of each) share one PostgreSQL database, each with its own FAISS file."""
    gallery = write_identity_folders(tmp_path / "gallery", identities=3, per_identity=3)
    index = tmp_path / "index"
    code, output = run(indexer_main, "build", gallery, "--models", f"{checkpoint},{fresh_dog_checkpoint}",
                       "--index", index, "--detector", "none", "--workers", 0, "--no-progress", "--json",
                       "--db", database)
    assert code == 0 and last_json(output)["faces_added"] == 18 and last_json(output)["vectors"] == 18, output
    assert sorted(p.name for p in index.glob("vectors*")) == ["vectors-dog.faiss", "vectors.faiss"]
    probe = gallery / "person_01" / "person_01_0002.jpg"
    code, output = run(search_main, "query", probe, "--index", index, "-k", 1, "--json")
    result = last_json(output)
    assert code == 0 and [f["species"] for f in result["faces"]] == ["human", "dog"]
    assert all(f["matches"][0]["path"] == "person_01/person_01_0002.jpg" for f in result["faces"])
    code, output = run(indexer_main, "remove", "--identity", "person_00", "--index", index, "--json")
    assert code == 0 and last_json(output)["removed"] == 6 and last_json(output)["vectors"] == 12
    code, output = run(indexer_main, "check", "--index", index, "--json", "--no-progress")
    assert code == 0 and last_json(output)["ok"] and last_json(output)["check"]["indexed"] == 12
    code, output = run(indexer_main, "cluster", "--index", index, "--threshold", 0.5, "--json")
    assert code == 0 and [m["faces"] for m in last_json(output)["models"]] == [6, 6]
