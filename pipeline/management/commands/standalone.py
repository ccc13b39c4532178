"""`make run`: migrate, create the admin and the demo, then serve with the worker and the
beat scheduler inside the same process."""

import os
import signal

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from pipeline.services import standalone


class Command(BaseCommand):
    help = "Run Trainyard standalone: web, worker and scheduler in one process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--no-demo", action="store_true")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        password = standalone.ensure_admin()
        token = standalone.ensure_cli_token()
        team = {}
        if not options["no_demo"]:
            repository = standalone.seed_demo()
            standalone.seed_local_nodes()
            standalone.seed_environment_nodes(repository)
            team = standalone.ensure_team()
        url = f"http://{options['host']}:{options['port']}"
        self._banner(url, password, token, team)
        os.environ["TRAINYARD_URL"] = url
        self._serve(options["host"], options["port"])

    def _banner(self, url, password, token, team):
        out = self.stdout
        out.write(self.style.SUCCESS(f"Trainyard is starting at {url}"))
        out.write(f"  radiator:  {url}/radiators/demo/")
        out.write(f"  admin:     {url}/admin/")
        for username, new_password in {standalone.ADMIN_USERNAME: password, **team}.items():
            self._login(username, new_password)
        out.write(f"  CLI token: {token}")
        out.write("  try, in a second terminal: .venv/bin/python manage.py bb demo feature/hello --wait")

    def _login(self, username, password):
        kept = standalone.credentials_path(username)
        if password:
            self.stdout.write(self.style.WARNING(
                f"  {username} login (shown once, kept in {kept}): {username} / {password}"))
        else:
            self.stdout.write(f"  {username} login: see {kept}")

    def _serve(self, host, port):
        import uvicorn

        from pipeline.celery import app
        from pipeline.embedded import start_beat, start_worker

        if settings.TRAINYARD["EMBEDDED_WORKER"]:
            from pipeline.services.reaper import requeue_everything_queued

            start_worker(app)
            start_beat(app)
            # Tasks queued before the last stop lived in this process's memory broker.
            requeue_everything_queued()
        # uvicorn shuts down on SIGTERM, then raises the signal again: with the default
        # action that would end the process before `finally` stops the nodes' apps.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            # No per-message deflate: each wall frame would be compressed once per screen.
            uvicorn.run("pipeline.asgi:application", host=host, port=port, log_level="info",
                        ws="websockets-sansio", ws_per_message_deflate=False,
                        lifespan="off")
        finally:
            stopped = standalone.stop_local_apps()
            self.stdout.write(f"stopped the run: apps of the local nodes ({len(stopped)} checked)")


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
