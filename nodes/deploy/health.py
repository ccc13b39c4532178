"""Health, checked from the controller over HTTP (urllib)."""

import time
import urllib.error
import urllib.parse
import urllib.request

from .app import printable
from .base import HEALTH_TIMEOUT, StepFailed

HEALTH_INTERVAL = 0.5
FIRST_INTERVAL = 0.05
HEALTH_REQUEST_TIMEOUT = 5.0
MAX_BODY = 64 * 1024  # of a health answer, read to find `expect` in it
BODY_SHOWN = 200
# Health URLs point at nodes, never through a proxy from the controller's environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def expected_text(template, sha):
    """`expect` with `{sha}` filled: the release's full SHA."""
    return template.replace("{sha}", sha) if template else ""


def health_url(template, host, port):
    """Fill `{host}` and `{port}` (plain replacement: no format-string tricks)."""
    if "{port}" in template and port is None:
        raise StepFailed(f"health URL {template} needs the node's port")
    url = template.replace("{host}", str(host)).replace("{port}", str(port))
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise StepFailed(f"health URL must be http(s): {url}")
    return url


def check_health(url, *, timeout=HEALTH_TIMEOUT, interval=HEALTH_INTERVAL, cancel=None, log=None,
                 on_tick=None, expect="", give_up=None):
    """GET `url` until it answers 2xx (with `expect` in its body, if given) or `timeout`
    passes -> (ok, detail). Attempts are 0.05 s apart at first, doubling up to
    `interval`. `give_up`, called between attempts, may end the wait early by returning
    the reason (the app it waits for exited)."""
    log = log or (lambda line: None)
    deadline = time.monotonic() + timeout
    log(f"health: GET {url} (up to {timeout}s)" + (f", expecting {expect!r} in the body" if expect else ""))
    attempts, last = 0, "no attempt"
    while True:
        attempts += 1
        remaining = max(0.1, deadline - time.monotonic())
        try:
            with _DIRECT.open(url, timeout=min(HEALTH_REQUEST_TIMEOUT, remaining)) as response:
                current = _judge(response, expect)
                if current is None:
                    log(f"health: {response.status} after {attempts} attempt(s)"
                        + (f", the body holds {expect!r}" if expect else ""))
                    return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            current = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, reset, bad URL
            current = str(getattr(exc, "reason", exc))
        if current != last:
            log(f"health: {current}")
            last = current
        reason = give_up() if give_up is not None else None
        if reason:
            return False, f"{last} (after {attempts} attempt(s)); {reason}"
        # A fresh app usually answers within a few tenths of a second: ask again soon at
        # first, then every `interval`.
        pause = min(interval, FIRST_INTERVAL * 2 ** (attempts - 1))
        if time.monotonic() + pause > deadline or (cancel is not None and cancel.is_set()):
            return False, f"{last} (after {attempts} attempt(s) in {timeout}s)"
        if on_tick is not None:
            on_tick()
        time.sleep(pause)


def _judge(response, expect):
    """None if the answer is good, else what is wrong with it."""
    if not expect:
        return None
    body = response.read(MAX_BODY).decode("utf-8", "replace")
    if expect in body:
        return None
    shown = " ".join(body.split())
    shown = shown[:BODY_SHOWN] + ("…" if len(shown) > BODY_SHOWN else "")
    return f"HTTP {response.status}, but the body does not hold {expect!r}: {printable(shown)!r}"
