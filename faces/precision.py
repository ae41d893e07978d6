"""What the networks compute in: float32, or bfloat16 where the CPU runs it fast.

One answer for every network (the embedding models, BlazeFace, training's autocast):
`FACESEARCH_PRECISION` = auto (the default), float32 or bfloat16. auto is bfloat16 on a CPU
with AMX tiles (Intel Sapphire Rapids and later), whose matrix units run it about three
times as fast for the embedding networks with vectors within 1e-4 of cosine of float32's
(README: Speed), and float32 everywhere else: bfloat16 without AMX is slower, and CUDA
runs are not measured here.
"""
from __future__ import annotations

import os

from .errors import ModelError

PRECISION_ENV = "FACESEARCH_PRECISION"
PRECISIONS = ("auto", "float32", "bfloat16")


def compute_precision(device, asked: str | None = None) -> str:
    """"float32" or "bfloat16" for a network on `device` (a torch.device or its name):
    `asked`, else $FACESEARCH_PRECISION, else auto."""
    text = (asked or os.environ.get(PRECISION_ENV) or "auto").strip().lower()
    if text not in PRECISIONS:
        raise ModelError(f"precision {text!r}{'' if asked else ' (' + PRECISION_ENV + ')'}: expected one of "
                         f"{', '.join(PRECISIONS)}")
    if text != "auto":
        return text
    import torch      # here, so that a command's --help never loads it
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return "bfloat16" if torch.device(device).type == "cpu" and has_amx() else "float32"
