"""One writer per index: an exclusive flock on DIR/indexer.lock.

The kernel drops the lock when its holder dies, kill -9 included, so a crashed build never
leaves a stale lock behind. A second writer is refused at once, naming the holder's pid:
`lock_for_writing` takes it before torch and the model load, so the refusal is immediate.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .config import LOCK_FILE, existing_index
from .errors import IndexBusyError


class IndexLock:
    def __init__(self, index_dir: Path):
        self.path = Path(index_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> "IndexLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise IndexBusyError(f"{self.path.parent}: another indexer process (pid {holder}) is "
                                 "changing this index; wait for it to finish and try again") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "IndexLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_writing(index_dir: str | os.PathLike, create: bool) -> IndexLock:
    """The writer's lock on `index_dir` (created when `create`), or IndexMissingError."""
    index_dir = Path(index_dir) if create else existing_index(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    return IndexLock(index_dir).acquire()
