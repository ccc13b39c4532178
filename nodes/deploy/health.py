"""Health, checked from the controller over HTTP (urllib)."""

import time
import urllib.error
import urllib.parse
import urllib.request

from .base import HEALTH_TIMEOUT, StepFailed

HEALTH_INTERVAL = 0.5
HEALTH_REQUEST_TIMEOUT = 5.0
# Health URLs point at nodes, never through a proxy from the controller's environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_url(template, host, port):
    """Fill `{host}` and `{port}` (plain replacement: no format-string tricks)."""
    if "{port}" in template and port is None:
        raise StepFailed(f"health URL {template} needs the node's port")
    url = template.replace("{host}", str(host)).replace("{port}", str(port))
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise StepFailed(f"health URL must be http(s): {url}")
    return url


def check_health(url, *, timeout=HEALTH_TIMEOUT, interval=HEALTH_INTERVAL, cancel=None, log=None,
                 on_tick=None):
    """GET `url` until it answers 2xx or `timeout` passes -> (ok, detail)."""
    log = log or (lambda line: None)
    deadline = time.monotonic() + timeout
    log(f"health: GET {url} (up to {timeout}s)")
    attempts, last = 0, "no attempt"
    while True:
        attempts += 1
        remaining = max(0.1, deadline - time.monotonic())
        try:
            with _DIRECT.open(url, timeout=min(HEALTH_REQUEST_TIMEOUT, remaining)) as response:
                log(f"health: {response.status} after {attempts} attempt(s)")
                return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            current = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, reset, bad URL
            current = str(getattr(exc, "reason", exc))
        if current != last:
            log(f"health: {current}")
            last = current
        if time.monotonic() + interval > deadline or (cancel is not None and cancel.is_set()):
            return False, f"{last} (after {attempts} attempt(s) in {timeout}s)"
        if on_tick is not None:
            on_tick()
        time.sleep(interval)
