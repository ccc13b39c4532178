"""`manage.py node add|list|enable|disable|drain|undrain|pin-host-key|remove`: the node
pool, through a running Trainyard's API.

    node add NAME --base-path PATH --app-port PORT [--transport ssh|local] [--host HOST]
             [--ssh-port 22] [--user deploy] [--environment branch] [--repository REPO]
             [--env NAME=VALUE ...]
    node list
    node enable|disable|drain|undrain NAME
    node pin-host-key NAME [--fingerprint SHA256:…]
    node remove NAME [--yes]

pin-host-key shows the key the node offers and its SHA256 fingerprint. With
--fingerprint (what `ssh-keygen -lf` prints on the node) the server pins the key only if
the fingerprints match. Without it the command asks on a terminal; without a terminal
it pins nothing and exits 2: a "yes" nobody compared is no check at all, so there is no
--yes for pinning.

Exit codes: 0 done, 1 refused or failed (the sentence says why), 2 usage.
"""

import sys
from urllib.parse import quote

from django.core.management.base import CommandError

from pipeline.client import (
    USAGE,
    CliCommand,
    add_server_arguments,
    client_from,
    confirm,
    printable,
    table,
)

FLAG_ACTIONS = {
    "enable": "put it back in use (health-checked at once)",
    "disable": "take it out of use; its app keeps running",
    "drain": "no new build gets it; the one on it finishes",
    "undrain": "let builds have it again",
}
COMPARE = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"


class Command(CliCommand):
    help = "Add, list, enable, disable, drain, pin or remove deploy nodes."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        added = sub.add_parser("add", help="register a node (health-checked at once)")
        added.add_argument("name")
        added.add_argument("--base-path", required=True,
                           help="absolute folder on the node for releases/, current and shared/; "
                                "every node on a host needs its own")
        added.add_argument("--app-port", type=int, required=True,
                           help="the port the app listens on; every node on a host needs its own")
        added.add_argument("--transport", choices=["ssh", "local"], default="ssh",
                           help="ssh (default): a server Trainyard logs in to; local: a folder "
                                "on the worker host itself")
        added.add_argument("--host", default="127.0.0.1",
                           help="where SSH connects and the app answers (default 127.0.0.1)")
        added.add_argument("--ssh-port", type=int, default=22)
        added.add_argument("--user", default=None, help="SSH user (default deploy)")
        added.add_argument("--environment", default="branch",
                           help="branch (default), staging, preview, preprod or production")
        added.add_argument("--repository", default=None,
                           help="reserve the node for this repository (default: the shared pool)")
        added.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                           help="environment for install and start on this node (repeatable; "
                                "never secrets)")
        parsers = [added, sub.add_parser("list", help="the pool: state, health and what each serves")]
        for action, what in FLAG_ACTIONS.items():
            flagged = sub.add_parser(action, help=what)
            flagged.add_argument("name")
            parsers.append(flagged)
        pinned = sub.add_parser("pin-host-key", help="show the node's SSH host key and pin it")
        pinned.add_argument("name")
        pinned.add_argument("--fingerprint", default=None,
                            help=f"SHA256:… as `{COMPARE}` prints it on the node; pins only on a match")
        removed = sub.add_parser("remove", help="remove a node and its deploy history")
        removed.add_argument("name")
        removed.add_argument("--yes", action="store_true", help="do not ask")
        for each in [*parsers, pinned, removed]:
            add_server_arguments(each)

    def handle(self, *args, **options):
        client = client_from(options)
        action = options["action"]
        if action in FLAG_ACTIONS:
            return self._flag(client, action, options["name"])
        getattr(self, f"_{action.replace('-', '_')}")(client, options)

    def _add(self, client, options):
        body = {key: options[key] for key in ("name", "base_path", "app_port", "transport", "host",
                                              "ssh_port", "environment", "repository")}
        body["env"] = _env_pairs(options["env"])
        if options["user"] is not None:
            body["user"] = options["user"]
        node = client.request("POST", "/api/nodes", body)
        pool = f"reserved for {node['repository']}" if node["repository"] else "shared pool"
        self.stdout.write(printable(f"added node {node['name']} ({node['transport']}, {pool}): "
                                    f"{node['base_path']}, app at {node['url']}"))
        self._health(node)
        if node["transport"] == "ssh" and not node["host_key_fingerprint"]:
            self.stdout.write(printable(f"next: manage.py node pin-host-key {node['name']}"))

    def _list(self, client, options):
        nodes = client.request("GET", "/api/nodes")["nodes"]
        if not nodes:
            self.stdout.write("no nodes yet: manage.py node add NAME --base-path PATH --app-port PORT")
            return
        for line in table(["NAME", "POOL", "ENV", "ADDRESS", "APP", "STATE", "HEALTH", "BRANCH",
                           "SHA", "HEALTH MESSAGE"], [_row(node) for node in nodes]):
            self.stdout.write(line)

    def _flag(self, client, action, name):
        reply = client.request("POST", f"/api/nodes/{quote(name, safe='')}/{action}", {})
        self.stdout.write(printable(reply["message"]))
        if action == "enable":
            self._health(reply["node"])

    def _pin_host_key(self, client, options):
        path = f"/api/nodes/{quote(options['name'], safe='')}/host-key"
        offer = client.request("GET", path)
        self.stdout.write(printable(f"{offer['node']} offers: {offer['key']}"))
        self.stdout.write(printable(f"fingerprint:  {offer['fingerprint']}"))
        self.stdout.write(printable(f"pinned now:   {offer['pinned_fingerprint'] or 'nothing'}"))
        fingerprint = options["fingerprint"]
        if fingerprint is None:
            if not sys.stdin.isatty():
                raise CommandError(
                    "not pinned: without a terminal nobody can compare the fingerprint. Run "
                    f"`{COMPARE}` on the node and pass what it prints: --fingerprint SHA256:…",
                    returncode=USAGE)
            self.stdout.write(f"Compare it with `{COMPARE}` run on the node itself.")
            if not confirm("Pin this key?"):
                raise CommandError("not pinned", returncode=1)
            fingerprint = offer["fingerprint"]  # what the person just confirmed
        reply = client.request("POST", path, {"token": offer["token"], "fingerprint": fingerprint})
        self.stdout.write(printable(reply["message"]))
        self._health(reply["node"], label="health")

    def _remove(self, client, options):
        path = f"/api/nodes/{quote(options['name'], safe='')}"
        client.request("GET", path)  # an unknown name fails before the question
        if not confirm(f"Remove node {printable(options['name'])} and its deploy history?",
                       assume_yes=options["yes"]):
            raise CommandError("nothing removed", returncode=1)
        self.stdout.write(printable(client.request("DELETE", path)["message"]))

    def _health(self, node, label="health"):
        detail = f" ({node['health_message']})" if node["health_message"] else ""
        self.stdout.write(printable(f"{label}: {node['health']}{detail}"))


def _env_pairs(pairs):
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--env takes NAME=VALUE, not {printable(pair)!r}", returncode=USAGE)
        env[name] = value
    return env


def _row(node):
    if node["transport"] == "ssh":
        address = f"{node['user']}@{node['host']}:{node['ssh_port']}"
    else:
        address = "local"
    state = "enabled" if node["enabled"] else "disabled"
    if node["draining"]:
        state += ",draining"
    pool = "shared" if node["repository"] is None else f"{node['repository']} only"
    return [node["name"], pool, node["environment"], address, f"{node['host']}:{node['app_port']}",
            state, node["health"], node["current_branch"] or "-", node["current_sha"][:10] or "-",
            node["health_message"]]
