"""Load benchmark for the web server: N concurrent clients for a fixed time, loopback only.

Start the server first, then point this at it:

    search serve --index DIR --port 8000 &
    .venv/bin/python bench/bench_web.py --url http://127.0.0.1:8000 --clients 4 --seconds 10

Each client is a thread with one keep-alive connection that sends requests back to back:
`POST /api/search` with the photo (default), or `GET /api/health` to measure the server
without the model. Reports requests/s, p50/p99 latency and errors; any error (a non-200
answer or a broken connection) makes the exit status 1.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PHOTO = Path(__file__).resolve().parent.parent.parent / "shared/data/lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"


def multipart_body(photo: bytes, k: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode(), photo, b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def require_loopback(host: str) -> None:
    """The benchmark floods its target, so it only ever runs against this machine."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        sys.exit(f"cannot resolve {host}")
    if not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        sys.exit(f"{host} is not a loopback address; this benchmark only targets 127.0.0.1 / ::1")


def check_server(host: str, port: int) -> None:
    """Fail at once, rather than count thousands of refused connections as errors."""
    connection = http.client.HTTPConnection(host, port, timeout=120)   # the first call loads the engine
    try:
        connection.request("GET", "/api/health")
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as error:
        sys.exit(f"no server at {host}:{port} ({error}); start it with `search serve`")
    finally:
        connection.close()
    if response.status != 200:
        sys.exit(f"the server is not ready: HTTP {response.status} {body}")


class Client(threading.Thread):
    def __init__(self, host: str, port: int, request: tuple, deadline: float):
        super().__init__(daemon=True)
        self.host, self.port, self.request, self.deadline = host, port, request, deadline
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        method, path, body, headers = self.request
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while time.perf_counter() < self.deadline:
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.errors.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(type(error).__name__)
                connection.close()   # reconnect on the next request
                continue
            self.latencies.append(time.perf_counter() - started)
        connection.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to send requests")
    parser.add_argument("--endpoint", choices=["search", "health"], default="search")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="photo to search with")
    parser.add_argument("--k", type=int, default=10, help="matches per face")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        parser.error("use 1-256 clients and at most 600 seconds")

    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    require_loopback(host)
    if args.endpoint == "search":
        body, content_type = multipart_body(args.photo.read_bytes(), args.k)
        request = ("POST", "/api/search", body, {"Content-Type": content_type})
    else:
        request = ("GET", "/api/health", None, {})

    check_server(host, port)
    deadline = time.perf_counter() + args.seconds
    clients = [Client(host, port, request, deadline) for _ in range(args.clients)]
    started = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.perf_counter() - started

    latencies = sorted(latency for client in clients for latency in client.latencies)
    errors = [error for client in clients for error in client.errors]
    report = {
        "endpoint": request[1], "clients": args.clients, "seconds": round(elapsed, 2),
        "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "errors": len(errors), "error_kinds": sorted(set(errors)),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['endpoint']}: {args.clients} clients for {report['seconds']} s: "
              f"{report['requests']} requests, {report['requests_per_s']} requests/s, "
              f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, {report['errors']} errors"
              + (f" ({', '.join(report['error_kinds'])})" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
