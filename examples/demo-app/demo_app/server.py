"""The HTTP server: `python -m demo_app.server`, configured by demo_app.config.

It runs in the foreground until SIGTERM: Trainyard's `deploy.run` starts it, keeps it
running and stops it before the next release."""

from __future__ import annotations

import html
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from demo_app import config as app_config
from demo_app.config import Config
from demo_app.greeting import greet


@dataclass(frozen=True)
class Request:
    query: dict[str, list[str]]
    # Requests the server is busy with besides this one: what a drain waits for.
    others_in_flight: int = 0


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def json_response(status: int, payload: dict) -> Response:
    return Response(status, "application/json", json.dumps(payload).encode())


def index(config: Config, request: Request) -> Response:
    page = (
        "<!doctype html>\n<html><head><title>Demo app</title></head><body>\n"
        f"<h1>{html.escape(greet())}</h1>\n"
        f"<p>Revision <code>{html.escape(config.sha)}</code></p>\n"
        "</body></html>\n"
    )
    return Response(200, "text/html; charset=utf-8", page.encode())


def health(config: Config, request: Request) -> Response:
    # 503 while draining so a load balancer (or Trainyard) stops sending traffic here;
    # in_flight says when the requests already taken are done (bin/drain-check).
    if config.is_draining():
        return json_response(503, {"status": "draining", "sha": config.sha,
                                   "in_flight": request.others_in_flight})
    # The SHA lets a deploy tell this release from an older one still answering.
    return json_response(200, {"status": "ok", "sha": config.sha})


def version(config: Config, request: Request) -> Response:
    return Response(200, "text/plain; charset=utf-8", config.sha.encode())


def hello(config: Config, request: Request) -> Response:
    name = request.query.get("name", [""])[0]
    return json_response(200, {"greeting": greet(name)})


ROUTES: dict[str, Callable[[Config, Request], Response]] = {
    "/": index,
    "/health": health,
    "/version": version,
    "/hello": hello,
}


def handle_request(config: Config, method: str, target: str, others_in_flight: int = 0) -> Response:
    """Pure request handling: method and request target in, Response out."""
    url = urlsplit(target)
    route = ROUTES.get(url.path)
    if route is None:
        return json_response(404, {"error": "not found"})
    if method not in ("GET", "HEAD"):
        return json_response(405, {"error": "method not allowed"})
    return route(config, Request(parse_qs(url.query), others_in_flight))


class DemoHandler(BaseHTTPRequestHandler):
    server_version = "demo-app/1.0"
    server: DemoServer

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_POST(self) -> None:
        self._respond(send_body=True)

    def _respond(self, send_body: bool) -> None:
        response = handle_request(self.server.config, self.command, self.path,
                                  self.server.in_flight - 1)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: Config, address: tuple[str, int] | None = None) -> None:
        self.config = config
        self._open: set[socket.socket] = set()  # connections accepted and not yet closed
        self._open_lock = threading.Lock()
        address = address or (config.host, config.port)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DemoHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def in_flight(self) -> int:
        with self._open_lock:
            return len(self._open)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        # Counted here, in the accepting thread, so a connection accepted before another is
        # always counted by the time the other is answered.
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        # Uncounted before the socket closes: a client that saw the end of its answer
        # finds it gone from the count.
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds serve_forever() so the socket is closed cleanly.
    sys.exit(0)


def main() -> int:
    config = app_config.load()
    server = DemoServer(config)
    # A fresh instance takes traffic, even if the one it replaces was drained.
    config.drain_flag.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    print(f"demo-app {config.sha} listening on {config.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
