"""What an upload must be before it reaches the search engine: a photo file, by content.

The file name and the declared content type are the client's word and are ignored; the
first bytes decide. Only everyday photo formats are accepted, which also keeps PIL's
rarer decoders away from untrusted input. Whether the picture then decodes (corrupt,
truncated, too many pixels) is for `faces.imaging.load_image`, inside the engine.
"""
from __future__ import annotations

from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"


def image_format(data: bytes) -> str | None:
    """The photo format the bytes start with, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def read_image_upload(upload: FileStorage | None, max_bytes: int) -> bytes:
    """The uploaded file's bytes; raises 400 (missing, empty), 413 (too big), 415 (not a photo)."""
    if upload is None:
        raise BadRequest("no file: send the photo as multipart/form-data in the field 'image'")
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge()
    if not data:
        raise BadRequest("empty file (0 bytes)")
    if image_format(data) is None:
        raise UnsupportedMediaType(f"not an image: upload a {ACCEPTED_FORMATS} photo")
    return data
