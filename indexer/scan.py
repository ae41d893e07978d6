"""Walking a gallery folder: every image file, its identity, or why it cannot be used.

The identity of an image is the folder directly under the gallery root that holds it
(root/<identity>/.../<image>); images directly in the root have none. Folder symlinks are
followed once: a link back to a folder already walked (a loop) is reported, not followed.
Hidden files and files without an image suffix are not images and are passed over; a FIFO,
socket or device named like an image is reported (and never opened).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from faces.imaging import is_image_name, not_regular_reason, os_error_reason


@dataclass(frozen=True)
class GalleryFile:
    path: str                  # absolute, through the gallery root as given (links not resolved)
    identity: str | None
    problem: str | None = None  # set when the entry cannot even be opened (loop, broken link...)


def identity_of(path: str, root: str) -> str | None:
    parts = Path(os.path.relpath(path, root)).parts
    return parts[0] if len(parts) > 1 else None


def walk_gallery(root: str | os.PathLike) -> Iterator[GalleryFile]:
    """Every image file under `root`, depth first in name order; streams, holds no list."""
    root = os.path.abspath(root)
    visited: set[tuple[int, int]] = set()
    root_stat = os.stat(root)
    visited.add((root_stat.st_dev, root_stat.st_ino))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            yield GalleryFile(folder, identity_of(folder, root), f"folder unreadable: {os_error_reason(error)}")
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                info = os.stat(entry.path)      # follows links; a loop raises ELOOP here
            except OSError as error:
                if entry.is_symlink() or is_image_name(entry.name):
                    yield GalleryFile(entry.path, identity_of(entry.path, root), os_error_reason(error))
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in visited:
                    yield GalleryFile(entry.path, identity_of(entry.path, root),
                                      "symlink loop (links to a folder already walked)")
                else:
                    visited.add(key)
                    subfolders.append(entry.path)
            elif is_image_name(entry.name):
                # A FIFO or device named like a photo is recorded as skipped, never opened.
                yield GalleryFile(entry.path, identity_of(entry.path, root), not_regular_reason(info.st_mode))
        stack.extend(reversed(subfolders))
