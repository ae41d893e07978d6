"""User-facing error types, kept free of heavy imports so a command line can know them
without loading torch."""
from __future__ import annotations

import os


class ImageError(Exception):
    """A file that cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class DataError(Exception):
    """A data folder or pairs file that cannot be used; the message says why."""


class ModelError(Exception):
    """A model name or file that cannot be loaded; the message says why."""
