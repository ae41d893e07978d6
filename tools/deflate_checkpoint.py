"""Rewrite a checkpoint with its zip entries deflated, so a bundled model stays under the
repository's 25 MB a file: torch.save stores them uncompressed, and torch.load reads either.
The weights, and so the embedding digest an index records, are unchanged. Run once on a
bundled checkpoint after `trainer calibrate` writes it:

    python tools/deflate_checkpoint.py faces/bundled/dog.pt
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path


def deflate(path: Path) -> tuple[int, int]:
    """Deflate `path` in place (through a temporary file); returns its sizes before and after."""
    temporary = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED,
                                                          compresslevel=9) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    before = path.stat().st_size
    os.replace(temporary, path)
    return before, path.stat().st_size


if __name__ == "__main__":
    for name in sys.argv[1:]:
        before, after = deflate(Path(name))
        print(f"{name}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
