"""A client for Trainyard's HTTP API: what `manage.py bb`, `pr`, `repo` and `node` use from
a second terminal (standalone) or against a production server with a token.

Everything the server sends is untrusted text (PR titles, spec keys, JUnit paths, health
messages come from other people's code): it is printed only through `printable`, so no
terminal escape reaches the user's terminal as anything but visible characters.

Exit codes: 0 done; 1 the server refused or the request failed; 2 a usage error (bad
arguments, no token). `bb --wait` keeps its own: 1 means the build failed, 2 any error.
"""

import json
import os
import sys
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

REFUSED = 1
USAGE = 2
# Control characters, format characters (bidi overrides such as U+202E) and line or
# paragraph separators: each can move the cursor, rewrite the screen or reorder text.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}
NO_TOKEN = ("no API token: run `manage.py token create USER --save`, set TRAINYARD_TOKEN "
            "or pass --token")


def printable(value):
    """`value` as text with every control character shown as an escape (`\\x1b`)."""
    text = "" if value is None else str(value)
    if all(unicodedata.category(ch) not in _UNPRINTABLE for ch in text):
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


def _escape(ch):
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def table(headers, rows):
    """Lines of an aligned table; every cell goes through `printable`."""
    cells = [[printable(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def add_server_arguments(parser):
    parser.add_argument("--server", default=os.environ.get(
        "TRAINYARD_URL", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"),
        help="Trainyard's URL (default: TRAINYARD_URL, else http://127.0.0.1:$PORT, port 8000)")
    parser.add_argument("--token", default=None,
                        help="API token (default: TRAINYARD_TOKEN, else var/api-token)")


def client_from(options, *, error_code=REFUSED):
    return Client(options["server"], options["token"] or default_token(), error_code=error_code)


class CliCommand(BaseCommand):
    """A Trainyard command line command. From a terminal an error is printed as
    the sentence alone (not `CommandError: …`) and the command exits with its code."""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except CommandError as exc:
            if not getattr(self, "_called_from_command_line", False) or options.get("traceback"):
                raise
            self.stderr.write(str(exc))
            sys.exit(exc.returncode)
        except BrokenPipeError:
            # `train status demo | head -1`: the reader has what it wanted.
            sys.stderr.close()
            sys.exit(0)


class Client:
    def __init__(self, server, token, timeout=30, *, error_code=REFUSED):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.error_code = error_code

    def request(self, method, path, body=None):
        if not self.server.startswith(("http://", "https://")):
            raise CommandError(f"--server must be an http(s) URL, not {printable(self.server)!r}",
                               returncode=USAGE)
        if not self.token and method != "GET":
            raise CommandError(NO_TOKEN, returncode=USAGE)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CommandError(printable(_error_message(exc)), returncode=self.error_code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(
                printable(f"cannot reach Trainyard at {self.server}: {exc}. Is `make run` up?"),
                returncode=self.error_code) from exc


def _error_message(exc):
    """The server's own sentence (its JSON `error`), else the HTTP status."""
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    if exc.code == 401 and message:
        return f"{message} (check --token, TRAINYARD_TOKEN or var/api-token)"
    return message or f"the server answered HTTP {exc.code} {exc.reason}"


def default_token():
    if os.environ.get("TRAINYARD_TOKEN"):
        return os.environ["TRAINYARD_TOKEN"]
    path = Path(settings.VAR_DIR) / "api-token"
    return path.read_text().strip() if path.exists() else ""


def confirm(question, *, assume_yes=False, stdin=None, stdout=None):
    """True if the person said yes. Without a terminal to ask on, only `assume_yes` (the
    command's --yes) says yes; anything else is a usage error, never a silent no."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if assume_yes:
        return True
    if not stdin.isatty():
        raise CommandError(f"{question} Nobody can answer without a terminal: pass --yes",
                           returncode=USAGE)
    stdout.write(f"{question} [y/N] ")
    stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")
