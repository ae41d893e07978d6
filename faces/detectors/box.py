"""Boxes the user gives (`--box`, the API's `box`, a box drawn on the page): parsing and
checking. Each detector's `in_box` then cuts the face in it as its own faces are cut."""
from __future__ import annotations

from .base import Box, clip_box


def parse_box(text: str) -> Box:
    """'x0,y0,x1,y1' (pixels of the photo, x0 < x1, y0 < y1) -> a box; ValueError says what is wrong."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        x0, y0, x1, y1 = (int(round(float(part))) for part in parts)
    except ValueError:
        raise ValueError(f"a box is four numbers x0,y0,x1,y1 (pixels), not {text!r}") from None
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ValueError(f"box {text!r}: needs 0 <= x0 < x1 and 0 <= y0 < y1 (left, top, right, bottom)")
    return x0, y0, x1, y1


def box_inside(box: Box, size: tuple[int, int]) -> Box:
    """The box cut to the picture; ValueError when less than 8 pixels a side of it is left."""
    x0, y0, x1, y1 = clip_box(box, size)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError(f"box {','.join(map(str, box))} lies (almost) outside the "
                         f"{size[0]}x{size[1]} picture")
    return x0, y0, x1, y1
