"""One access log line per request, as `search serve` prints them to stderr:

    127.0.0.1 GET "/thumb/17" 200 5312 B 2.4 ms

(client address, method, path, status, body bytes or '-' when streamed, time in the app).
The path is JSON-quoted, so a request cannot write control characters into the log; query
strings and headers (the API key) are never logged.
"""
from __future__ import annotations

import json
import logging
import time

from flask import g, request

log = logging.getLogger("facesearch.access")


def register(app) -> None:
    # First of the before_request functions, so requests the others refuse are timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, start_clock)
    app.after_request(record)


def start_clock():
    g.access_started = time.perf_counter()


def record(response):
    started = g.get("access_started")
    elapsed = f"{(time.perf_counter() - started) * 1000:.1f} ms" if started is not None else "- ms"
    size = "-" if response.content_length is None else f"{response.content_length} B"
    log.info("%s %s %s %d %s %s", request.remote_addr or "-", request.method, json.dumps(request.path),
             response.status_code, size, elapsed)
    return response
