"""MobileNetV2 (Sandler et al. 2018, width 1.0) laid out as Keras builds it, so that Keras'
ImageNet-trained weights load unchanged (tools/convert_nsfwjs_mobilenet.py):

- a stride-2 convolution pads as TensorFlow's "same" does: an even input gets its one pixel
  of padding at the bottom and right only (Keras' `correct_pad`), an odd one a pixel each side;
- batch norm with epsilon 1e-3; ReLU6.

The weights nsfwjs ships expect pixels scaled to 0..1 (their batch norms' running statistics
match that input, not Keras' -1..1); the converted checkpoint's preprocessing says so.

The backbone ends in global average pooling of its last 1,280 channels; faces.models puts
the embedding head on top.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, output channels, blocks, stride of the first) of each stage, as in the paper.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))
STEM_CHANNELS = 32
FEATURE_CHANNELS = 1280
BN_EPS = 1e-3


class SamePadding(nn.Module):
    """TensorFlow's "same" padding of a 3 x 3, stride-2 convolution: the one pixel an even side
    needs goes after it (bottom, right); an odd side gets one each side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return F.pad(x, (width % 2, 1, height % 2, 1))


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            relu6: bool = True) -> nn.Sequential:
    """convolution (no bias) -> batch norm [-> ReLU6], the convolution and its batch norm
    adjacent so faces.models.inference_copy folds them."""
    layers: list[nn.Module] = []
    if stride == 2:
        layers.append(SamePadding())
    padding = kernel // 2 if stride == 1 else 0
    layers += [nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
               nn.BatchNorm2d(out_channels, eps=BN_EPS)]
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (none when the expansion is 1) -> 3x3 depthwise -> 1x1 linear projection,
    added to its input where the shape allows."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = conv_bn(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, 1, relu6=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    feature_dim = FEATURE_CHANNELS

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, STEM_CHANNELS, 3, stride=2)
        blocks, channels = [], STEM_CHANNELS
        for expansion, out_channels, count, stride in STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.last = conv_bn(channels, FEATURE_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.blocks(self.stem(x))).mean((2, 3))
