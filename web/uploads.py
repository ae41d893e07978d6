"""What an upload must be before it reaches the search engine: a photo file, by content.

The file name and the declared content type are the client's word and are ignored; the
first bytes decide, by faces.imaging's one allow-list of formats (the one the indexer and
the command lines read too). Whether the picture then decodes (corrupt, truncated, too
many pixels) is for `faces.imaging.load_image`, inside the engine.
"""
from __future__ import annotations

from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from faces.imaging import ACCEPTED_FORMATS, image_format


class UploadTooLarge(RequestEntityTooLarge):
    """The photo itself is over MAX_UPLOAD_BYTES (not the form around it)."""


def read_image_upload(upload: FileStorage | None, max_bytes: int) -> bytes:
    """The uploaded file's bytes; raises 400 (missing, empty), 413 (too big), 415 (not a photo)."""
    if upload is None:
        raise BadRequest("no file: send the photo as multipart/form-data in the field 'image'")
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge()
    if not data:
        raise BadRequest("empty file (0 bytes)")
    if image_format(data) is None:
        raise UnsupportedMediaType(f"not an image (judged by its content); upload a {ACCEPTED_FORMATS} photo")
    return data
