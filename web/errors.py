"""Every error becomes a short message with the right status: JSON `{"error": ...}` under
/api/, an HTML page elsewhere. Tracebacks go to the server log, never to the user."""
from __future__ import annotations

import logging

from flask import current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .engine import EngineUnavailable

log = logging.getLogger(__name__)


def register(app) -> None:
    app.register_error_handler(RequestEntityTooLarge, upload_too_large)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(EngineUnavailable, engine_unavailable)
    app.register_error_handler(Exception, unexpected_error)


def error_response(status: int, message: str):
    if request.path.startswith("/api/"):
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def upload_too_large(error: RequestEntityTooLarge):
    limit_mb = current_app.config["MAX_UPLOAD_MB"]
    return error_response(413, f"upload too large: the limit is {limit_mb:g} MB")


def http_error(error: HTTPException):
    return error_response(error.code, error.description)


def engine_unavailable(error: EngineUnavailable):
    return error_response(503, str(error))


def unexpected_error(error: Exception):
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal server error; the details are in the server log")
