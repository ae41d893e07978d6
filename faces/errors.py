"""User-facing error types, kept free of heavy imports so a command line can know them
without loading torch."""
from __future__ import annotations

import os


def readable(name: str | os.PathLike) -> str:
    """A file name as text that prints anywhere: bytes that are not UTF-8 (which Python holds
    as surrogate escapes) are shown as \\xNN, e.g. caf\\xe9.jpg."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class ImageError(Exception):
    """A file that cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{readable(self.path)}: {reason}" if self.path else reason)


class DataError(Exception):
    """A data folder or pairs file that cannot be used; the message says why."""


class ModelError(Exception):
    """A model name or file that cannot be loaded; the message says why."""
