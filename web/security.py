"""Who may talk to the server, and the headers every answer carries.

- Trusted hosts: a request whose Host header is not in ALLOWED_HOSTS is answered 400, so a
  web page elsewhere cannot reach a server on the user's machine by DNS rebinding (its
  requests carry the attacker's host name). Default: the bind address and localhost.
- API key: with API_KEY set, everything but the page shell and its static files needs
  `Authorization: Bearer KEY` (the page asks for the key once and sends it).
- Headers: no sniffing, no framing, a Content-Security-Policy that allows only the page's
  own scripts, styles and images (and blob: for the photo shown back).
"""
from __future__ import annotations

import hmac
import ipaddress
import re

from flask import current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import BadRequest, Unauthorized

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
HOST_HEADER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
# The page shells, which hold no gallery data (their scripts fetch it with the key).
OPEN_ENDPOINTS = ("pages.index", "pages.people", "pages.individual", "static")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def parse_hosts(text: str | None) -> list[str] | None:
    """FACESEARCH_ALLOWED_HOSTS: comma-separated host names or addresses ('.example.org'
    takes its subdomains; '*' takes any host). None when unset."""
    if text is None or not text.strip():
        return None
    return [host.strip().lower() for host in text.split(",") if host.strip()]


def allowed_hosts(allowed: list[str] | None, bind_host: str | None) -> list[str]:
    """The allowed hosts, else the bind address and localhost."""
    if allowed is not None:
        return allowed
    return sorted({*LOCAL_HOSTS, *([bind_host.lower()] if bind_host else [])})


def host_name(header: str) -> str | None:
    """The name in a Host header ('Example.org:8000' -> 'example.org', '[::1]' -> '::1'), or
    None when it is not a host name, IPv4 or bracketed IPv6 address with an optional port."""
    match = HOST_HEADER.fullmatch(header)
    if match is None:
        return None
    name = match.group(1).lower().rstrip(".")
    return name[1:-1] if name.startswith("[") else name


def host_allowed(header: str, allowed: list[str]) -> bool:
    name = host_name(header)
    if name is None:
        return False
    return "*" in allowed or any(name == host or (host.startswith(".") and name.endswith(host))
                                 for host in allowed)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app) -> None:
    app.before_request(require_trusted_host)
    app.before_request(require_api_key)
    app.after_request(add_security_headers)


def require_trusted_host():
    header = request.headers.get("Host", "")
    if not host_allowed(header, current_app.config["ALLOWED_HOSTS"]):
        raise BadRequest(f"host {header[:100]!r} is not trusted by this server: its operator lists the "
                         "names it answers to in FACESEARCH_ALLOWED_HOSTS")
    return None


def require_api_key():
    key = current_app.config["API_KEY"]
    if not key or request.endpoint in OPEN_ENDPOINTS:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise Unauthorized("this server needs its API key: send the header 'Authorization: Bearer KEY'",
                           www_authenticate=WWWAuthenticate("bearer"))
    return None


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
