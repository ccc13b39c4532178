"""`manage.py train start|status|approve|veto|force|rollback|lock|unlock REPO [--as USER]
[--reason …]`: the deploy train on a running Trainyard, through its HTTP API (the same
chat-ops executor as the pages and `!good`, `!force`, …).

`approve`, `veto` and `force` answer the repository's current train (`--train N` names
another). Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from urllib.parse import quote

from pipeline.client import (
    USAGE,
    CliCommand,
    CommandError,
    add_server_arguments,
    client_from,
    printable,
    table,
)

NEEDS_REASON = {"veto", "force", "rollback", "lock"}


class Command(CliCommand):
    help = "Start, follow, approve, veto, force or roll back deploy trains; lock environments."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        actions = {
            "start": "start a train now with the newest release candidate (release managers)",
            "status": "the current train: state, head, nodes per environment, authors' answers",
            "approve": "say good to the current train (its authors)",
            "veto": "say bad to the current train, with --reason (its authors)",
            "force": "send the current train on without waiting for approvals (release managers)",
            "rollback": "production back to the SHA it ran before (release managers)",
            "lock": "lock an environment, or the whole repository (release managers)",
            "unlock": "release a lock (release managers)",
        }
        for name, text in actions.items():
            each = sub.add_parser(name, help=text)
            each.add_argument("repository")
            if name != "status":
                each.add_argument("--as", dest="as_user", metavar="USER",
                                  help="in USER's name (needs the act_for_others permission)")
            if name in NEEDS_REASON:
                each.add_argument("--reason", default="", help="why (required)")
            if name in ("approve", "veto", "force", "status"):
                each.add_argument("--train", type=int, metavar="N",
                                  help="that train, not the repository's current one")
            if name == "force":
                each.add_argument("--override-veto", action="store_true",
                                  help="also over an author's veto")
                each.add_argument("--override-lock", action="store_true",
                                  help="also past a lock or a freeze window")
            if name in ("lock", "unlock"):
                each.add_argument("--environment", default="", metavar="ENV",
                                  help="staging, preview, preprod or production (default: all)")
            if name == "lock":
                each.add_argument("--expires", default="", metavar="DURATION",
                                  help="unlock by itself after, e.g. 30m, 2h, 1d")
            add_server_arguments(each)

    def handle(self, *args, **options):
        action = options["action"]
        if action in NEEDS_REASON and not options["reason"].strip():
            raise CommandError(f"train {action} needs --reason", returncode=USAGE)
        client = client_from(options)
        repo = quote(options["repository"], safe="")
        if action == "status":
            path = (f"/api/trains/{options['train']}" if options["train"]
                    else f"/api/repos/{repo}/trains/current")
            self._print_status(client.request("GET", path))
            return
        body = {"as": options["as_user"]} if options.get("as_user") else {}
        if action in ("approve", "veto", "force"):
            train_id = options["train"] or client.request(
                "GET", f"/api/repos/{repo}/trains/current")["id"]
            if action != "approve":
                body["reason"] = options["reason"]
            if action == "force":
                body.update(override_veto=options["override_veto"],
                            override_lock=options["override_lock"])
            reply = client.request("POST", f"/api/trains/{train_id}/{action}", body)
        elif action == "start":
            reply = client.request("POST", f"/api/repos/{repo}/trains", body)
        elif action == "rollback":
            reply = client.request("POST", f"/api/repos/{repo}/rollback",
                                   {**body, "reason": options["reason"]})
        elif action == "lock":
            body.update(reason=options["reason"], environment=options["environment"])
            if options["expires"]:
                body["expires"] = options["expires"]
            reply = client.request("POST", f"/api/repos/{repo}/locks", body)
        else:
            reply = client.request("POST", f"/api/repos/{repo}/locks/unlock",
                                   {**body, "environment": options["environment"]})
        self.stdout.write(printable(reply["message"]))
        if reply.get("train") and action in ("start", "rollback"):
            self.stdout.write(printable(f"{client.server}{reply['train']['url']}"))

    def _print_status(self, train):
        write = self.stdout.write
        kind = "rollback" if train["kind"] == "rollback" else "train"
        write(printable(f"{train['repository']} {kind} #{train['id']}: {train['status']}"
                        + (f" ({train['message']})" if train.get("message") else "")))
        write(printable(f"head {train['head_sha']}"
                        + (f"  (production ran {train['base_sha']})" if train.get("base_sha") else "")))
        if train.get("lock"):
            lock = train["lock"]
            write(printable(f"waiting for a lock on {lock['environment'] or 'every environment'}"
                            f" by {lock['locked_by']}: {lock['reason']}"
                            + (f" (until {lock['expires_at']})" if lock.get("expires_at") else "")))
        if train.get("forced_by"):
            write(printable(f"forced by {train['forced_by']}: {train['force_reason']}"))
        rows = []
        for env in train["environments"]:
            acceptance = env.get("acceptance")
            rows += _node_rows(env["name"], env.get("status"), env["nodes"])
            if acceptance:
                rows.append(["", "acceptance", acceptance["status"], "",
                             acceptance.get("message") or ""])
        production = train["production"]
        rows += _node_rows("production", production.get("status"), production["nodes"])
        write("")
        for line in table(["ENVIRONMENT", "NODE", "STATUS", "SHA", "URL"], rows):
            write(line)
        write("")
        for line in table(["AUTHOR", "ANSWER", "REASON"], [
                [a["username"], a["answer"] or "waiting", a.get("reason") or ""]
                for a in train["authors"]] or [["(none)", "", ""]]):
            write(line)
        unmapped = train.get("unmapped_authors") or []
        if unmapped:
            write(printable("not asked (no user with their e-mail): " + ", ".join(
                f"{a['name']} <{a['email']}>" for a in unmapped)))


def _node_rows(environment, status, nodes):
    """One row for the environment, then one per node (SHA and health)."""
    rows = [[environment, "", status or "pending", "", ""]]
    for node in nodes:
        name = node["name"] + (" (off-cycle)" if node.get("off_cycle") else "")
        rows.append(["", name, node.get("health") or "", (node.get("sha") or "-")[:10],
                     node.get("url") or ""])
    return rows
