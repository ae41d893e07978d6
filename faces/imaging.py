"""Image loading and preprocessing: the one place every part of facesearch reads a picture.

`load_image` turns any file into an upright RGB PIL image or raises `ImageError` naming
the file and the reason. `Preprocess` turns a face crop into the tensor a model expects;
its settings travel inside each checkpoint, so training and inference cannot drift apart.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Decompression-bomb guard: 40 megapixels is far above any photo a face search needs
# (a 48 MP phone shot is the exception and can be downscaled by the user).
MAX_PIXELS = 40_000_000


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def load_image(source: str | os.PathLike | bytes, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a file path or raw bytes into an upright RGB image.

    EXIF orientation is applied; grey, palette, CMYK and alpha images become RGB. A JPEG cut
    short by a few bytes (missing only its end, as phones and downloads sometimes leave
    them) is accepted; one missing a visible part of the picture is not.
    Raises ImageError for missing, empty, corrupt, truncated, non-image or oversized input.
    """
    label = name if name is not None else (None if isinstance(source, bytes) else str(source))
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not data:
            raise ImageError(label, "empty file (0 bytes)")
        try:
            image = _decode(data, label, max_pixels)
        except OSError as error:
            if "truncated" not in str(error) or not data.startswith(JPEG_START):
                raise
            image = _decode_cut_jpeg(data, label, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(label, "image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated and corrupt data as OSError/SyntaxError with its own wording.
        raise ImageError(label, f"corrupt or truncated image ({error})") from None


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
# A JPEG decoded past its end is padded with mid-grey rows; one block row (16 px) of them
# means only the last bytes were missing.
MAX_MISSING_ROWS = 16


def _decode(data: bytes, label: str | None, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; we want a hard stop.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(label, f"image too large ({width}x{height} pixels, limit {max_pixels:,})")
        image.load()
        return image


def _decode_cut_jpeg(data: bytes, label: str | None, max_pixels: int) -> Image.Image:
    """Close the cut JPEG with its end marker, decode, and measure the grey padding."""
    image = _decode(data + JPEG_END, label, max_pixels)
    rows = np.asarray(image.convert("L"))[::-1]
    padded = np.all(rows == 128, axis=1)
    missing = len(padded) if padded.all() else int(np.argmin(padded))
    if missing > MAX_MISSING_ROWS:
        raise ImageError(label, f"corrupt or truncated image (the bottom {missing} of {image.height} rows are missing)")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so transparent regions do not turn into black blobs.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """How a face crop becomes a model input.

    alignment: how the face detector turns a face into the model's face image (see
    faces.detection): 'lfw' frames it as an LFW image, 'dlib_chip' cuts dlib's face chip.
    crop: fraction of the (square-padded) face image kept around its centre before
    resizing. LFW images hold the face in roughly the central half; DogFaceNet's aligned
    crops and dlib's chips are the face already (crop 1.0).
    """

    input_size: int = 64
    crop: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    alignment: str = "lfw"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(input_size=int(data["input_size"]), crop=float(data["crop"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]),
                   alignment=data.get("alignment", "lfw"))

    def crop_and_resize(self, image: Image.Image, size: int | None = None) -> Image.Image:
        """Centre crop by `crop` and resize to `size` (default input_size) pixels square."""
        size = size or self.input_size
        width, height = image.size
        side = min(width, height) * self.crop
        left, top = (width - side) / 2, (height - side) / 2
        return image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))

    def to_uint8(self, image: Image.Image, size: int | None = None) -> "torch.Tensor":
        """A CxHxW uint8 tensor of the cropped face (what datasets cache)."""
        import torch  # here, not at the top: commands that only read images start faster
        array = np.asarray(self.crop_and_resize(image, size), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def normalise(self, batch: "torch.Tensor") -> "torch.Tensor":
        """uint8 (or 0..255 float) NxCxHxW -> normalised float input."""
        import torch
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std

    def __call__(self, image: Image.Image) -> "torch.Tensor":
        """One face image -> a normalised CxHxW float tensor."""
        return self.normalise(self.to_uint8(image).unsqueeze(0))[0]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_name(p))
