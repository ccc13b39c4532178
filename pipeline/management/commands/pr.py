"""`manage.py pr open REPO BRANCH [--title T]`, `pr close REPO NUMBER`,
`pr list REPO [--all]`, `pr lgtm REPO NUMBER [--as USER]`, `pr merge REPO BRANCH|NUMBER`:
pull requests for the local git provider, through a running
Trainyard's API. Exit codes: 0 done, 1 refused or failed, 2 usage."""

from urllib.parse import quote, unquote

from pipeline.client import (
    REFUSED,
    CliCommand,
    CommandError,
    add_server_arguments,
    client_from,
    printable,
    table,
)


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
        lgtm = sub.add_parser("lgtm", help="say a pull request looks good to you")
        lgtm.add_argument("repository")
        lgtm.add_argument("number", type=int)
        lgtm.add_argument("--as", dest="as_user", metavar="USER",
                          help="give it in USER's name (needs the act_for_others permission)")
        merged = sub.add_parser("merge", help="merge a good-to-merge pull request with its "
                                              "LGTMs into the default branch")
        merged.add_argument("repository")
        merged.add_argument("pull_request", metavar="BRANCH|NUMBER")
        for each in (opened, closed, listed, lgtm, merged):
            add_server_arguments(each)

    def handle(self, *args, **options):
        client = client_from(options)
        repo = quote(options["repository"], safe="")
        if options["action"] == "open":
            pr = client.request("POST", f"/api/repos/{repo}/pulls",
                                {"branch": options["branch"], "title": options["title"]})
        elif options["action"] == "lgtm":
            body = {"as": options["as_user"]} if options["as_user"] else {}
            pr = client.request("POST", f"/api/repos/{repo}/pulls/{options['number']}/lgtm", body)
            self.stdout.write(f"#{pr['number']} LGTM: {', '.join(pr['lgtms'])}; "
                              + ("; ".join(pr["merge_blockers"]) or "ready to merge"))
            return
        elif options["action"] == "merge":
            number = self._number(client, repo, options["pull_request"])
            pr = client.request("POST", f"/api/repos/{repo}/pulls/{number}/merge", {})
            build = pr["master_build"]
            self.stdout.write(f"#{pr['number']} merged as {pr['merge_sha']}"
                              + (f"; master build #{build['id']} {build['status']}" if build
                                 else "; its master build could not be queued"))
            return
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
    def _number(client, repo, wanted):
        """A pull request number, or the open pull request of a branch name."""
        if wanted.isdigit():
            return int(wanted)
        for pr in client.request("GET", f"/api/repos/{repo}/pulls?state=open")["pull_requests"]:
            if pr["branch"] == wanted:
                return pr["number"]
        raise CommandError(f"no open pull request for {printable(wanted)} in "
                           f"{printable(unquote(repo))}", returncode=REFUSED)

    @staticmethod
    def _row(pr):
        verdict = "good to merge" if pr["good_to_merge"] else "not good to merge"
        return [f"#{pr['number']}", pr["state"], pr["branch"], verdict, pr["title"]]
