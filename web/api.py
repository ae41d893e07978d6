"""The JSON API: `POST /api/search` and `GET /api/health`.

Errors are `{"error": message}` with the HTTP status saying what kind (see errors.py).
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from faces import clitools
from faces.errors import ModelError
from faces.detectors import parse_box
from faces.imaging import ImageError
from search.errors import SearchError

from .engine import EngineUnavailable, gallery_summary, get_engine, unavailable
from .uploads import read_image_upload

blueprint = Blueprint("api", __name__, url_prefix="/api")


@blueprint.post("/search")
def search():
    """Multipart form: the photo in `image`, optionally `k` matches per face, `fpir` (the
    share of strangers' searches that may see a match, default 0.04) or a per-pair
    `threshold` (strict, balanced or a distance), a `box` "x0,y0,x1,y1" (pixels of the
    photo) to search the face in instead of detecting, the `detector` that finds the
    faces (default: the one the index was built with; the answer's "detector" says which),
    and, in an index of several models, the `species` whose faces to look for (default all).

    Answers the engine's own result, the JSON of `search query --json` for one photo.
    """
    image = read_image_upload(request.files.get("image"), current_app.config["MAX_UPLOAD_BYTES"])
    k = matches_per_face(request.values.get("k"))
    box = face_box(request.values.get("box"))
    detector = face_detector(request.values.get("detector"))
    try:
        result = get_engine().query(image, k=k, threshold=request.values.get("threshold") or None, box=box,
                                    fpir=request.values.get("fpir") or None, detector=detector,
                                    species=(request.values.get("species") or "").strip() or None)
    except ImageError as error:
        raise BadRequest(f"bad image: {error.reason}") from None
    except (ModelError, SearchError) as error:   # a bad fpir or operating point, a box outside the photo
        raise BadRequest(str(error)) from None
    except clitools.USER_ERRORS as error:   # e.g. the index damaged or replaced under a running server
        raise unavailable(error) from None
    return jsonify(result)


@blueprint.get("/health")
def health():
    try:
        engine = get_engine()
    except EngineUnavailable as error:
        return jsonify(status="unavailable", error=str(error)), 503
    return jsonify(status="ok", gallery=gallery_summary(engine))


def matches_per_face(text: str | None) -> int:
    limit = current_app.config["MAX_K"]
    if text is None or text == "":
        return current_app.config["DEFAULT_K"]
    k = clitools.whole_number(text)
    if k is None or not 1 <= k <= limit:
        raise BadRequest(f"k must be a whole number from 1 to {limit}")
    return k


def face_box(text: str | None):
    """The form's `box` field as a box, None when absent or empty."""
    if text is None or not text.strip():
        return None
    try:
        return parse_box(text)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def face_detector(text: str | None) -> str | None:
    """The form's `detector` field: a detector's name, None when absent or empty."""
    from faces.detectors import DETECTORS
    if text is None or not text.strip():
        return None
    if text.strip() not in DETECTORS:
        raise BadRequest(f"unknown detector {text.strip()!r}; choose from {', '.join(DETECTORS)}")
    return text.strip()
