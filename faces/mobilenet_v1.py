"""MobileNet (Howard et al. 2017, width 1.0) laid out as Keras builds it, so that weights
trained in Keras load unchanged (tools/convert_hse_faceres.py): a 3 x 3 stride-2 stem, then
13 blocks of a 3 x 3 depthwise and a 1 x 1 pointwise convolution, each with batch norm and
ReLU6, stride-2 convolutions padded as TensorFlow's "same" does (faces.mobilenet_v2).

The backbone ends in global average pooling of its last 1,024 channels. As `hse_mobilenet`
it is A. Savchenko's face-identification MobileNet (HSE FaceRes, trained on VGGFace2), whose
pooled features are the embedding itself (faces.models puts no head on it).
"""
from __future__ import annotations

import torch
from torch import nn

from .mobilenet_v2 import conv_bn

STEM_CHANNELS = 32
# (output channels, stride) of each depthwise-separable block.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))
FEATURE_CHANNELS = 1024


class MobileNetV1(nn.Module):
    feature_dim = FEATURE_CHANNELS

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, STEM_CHANNELS, 3, stride=2)
        blocks, channels = [], STEM_CHANNELS
        for out_channels, stride in BLOCKS:
            blocks.append(nn.Sequential(conv_bn(channels, channels, 3, stride, groups=channels),
                                        conv_bn(channels, out_channels, 1)))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))
