"""`manage.py bb REPO BRANCH [--wait]`: ask a running Trainyard to build a branch.

A client of the HTTP API like any other, so it works from a second terminal against the
standalone server, or against a production server with a token.
Exit codes with --wait: 0 passed, 1 failed, 2 error (or the request was refused).
"""

import sys
import time
from urllib.parse import quote

from pipeline.client import USAGE, CliCommand, add_server_arguments, client_from, printable

EXIT_CODES = {"passed": 0, "failed": 1}
ACTIVE = {"queued", "running"}


class Command(CliCommand):
    help = "Build a branch on a running Trainyard (!bb)."

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("branch")
        parser.add_argument("--wait", action="store_true", help="follow the build to its end")
        add_server_arguments(parser)
        parser.add_argument("--poll", type=float, default=0.5,
                            help="seconds between status checks with --wait (default 0.5)")

    def handle(self, *args, **options):
        # 1 is "the build failed": anything that stops bb from getting a verdict is 2.
        client = client_from(options, error_code=USAGE)
        reply = client.request("POST", f"/api/repos/{quote(options['repository'], safe='')}/builds",
                               {"branch": options["branch"]})
        build = reply["build"]
        self.stdout.write(printable(reply["message"]))
        self.stdout.write(printable(f"{client.server}{build['url']}"))
        if not options["wait"]:
            return
        build = self._follow(client, build, options["poll"])
        self.stdout.write(printable(f"build #{build['id']} {build['status']}: {build['message']}"))
        if build.get("deploy_url"):
            self.stdout.write(printable(f"running at {build['deploy_url']}"))
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
                    self.stdout.write(printable(f"  {job['name']:<14} {job['status']}{detail}"))
            if build["status"] not in ACTIVE:
                return build
            time.sleep(poll)
            build = client.request("GET", f"/api/builds/{build['id']}")
