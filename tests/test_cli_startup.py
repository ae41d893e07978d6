"""The command lines answer at once when no model is needed: `--help`, usage errors, a
missing index and a refused lock load neither torch nor FAISS nor the database layer (each
costs up to seconds on a small machine), and `indexer --help` takes under half a second."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from indexer.lock import IndexLock

HEAVY = ("torch", "faiss", "sqlalchemy", "alembic")
# Runs a command line in a fresh interpreter, then says which heavy modules it imported.
PROBE = """
import json, sys
from {package}.cli import main
try:
    main(sys.argv[1:], prog_name="{package}")
except SystemExit as done:
    code = done.code
print(json.dumps({{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}), file=sys.stderr)
"""


def probe(package: str, *args: str) -> tuple[int, list[str], str]:
    """(exit status, heavy modules imported, output) of `package ARGS` in a new process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE.format(package=package, heavy=HEAVY), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    *output, last = done.stderr.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["code"], report["heavy"], done.stdout + "\n".join(output)


@pytest.mark.parametrize("package", ["indexer", "search", "trainer"])
def test_help_loads_no_heavy_module(package):
    code, heavy, output = probe(package, "--help")
    assert code == 0 and "Usage:" in output
    assert heavy == []


@pytest.mark.parametrize("package", ["indexer", "search", "trainer"])
def test_help_lists_each_command_with_its_whole_first_sentence(package):
    import importlib
    group = importlib.import_module(f"{package}.cli").main
    code, _, output = probe(package, "--help")
    listing = " ".join(output.split("Commands:")[1].split())
    for name, command in group.commands.items():
        first = " ".join(command.get_short_help_str(10_000).split())
        assert first.endswith(".") and f"{name} {first}" in listing, (name, listing)
    assert "..." not in listing


@pytest.mark.parametrize("package, command, option", [("search", "serve", "--host"), ("search", "serve", "--port"),
                                                      ("trainer", "info", "--json")])
def test_options_have_help(package, command, option):
    code, _, output = probe(package, command, "--help")
    line = next(line for line in output.splitlines() if line.strip().startswith(option))
    text = line.split(option, 1)[1].replace("TEXT", "").replace("INTEGER RANGE", "").strip()
    assert code == 0 and len(text) > 15 and not text.startswith("[default"), line


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", "from search.cli import main; main()", "serve", "--index",
                               str(tmp_path / "none"), "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert lines == [f"Error: port {port} on 127.0.0.1 is taken (another server is listening there); choose "
                     f"another with --port, e.g. search serve --port {port + 1}"], done.stderr


def test_indexer_help_answers_within_half_a_second():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(3):    # the best of three: a shared machine's load comes and goes
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from indexer.cli import main; main()", "--help"],
                       check=True, capture_output=True, env=env, timeout=60)
        times.append(time.perf_counter() - started)
    assert min(times) < 0.5, f"indexer --help took {min(times):.2f} s at best"


def test_a_refused_lock_loads_no_heavy_module(tmp_path, identity_folders):
    index = tmp_path / "index"
    index.mkdir()
    with IndexLock(index):
        code, heavy, output = probe("indexer", "build", str(identity_folders), "--index", str(index))
    assert code == 1 and f"another indexer process (pid {os.getpid()})" in output
    assert heavy == []


@pytest.mark.parametrize("command", [["indexer", "stats"], ["indexer", "remove", "x.jpg"],
                                     ["search", "query", "photo.jpg"], ["search", "identify", "photo.jpg"]])
def test_a_missing_index_is_said_before_anything_heavy_loads(tmp_path, command):
    package, *args = command
    code, heavy, output = probe(package, *args, "--index", str(tmp_path / "none"))
    assert code == 1 and f"no index at {tmp_path / 'none'}: run `indexer build GALLERY` first" in output
    assert "torch" not in heavy and "faiss" not in heavy
