"""Image loading and preprocessing: the one place every part of facesearch reads a picture.

`load_image` turns any file into an upright RGB PIL image or raises `ImageError` naming
the file and the reason. `Preprocess` turns a face crop into the tensor a model expects;
its settings travel inside each checkpoint, so training and inference cannot drift apart.

What may be opened at all is decided here, once, for the command lines, the indexer and the
web app alike: only regular files (a FIFO or a device named like a photo would block or
never end), at most `MAX_FILE_BYTES`, in one of `IMAGE_FORMATS` judged by the first bytes
(Pillow knows dozens of formats more, among them EPS, which runs Ghostscript; untrusted
files never reach those decoders), with at most `MAX_PIXELS` pixels.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

if TYPE_CHECKING:
    import torch

# The formats facesearch reads (Pillow's names), with the first bytes that mark each.
IMAGE_FORMATS = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "WEBP": (b"RIFF",),               # and "WEBP" at offset 8, checked in image_format
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
ACCEPTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Decompression-bomb guard: 40 megapixels is far above any photo a face search needs
# (a 48 MP phone shot is the exception and can be downscaled by the user).
MAX_PIXELS = 40_000_000
# Files this large are not photos of faces; refusing them keeps a reader's memory bounded.
MAX_FILE_BYTES = 256 * 1024 * 1024


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def image_format(data: bytes) -> str | None:
    """Which of IMAGE_FORMATS the bytes start with, or None."""
    for name, starts in IMAGE_FORMATS.items():
        if data.startswith(starts) and (name != "WEBP" or data[8:12] == b"WEBP"):
            return name
    return None


def os_error_reason(error: OSError) -> str:
    """A short, stable reason for a file that cannot be read (stored as the skip reason)."""
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT:
        return "file not found (deleted, or a broken symlink)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.EISDIR:
        return "is a directory, not an image file"
    return f"cannot read ({error.strerror or error})"


def not_regular_reason(mode: int) -> str | None:
    """Why a file of this st_mode is not read as an image (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
    return f"not a regular file ({kind})"


def read_image_file(path: str | os.PathLike, name: str | None = None) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, or ImageError saying why not
    (naming the file as `name`, default its path).

    Opened without blocking, so a FIFO is refused at once instead of waiting for a writer."""
    label = name if name is not None else str(path)
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        raise ImageError(label, os_error_reason(error)) from None
    try:
        info = os.fstat(handle)
        problem = not_regular_reason(info.st_mode)
        if problem is None and info.st_size > MAX_FILE_BYTES:
            problem = f"file too large ({info.st_size:,} bytes, limit {MAX_FILE_BYTES:,})"
        if problem is not None:
            raise ImageError(label, problem)
        with os.fdopen(handle, "rb", closefd=False) as stream:
            return stream.read(MAX_FILE_BYTES + 1)    # load_image refuses a file that grew
    except OSError as error:
        raise ImageError(label, os_error_reason(error)) from None
    finally:
        os.close(handle)


def load_image(source: str | os.PathLike | bytes, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a file path or raw bytes into an upright RGB image.

    EXIF orientation is applied; grey, palette, CMYK and alpha images become RGB; of an
    animation the first frame is taken. A JPEG cut short by a few bytes (missing only its
    end, as phones and downloads sometimes leave them) is accepted; one missing a visible
    part of the picture is not. Raises ImageError for missing, unreadable, non-regular,
    empty, corrupt, truncated, oversized or non-image input and for formats outside
    IMAGE_FORMATS.
    """
    label = name if name is not None else (None if isinstance(source, bytes) else str(source))
    data = source if isinstance(source, bytes) else read_image_file(source, label)
    if not data:
        raise ImageError(label, "empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(label, f"file too large (more than {MAX_FILE_BYTES:,} bytes)")
    format_name = image_format(data)
    if format_name is None:
        raise ImageError(label, "not an image (unrecognised format)")
    with warnings.catch_warnings():
        # Pillow's warnings about odd files (corrupt EXIF, truncated reads) would print its
        # source paths; the file either decodes or becomes an ImageError below.
        warnings.simplefilter("ignore")
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; we want a hard stop.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            try:
                image = _decode(data, format_name, label, max_pixels)
            except OSError as error:
                if "truncated" not in str(error) or format_name != "JPEG":
                    raise
                image = _decode_cut_jpeg(data, label, max_pixels)
            return _to_rgb(ImageOps.exif_transpose(image))
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(label, "not an image (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(label, "image too large (decompression bomb guard)") from None
        except MemoryError:
            raise ImageError(label, "image too large (out of memory while decoding)") from None
        except Exception as error:
            # Pillow's parsers report damaged data as OSError, SyntaxError, ValueError and,
            # on stranger damage, struct.error, IndexError and others: all are a bad file.
            raise ImageError(label, f"corrupt or truncated image ({error or type(error).__name__})") from None


JPEG_END = b"\xff\xd9"
# A JPEG decoded past its end is padded with mid-grey rows; one block row (16 px) of them
# means only the last bytes were missing.
MAX_MISSING_ROWS = 16


def _decode(data: bytes, format_name: str, label: str | None, max_pixels: int) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=[format_name])
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(label, f"image too large ({width}x{height} pixels, limit {max_pixels:,})")
    image.load()
    return image


def _decode_cut_jpeg(data: bytes, label: str | None, max_pixels: int) -> Image.Image:
    """Close the cut JPEG with its end marker, decode, and measure the grey padding."""
    image = _decode(data + JPEG_END, "JPEG", label, max_pixels)
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


# dlib's face chip: the margin around the landmarks' extent, as a fraction of it (dlib's
# default, and what dlib's face recognition network was trained on).
DLIB_CHIP_PADDING = 0.25


@dataclass(frozen=True)
class Preprocess:
    """How a face crop becomes a model input.

    alignment: how the face detector turns a face into the model's face image (see
    faces.detectors): 'lfw' frames it as an LFW image, 'dlib_chip' cuts dlib's face chip.
    crop: fraction of the (square-padded) face image kept around its centre before
    resizing. LFW images hold the face in roughly the central half; DogFaceNet's aligned
    crops and dlib's chips are the face already (crop 1.0).
    chip_padding: the margin of a dlib chip around the landmarks, as a fraction of their
    extent (dlib's 0.25 unless a model asks for a wider view; stored only then, so older
    checkpoints and their digests stay as they were).
    """

    input_size: int = 64
    crop: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    alignment: str = "lfw"
    chip_padding: float = DLIB_CHIP_PADDING

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["chip_padding"] == DLIB_CHIP_PADDING:
            del data["chip_padding"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(input_size=int(data["input_size"]), crop=float(data["crop"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]),
                   alignment=data.get("alignment", "lfw"),
                   chip_padding=float(data.get("chip_padding", DLIB_CHIP_PADDING)))

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


def resolve_data_root(root: str | os.PathLike) -> Path:
    """The folder whose sub-folders are identities. Accepts a dataset's top folder too
    (`lfw/` for `lfw/images/<name>/`), as long as it holds an `images/` folder and no images."""
    from .errors import DataError
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    images = root / "images"
    if images.is_dir() and not list_images(root) and any(p.is_dir() for p in images.iterdir()):
        return images
    return root
