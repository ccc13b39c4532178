"""`manage.py seed_demo`: the demo for the production shape (PostgreSQL, Redis, separate
web / worker / beat processes), in one command. Run it once, after `migrate`.

It makes what `make run` makes for itself: the `admin` account, an API token for the
command line (in var/api-token, where `bb` and `pr` look), the demo repository as a real
git repository under var/, and ten local branch nodes. Running it again changes nothing.
"""

from django.core.management.base import BaseCommand

from pipeline.services import standalone


class Command(BaseCommand):
    help = "Seed the demo: admin, CLI token, the demo repository and local branch nodes."

    def add_arguments(self, parser):
        parser.add_argument("--nodes", type=int, default=10,
                            help="local branch nodes to create (default 10; 0 for none)")

    def handle(self, *args, **options):
        password = standalone.ensure_admin()
        token = standalone.ensure_cli_token()
        repository = standalone.seed_demo()
        nodes = standalone.seed_local_nodes(count=options["nodes"]) if options["nodes"] else []
        out = self.stdout
        out.write(f"demo repository: {repository.name} ({repository.clone_url})")
        out.write(f"local branch nodes: {len(nodes)}")
        if password:
            out.write(f"admin login (shown once, kept in {standalone.credentials_path()}):"
                      f" admin / {password}")
        else:
            out.write(f"admin login: see {standalone.credentials_path()}")
        out.write(f"API token for bb/pr: {token}")
