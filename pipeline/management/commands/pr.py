"""`manage.py pr open REPO BRANCH [--title T]`, `pr close REPO NUMBER`,
`pr list REPO [--all]`: pull requests for the local git provider, through a running
Trainyard's API. Exit codes: 0 done, 1 refused or failed, 2 usage."""

from urllib.parse import quote

from pipeline.client import CliCommand, add_server_arguments, client_from, printable, table


class Command(CliCommand):
    help = "Open, close or list pull requests on a running Trainyard."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        opened = sub.add_parser("open", help="open a pull request for a branch")
        opened.add_argument("repository")
        opened.add_argument("branch")
        opened.add_argument("--title", default="")
        closed = sub.add_parser("close", help="close a pull request (frees its branch node)")
        closed.add_argument("repository")
        closed.add_argument("number", type=int)
        listed = sub.add_parser("list", help="open pull requests and whether they are good to merge")
        listed.add_argument("repository")
        listed.add_argument("--all", action="store_true",
                            help="merged and closed ones too (most recent first)")
        for each in (opened, closed, listed):
            add_server_arguments(each)

    def handle(self, *args, **options):
        client = client_from(options)
        repo = quote(options["repository"], safe="")
        if options["action"] == "open":
            pr = client.request("POST", f"/api/repos/{repo}/pulls",
                                {"branch": options["branch"], "title": options["title"]})
        elif options["action"] == "close":
            pr = client.request("POST", f"/api/repos/{repo}/pulls/{options['number']}/close", {})
        else:
            state = "all" if options["all"] else "open"
            pulls = client.request("GET", f"/api/repos/{repo}/pulls?state={state}")["pull_requests"]
            if not pulls:
                self.stdout.write(f"no {'' if options['all'] else 'open '}pull requests in "
                                  f"{printable(options['repository'])}")
                return
            for line in table(["#", "STATE", "BRANCH", "VERDICT", "TITLE"], map(self._row, pulls)):
                self.stdout.write(line)
            return
        self.stdout.write("  ".join(printable(cell) for cell in self._row(pr)))

    @staticmethod
    def _row(pr):
        verdict = "good to merge" if pr["good_to_merge"] else "not good to merge"
        return [f"#{pr['number']}", pr["state"], pr["branch"], verdict, pr["title"]]
