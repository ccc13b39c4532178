"""`manage.py repo add NAME CLONE_URL [--default-branch B] [--spec-path P]`,
`repo list`, `repo remove NAME [--yes]`: repositories, through a running Trainyard's API.

Exit codes: 0 done, 1 refused or failed (the sentence says why), 2 usage.
"""

from urllib.parse import quote

from django.core.management.base import CommandError

from pipeline.client import CliCommand, add_server_arguments, client_from, confirm, printable, table


class Command(CliCommand):
    help = "Add, list or remove the repositories Trainyard builds."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        added = sub.add_parser("add", help="register a repository (git must be able to read it)")
        added.add_argument("name", help="a short name: letters, digits, '-' and '_'")
        added.add_argument("clone_url", help="a URL git can clone, or an absolute path")
        added.add_argument("--default-branch", default="master",
                           help="the branch master builds and trains follow (default master)")
        added.add_argument("--spec-path", default="trainyard.yml",
                           help="where the pipeline spec is in the repository (default trainyard.yml)")
        listed = sub.add_parser("list", help="the repositories and their reserved nodes")
        removed = sub.add_parser("remove", help="remove a repository and its build history")
        removed.add_argument("name")
        removed.add_argument("--yes", action="store_true", help="do not ask")
        for each in (added, listed, removed):
            add_server_arguments(each)

    def handle(self, *args, **options):
        client = client_from(options)
        getattr(self, f"_{options['action']}")(client, options)

    def _add(self, client, options):
        repo = client.request("POST", "/api/repos", {
            "name": options["name"], "clone_url": options["clone_url"],
            "default_branch": options["default_branch"], "spec_path": options["spec_path"]})
        self.stdout.write(printable(f"added repository {repo['name']} ({repo['clone_url']}, "
                                    f"default branch {repo['default_branch']})"))

    def _list(self, client, options):
        repos = client.request("GET", "/api/repos")["repositories"]
        if not repos:
            self.stdout.write("no repositories yet: manage.py repo add NAME CLONE_URL")
            return
        rows = [[r["name"], r["default_branch"], ", ".join(r["nodes"]) or "-", r["clone_url"]]
                for r in repos]
        for line in table(["NAME", "DEFAULT BRANCH", "RESERVED NODES", "CLONE URL"], rows):
            self.stdout.write(line)

    def _remove(self, client, options):
        name = quote(options["name"], safe="")
        client.request("GET", f"/api/repos/{name}")  # an unknown name fails before the question
        if not confirm(f"Remove repository {printable(options['name'])} with all its builds, pull "
                       "requests and events?", assume_yes=options["yes"]):
            raise CommandError("nothing removed", returncode=1)
        reply = client.request("DELETE", f"/api/repos/{name}")
        self.stdout.write(printable(reply["message"]))
