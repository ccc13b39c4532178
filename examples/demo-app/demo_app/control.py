"""Behind bin/drain, bin/drain-check and bin/undrain: the drain flag the server's /health
reads, and the check that the running server has seen it and finished its requests.

Starting and stopping is Trainyard's job (`deploy.run` in trainyard.yml): the server
runs in the foreground, `python -m demo_app.server`.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.error import HTTPError, URLError

from demo_app import config as app_config
from demo_app.config import Config

# Ask the server directly, never through a proxy configured in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load_config() -> Config:
    try:
        return app_config.load()
    except ValueError as error:
        raise SystemExit(f"demo-app: {error}") from None


def drain() -> int:
    config = load_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.drain_flag.touch()
    print(f"demo-app: draining ({config.drain_flag})")
    return 0


def undrain() -> int:
    config = load_config()
    config.drain_flag.unlink(missing_ok=True)
    print("demo-app: taking traffic again")
    return 0


def health_url(config: Config) -> str:
    # A server bound to every address answers on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}/health"


def read_health(url: str) -> tuple[int, dict]:
    try:
        with _DIRECT.open(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def drain_check() -> int:
    """0 once the running server reports draining with no other request in flight (or no
    server runs: nothing to drain); 1, saying why, while it is not there yet."""
    url = health_url(load_config())
    try:
        status, body = read_health(url)
    except URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            print(f"demo-app: nothing listens at {url}: nothing to drain")
            return 0
        print(f"demo-app: {url} did not answer: {error.reason}")
        return 1
    except (OSError, ValueError) as error:
        print(f"demo-app: {url} did not answer with health JSON: {error}")
        return 1
    if body.get("status") != "draining":
        print(f"demo-app: not draining yet: {url} answers {status} {body.get('status')!r}")
        return 1
    in_flight = body.get("in_flight")
    if in_flight != 0:
        print(f"demo-app: draining, {in_flight} request(s) still in flight")
        return 1
    print("demo-app: drained, no request in flight")
    return 0
