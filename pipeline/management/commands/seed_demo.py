"""`manage.py seed_demo`: the demo for the production shape (PostgreSQL, Redis, separate
web / worker / beat processes), in one command. Run it once, after `migrate`.

It makes what `make run` makes for itself: the `admin` account, an API token for the
command line (in var/api-token, where `bb` and `pr` look), the demo repository as a real
git repository under var/, ten local branch nodes, the train's local nodes (staging,
preview, pre-prod, three production) and the demo's authors alice and bob. Running it
again changes nothing.
"""

from django.core.management.base import BaseCommand

from pipeline.services import standalone


class Command(BaseCommand):
    help = "Seed the demo: admin, CLI token, the demo repository, its users and local nodes."

    def add_arguments(self, parser):
        parser.add_argument("--nodes", type=int, default=10,
                            help="local branch nodes to create (default 10; 0 for none)")

    def handle(self, *args, **options):
        password = standalone.ensure_admin()
        token = standalone.ensure_cli_token()
        repository = standalone.seed_demo()
        nodes = standalone.seed_local_nodes(count=options["nodes"]) if options["nodes"] else []
        environment_nodes = standalone.seed_environment_nodes(repository)
        team = standalone.ensure_team()
        out = self.stdout
        out.write(f"demo repository: {repository.name} ({repository.clone_url})")
        out.write(f"local branch nodes: {len(nodes)}")
        out.write("local train nodes: " + ", ".join(
            f"{node.name} ({node.environment}{', off-cycle' if node.off_cycle else ''})"
            for node in environment_nodes))
        for username, new_password in {standalone.ADMIN_USERNAME: password, **team}.items():
            kept = standalone.credentials_path(username)
            if new_password:
                out.write(f"{username} login (shown once, kept in {kept}):"
                          f" {username} / {new_password}")
            else:
                out.write(f"{username} login: see {kept}")
        out.write(f"API token for bb/pr: {token}")
