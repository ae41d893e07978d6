"""facesearch's web page and JSON API: upload a photo, see the gallery faces that match.

`create_app(config)` is a Flask application factory. Settings come from the environment
and can be overridden by the `config` mapping (Flask's upper-case keys):

    INDEX          index folder (FACESEARCH_INDEX; default: the indexer's default)
    MODEL          model name or checkpoint path (FACESEARCH_MODEL; default: the index's own)
    DETECTOR       the default face detector of searches (FACESEARCH_DETECTOR: blazeface, hog,
                   dog, none or auto; default: the one the index was built with); a request's
                   `detector` field overrides it
    MAX_UPLOAD_MB  largest accepted upload in megabytes (FACESEARCH_MAX_UPLOAD_MB; default 10)
    SECRET_KEY     Flask's secret key (FACESEARCH_SECRET_KEY; default: random per process)
    ALLOWED_HOSTS  host names the server answers to, others get 400 (FACESEARCH_ALLOWED_HOSTS,
                   comma-separated, '*' for any; default: BIND_HOST and localhost)
    API_KEY        when set, requests need `Authorization: Bearer KEY` (FACESEARCH_API_KEY)
    BIND_HOST      the address `search serve` listens on (set by serve)
    DEFAULT_K      matches per face when the request does not say (default 10)
    MAX_K          largest k a request may ask for (default 50)

The search engine is created lazily on the first request that needs it, once per process,
so a server without an index starts and answers 503 until one is built.
"""
from __future__ import annotations

import os
import secrets

from flask import Flask

from .security import allowed_hosts, parse_hosts

# Multipart framing (boundaries, part headers, the k field) on top of the file itself.
MULTIPART_ALLOWANCE = 64 * 1024
# A search form has two fields (image, k); werkzeug's default allows 1,000 parts.
MAX_FORM_PARTS = 20


def settings_from_env() -> dict:
    return {
        "INDEX": os.environ.get("FACESEARCH_INDEX") or None,
        "MODEL": os.environ.get("FACESEARCH_MODEL") or None,
        "DETECTOR": os.environ.get("FACESEARCH_DETECTOR") or None,
        "MAX_UPLOAD_MB": megabytes(os.environ.get("FACESEARCH_MAX_UPLOAD_MB", "10")),
        "SECRET_KEY": os.environ.get("FACESEARCH_SECRET_KEY") or secrets.token_hex(32),
        "ALLOWED_HOSTS": parse_hosts(os.environ.get("FACESEARCH_ALLOWED_HOSTS")),
        "API_KEY": os.environ.get("FACESEARCH_API_KEY") or None,
        "BIND_HOST": None,
        "DEFAULT_K": 10,
        "MAX_K": 50,
    }


def megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"FACESEARCH_MAX_UPLOAD_MB must be a positive number of megabytes, not {text!r}")
    return value


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(settings_from_env())
    if config:
        app.config.from_mapping(config)
    max_upload_bytes = int(float(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024)
    app.config["MAX_UPLOAD_BYTES"] = max_upload_bytes
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes + MULTIPART_ALLOWANCE
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["ALLOWED_HOSTS"] = allowed_hosts(app.config["ALLOWED_HOSTS"], app.config["BIND_HOST"])
    # No automatic OPTIONS answers (200, empty): the API serves no cross-origin callers, so
    # OPTIONS gets the JSON 405 of any other method a route does not take.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    from . import accesslog, api, errors, individuals, pages, security
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(individuals.blueprint)
    errors.register(app)
    security.register(app)
    accesslog.register(app)
    return app
