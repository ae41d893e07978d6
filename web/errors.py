"""Every error becomes a short message with the right status: JSON `{"error": ...}` under
/api/, an HTML page elsewhere. Tracebacks go to the server log, never to the user."""
from __future__ import annotations

import logging

from flask import current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .engine import EngineUnavailable
from .uploads import UploadTooLarge

log = logging.getLogger(__name__)


def register(app) -> None:
    app.register_error_handler(RequestEntityTooLarge, upload_too_large)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(EngineUnavailable, engine_unavailable)
    app.register_error_handler(Exception, unexpected_error)


# Headers an HTTP error carries that the client needs (which methods; which credentials).
KEPT_HEADERS = ("Allow", "WWW-Authenticate")


def error_response(status: int, message: str, headers=()):
    if request.path.startswith("/api/"):
        return jsonify(error=message), status, list(headers)
    return render_template("error.html", status=status, message=message), status, list(headers)


def upload_too_large(error: RequestEntityTooLarge):
    config = current_app.config
    within_size = request.content_length is not None and request.content_length <= config["MAX_CONTENT_LENGTH"]
    if within_size and not isinstance(error, UploadTooLarge):
        # The request is small enough: werkzeug's form limits (parts, field bytes) were hit.
        return error_response(400, f"form too large: at most {config['MAX_FORM_PARTS']} fields, each but "
                                   f"the photo at most {config['MAX_FORM_MEMORY_SIZE'] // 1000} KB; send "
                                   "the photo in 'image' and optionally 'k'")
    return error_response(413, f"upload too large: the limit is {config['MAX_UPLOAD_MB']:g} MB")


def http_error(error: HTTPException):
    headers = [(name, value) for name, value in error.get_headers() if name in KEPT_HEADERS]
    return error_response(error.code, error.description, headers)


def engine_unavailable(error: EngineUnavailable):
    return error_response(503, str(error))


def unexpected_error(error: Exception):
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal server error; the details are in the server log")
