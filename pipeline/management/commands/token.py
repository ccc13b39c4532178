"""`manage.py token create USER [--name NAME] [--save]`: an API token for the command
line or a script. The key is printed once; only its hash is stored.

It runs against the database directly, not through the API: it is how the first token
comes to exist, on a server nobody can call yet. --save writes the key to var/api-token
(mode 0600), where `bb`, `pr`, `repo` and `node` look for one.

Exit codes: 0 done, 1 refused (no such user, or an inactive one), 2 usage.
"""

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from pipeline.client import CliCommand, printable
from pipeline.models import ApiToken


class Command(CliCommand):
    help = "Create an API token (the key is shown once)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        created = sub.add_parser("create", help="create a token for a user; prints the key once")
        created.add_argument("user", help="the user the token acts as (its permissions apply)")
        created.add_argument("--name", default="command line", help="what the token is for")
        created.add_argument("--save", action="store_true",
                             help="also write the key to var/api-token (mode 0600)")

    def handle(self, *args, **options):
        user = _user(options["user"])
        token, raw = ApiToken.issue(user, options["name"][:100])
        self.stdout.write(printable(f"API token {token.name!r} for {user.get_username()}: {raw}"))
        self.stdout.write("Shown once: only its hash is stored. Use it as --token, TRAINYARD_TOKEN "
                          "or Authorization: Bearer <key>.")
        if options["save"]:
            path = Path(settings.VAR_DIR) / "api-token"
            _write_private(path, raw + "\n")
            self.stdout.write(f"saved in {path}")


def _user(username):
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        names = list(User.objects.filter(is_active=True).order_by(User.USERNAME_FIELD)
                     .values_list(User.USERNAME_FIELD, flat=True)[:21])
        known = ("known: " + ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
                 if names else "there are no users yet (manage.py createsuperuser)")
        raise CommandError(printable(f"no user named {username!r}; {known}"), returncode=1)
    if not user.is_active:
        raise CommandError(printable(f"{username} is inactive: its tokens would be refused"),
                           returncode=1)
    return user


def _write_private(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # touch keeps the mode of a file that exists already
    path.write_text(text)
