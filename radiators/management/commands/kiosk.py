"""`manage.py kiosk issue REPO --name NAME` / `kiosk revoke ID` / `kiosk list`: read-only
links for wall screens. REPO "-" (or --all) is the wall of all repositories.

The link (with its token) is printed once: only the token's hash is stored. Revoking a
token closes the screens that use it. Exit codes: 0 done, 1 refused (no such
repository or token), 2 usage.
"""

from django.core.management.base import CommandError

from pipeline.client import CliCommand, printable
from pipeline.models import Repository
from radiators import kiosk
from radiators.models import KioskToken


class Command(CliCommand):
    help = "Issue, revoke and list kiosk tokens (read-only wall links for screens)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        issued = sub.add_parser("issue", help="a new kiosk link for a wall; printed once")
        issued.add_argument("repository", help="the repository whose wall it shows ('-': all)")
        issued.add_argument("--name", required=True, help="which screen, e.g. 'office east wall'")
        issued.add_argument("--server", default=None,
                            help="the base URL to print the link with (default: TRAINYARD "
                                 "PUBLIC_URL)")
        revoked = sub.add_parser("revoke", help="revoke a token; its screens close")
        revoked.add_argument("id", type=int)
        sub.add_parser("list", help="every kiosk token, newest first")

    def handle(self, *args, **options):
        getattr(self, f"_{options['action']}")(options)

    def _issue(self, options):
        from django.conf import settings

        repository = None
        if options["repository"] != "-":
            repository = Repository.objects.filter(name=options["repository"]).first()
            if repository is None:
                raise CommandError(printable(f"no repository named {options['repository']!r}"),
                                   returncode=1)
        token, raw = kiosk.issue(repository, options["name"])
        base = (options["server"] or settings.TRAINYARD["PUBLIC_URL"]).rstrip("/")
        wall = repository.name if repository else "all repositories"
        self.stdout.write(printable(f"kiosk token {token.pk} {token.name!r} for the wall of {wall}:"))
        self.stdout.write(f"{base}{kiosk.wall_path(raw)}")
        self.stdout.write("Shown once: only its hash is stored. Revoke with "
                          f"`manage.py kiosk revoke {token.pk}`.")

    def _revoke(self, options):
        token = KioskToken.objects.filter(pk=options["id"]).first()
        if token is None:
            raise CommandError(f"no kiosk token {options['id']}", returncode=1)
        if kiosk.revoke(token):
            self.stdout.write(printable(f"revoked kiosk token {token.pk} {token.name!r}; its "
                                        "screens close"))
        else:
            self.stdout.write(printable(f"kiosk token {token.pk} {token.name!r} was already "
                                        "revoked"))

    def _list(self, options):
        tokens = KioskToken.objects.select_related("repository")
        if not tokens:
            self.stdout.write("no kiosk tokens (manage.py kiosk issue REPO --name NAME)")
        for token in tokens:
            wall = token.repository.name if token.repository_id else "(all)"
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "live"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            self.stdout.write(printable(f"{token.pk:>4}  {wall:<20} {token.prefix}…  "
                                        f"{token.name!r}  {state}, last used {used}"))
