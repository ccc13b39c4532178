"""`manage.py bb REPO BRANCH [--wait]`: ask a running Trainyard to build a branch.

A client of the HTTP API like any other, so it works from a second terminal against the
standalone server, or against a production server with a token.
Exit codes with --wait: 0 passed, 1 failed, 2 error (or the request was refused).
"""

import sys
import time
from urllib.parse import quote

from django.core.management.base import BaseCommand

from pipeline.client import add_server_arguments, client_from

EXIT_CODES = {"passed": 0, "failed": 1}
ACTIVE = {"queued", "running"}


class Command(BaseCommand):
    help = "Build a branch on a running Trainyard (!bb)."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("branch")
        parser.add_argument("--wait", action="store_true", help="follow the build to its end")
        add_server_arguments(parser)
        parser.add_argument("--poll", type=float, default=0.5,
                            help="seconds between status checks with --wait (default 0.5)")

    def handle(self, *args, **options):
        client = client_from(options)
        reply = client.request("POST", f"/api/repos/{quote(options['repository'], safe='')}/builds",
                               {"branch": options["branch"]})
        build = reply["build"]
        self.stdout.write(reply["message"])
        self.stdout.write(f"{client.server}{build['url']}")
        if not options["wait"]:
            return
        build = self._follow(client, build, options["poll"])
        self.stdout.write(f"build #{build['id']} {build['status']}: {build['message']}")
        if build.get("deploy_url"):
            self.stdout.write(f"running at {build['deploy_url']}")
        code = EXIT_CODES.get(build["status"], 2)
        if code:
            sys.stdout.flush()
            sys.exit(code)

    def _follow(self, client, build, poll):
        seen = {}
        while True:
            for job in build["jobs"]:
                state = (job["status"], job["message"])
                if seen.get(job["name"]) != state:
                    seen[job["name"]] = state
                    detail = f"  {job['message']}" if job["message"] else ""
                    self.stdout.write(f"  {job['name']:<14} {job['status']}{detail}")
            if build["status"] not in ACTIVE:
                return build
            time.sleep(poll)
            build = client.request("GET", f"/api/builds/{build['id']}")

