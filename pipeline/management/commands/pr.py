"""`manage.py pr open REPO BRANCH [--title T]`, `pr close REPO NUMBER`, `pr list REPO`:
pull requests for the local git provider, through a running Trainyard's API."""

from urllib.parse import quote

from django.core.management.base import BaseCommand

from pipeline.client import add_server_arguments, client_from


class Command(BaseCommand):
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
            for pr in client.request("GET", f"/api/repos/{repo}/pulls")["pull_requests"]:
                self._show(pr)
            return
        self._show(pr)

    def _show(self, pr):
        verdict = "good to merge" if pr["good_to_merge"] else "not good to merge"
        self.stdout.write(f"#{pr['number']} {pr['state']:<6} {pr['branch']}  {verdict}  {pr['title']}")
