"""`manage.py bb REPO BRANCH [--wait]`: ask a running Trainyard to build a branch.

A client of the HTTP API like any other, so it works from a second terminal against the
standalone server, or against a production server with a token.
Exit codes with --wait: 0 passed, 1 failed, 2 error (or the request was refused).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

EXIT_CODES = {"passed": 0, "failed": 1}
ACTIVE = {"queued", "running"}


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


class Command(BaseCommand):
    help = "Build a branch on a running Trainyard (!bb)."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("branch")
        parser.add_argument("--wait", action="store_true", help="follow the build to its end")
        parser.add_argument("--server", default=os.environ.get(
            "TRAINYARD_URL", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"))
        parser.add_argument("--token", default=None, help="API token (default: TRAINYARD_TOKEN"
                            " or var/api-token)")
        parser.add_argument("--poll", type=float, default=0.5, help=argparse_hidden())

    def handle(self, *args, **options):
        client = Client(options["server"], options["token"] or default_token())
        reply = client.request("POST", f"/api/repos/{quote(options['repository'], safe='')}/builds",
                               {"branch": options["branch"]})
        build = reply["build"]
        self.stdout.write(reply["message"])
        self.stdout.write(f"{client.server}{build['url']}")
        if not options["wait"]:
            return
        build = self._follow(client, build, options["poll"])
        self.stdout.write(f"build #{build['id']} {build['status']}: {build['message']}")
        code = EXIT_CODES.get(build["status"], 2)
        if code:
            sys.stdout.flush()
            sys.exit(code)

    def _follow(self, client, build, poll):
        seen = {}
        while True:
            for job in build["jobs"]:
                if seen.get(job["name"]) != job["status"]:
                    seen[job["name"]] = job["status"]
                    detail = f"  {job['message']}" if job["status"] not in ACTIVE else ""
                    self.stdout.write(f"  {job['name']:<14} {job['status']}{detail}")
            if build["status"] not in ACTIVE:
                return build
            time.sleep(poll)
            build = client.request("GET", f"/api/builds/{build['id']}")


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS
