"""`search query --server URL`: ask a running `search serve` instead of loading the engine.

The server has the model and the index in memory already, so each photo costs a request,
not a start-up: no torch, FAISS or database is imported here (standard library only).
The answer is the server's `POST /api/search` JSON, the same as `search query --json`
gives for one photo locally. With $FACESEARCH_API_KEY set, it is sent as the server wants
it, `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request

from faces.errors import readable

API_KEY_ENV_VAR = "FACESEARCH_API_KEY"
TIMEOUT_S = 120
# Statuses that concern this photo alone (bad image, too large, not an image); the others
# (no index, wrong key, server error) would fail every photo alike.
PHOTO_STATUSES = (400, 413, 415)


class ServerError(Exception):
    """The server cannot answer at all: unreachable, refused the key, has no index."""


class PhotoRefused(Exception):
    """The server answered this photo with an error (its message says why)."""


class SearchClient:
    def __init__(self, url: str, api_key: str | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServerError(f"{url}: not a server address; give one like http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV_VAR) or None

    def query(self, photo: str, k: int, threshold: str | None, box: str | None = None,
              fpir: str | None = None, detector: str | None = None) -> dict:
        """The server's answer for the photo file at `photo` (`detector`: the API's field,
        the detector that finds the faces; None leaves it to the server)."""
        try:
            with open(photo, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise PhotoRefused(f"{readable(photo)}: {error.strerror or error}") from None
        fields = {"k": str(k)}
        if threshold is not None:
            fields["threshold"] = str(threshold)
        if fpir is not None:
            fields["fpir"] = str(fpir)
        if box is not None:
            fields["box"] = str(box)
        if detector is not None:
            fields["detector"] = str(detector)
        body, content_type = multipart(fields, "image", os.path.basename(photo), data)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}/api/search", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            message = _error_message(error)
            if error.code in PHOTO_STATUSES:
                raise PhotoRefused(f"{readable(photo)}: {message}") from None
            hint = f" (set ${API_KEY_ENV_VAR})" if error.code == 401 else ""
            raise ServerError(f"{self.url}: HTTP {error.code}: {message}{hint}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"{self.url}: cannot reach the server ({reason}); is `search serve` "
                              "running there?") from None


def multipart(fields: dict[str, str], file_field: str, file_name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text `fields` and one file, and its content type."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    quoted = file_name.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace('"', "%22")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{quoted}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return error.reason or "no reason given"
