"""Small JPEG thumbnails of gallery images, for the result grid.

Only files the index knows are ever opened: the caller looks the path up by image id in
the gallery database. Results are cached in memory because the same gallery faces come
back for many queries.
"""
from __future__ import annotations

import io
from functools import lru_cache

from faces.imaging import load_image

THUMBNAIL_PIXELS = 160
PHOTO_PIXELS = 640        # a whole gallery photo, on an individual's page
# Context kept around a stored face box, as a fraction of the box's size on each side.
FACE_MARGIN = 0.25


@lru_cache(maxsize=2048)
def thumbnail_jpeg(path: str, modified_ns: int, box: tuple[int, int, int, int] | None,
                   pixels: int = THUMBNAIL_PIXELS) -> bytes:
    """`modified_ns` is part of the cache key so that a replaced file is not served stale."""
    image = load_image(path)
    if box is not None:
        image = image.crop(_with_margin(box, image.size))
    image.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _with_margin(box, size):
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * FACE_MARGIN, (y1 - y0) * FACE_MARGIN
    width, height = size
    return (max(0, int(x0 - dx)), max(0, int(y0 - dy)),
            min(width, int(x1 + dx)), min(height, int(y1 + dy)))
