"""A client for Trainyard's HTTP API: what `manage.py bb` and `manage.py pr` use from a
second terminal (standalone) or against a production server with a token."""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError


def add_server_arguments(parser):
    parser.add_argument("--server", default=os.environ.get(
        "TRAINYARD_URL", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"))
    parser.add_argument("--token", default=None,
                        help="API token (default: TRAINYARD_TOKEN or var/api-token)")


def client_from(options):
    return Client(options["server"], options["token"] or default_token())


class Client:
    def __init__(self, server, token, timeout=30):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        if not self.server.startswith(("http://", "https://")):
            raise CommandError(f"--server must be an http(s) URL, not {self.server!r}", returncode=2)
        req = urllib.request.Request(self.server + path, data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise CommandError(f"{message} (HTTP {exc.code})", returncode=2) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(
                f"cannot reach Trainyard at {self.server}: {exc}. Is `make run` up?",
                returncode=2) from exc


def default_token():
    if os.environ.get("TRAINYARD_TOKEN"):
        return os.environ["TRAINYARD_TOKEN"]
    path = Path(settings.VAR_DIR) / "api-token"
    return path.read_text().strip() if path.exists() else ""
