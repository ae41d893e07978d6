"""Test-time crops: does averaging a face's embedding over a few crops of it help a model?

Each face (and, for a flip-averaging model, its mirror image) is embedded as it is and as
the views named by --views (a centred crop of a share of the side, optionally shifted,
resized back to the model's input), the vectors summed and normalised; `trainer
evaluate`'s numbers (as bench/ensemble.py prints them) are printed for each set of views,
on identities nothing was chosen on; the faces are cropped once for all of them. Cost: one
network pass per view.

    python bench/tta_crops.py --model dog --data runs/dog-split/choose --pairs runs/dog-split/choose_pairs.txt

Views: `none`; `c90` (0.9 of the side); `c90c80`; `c85x3` (0.85, centred and shifted 5% left
and right). Not used by any command: a measurement of an idea (issue 20).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble import scores  # noqa: E402
from faces.checkpoint import FaceModel, load_model  # noqa: E402
from trainer.evaluate import EvaluationSet  # noqa: E402

VIEWS = {"none": [], "c90": [(0.9, 0.0)], "c90c80": [(0.9, 0.0), (0.8, 0.0)],
         "c85x3": [(0.85, 0.0), (0.85, -0.05), (0.85, 0.05)]}


def crop_resized(batch: torch.Tensor, share: float, shift: float) -> torch.Tensor:
    """uint8 N x 3 x S x S crops: the centred square of `share` of the side, moved by `shift`
    of the side to the right, resized back to S."""
    size = batch.shape[-1]
    side = int(size * share)
    top = (size - side) // 2
    left = top + int(shift * size)
    window = batch[:, :, top:top + side, left:left + side].float()
    return F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255).to(
        torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dog")
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--views", default="none,c90,c90c80,c85x3")
    args = parser.parse_args()
    model = load_model(args.model)
    faces = EvaluationSet(args.data, args.pairs, model.preprocess, progress=False)   # cropped once for every view set
    plain = FaceModel.embed_tensor
    try:
        for name in args.views.split(","):
            def embed(self, batch, views=VIEWS[name]):
                total = plain(self, batch)
                for share, shift in views:
                    total = total + plain(self, crop_resized(batch, share, shift))
                return total / np.linalg.norm(total, axis=1, keepdims=True)
            FaceModel.embed_tensor = embed
            print(json.dumps({"views": name, **scores(faces.embed(model))}), flush=True)
    finally:
        FaceModel.embed_tensor = plain


if __name__ == "__main__":
    main()
