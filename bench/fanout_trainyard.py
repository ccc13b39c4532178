"""Trainyard's own deploy path, as a deploy job runs it: `deploy_build` with a
`LogWriter` (log chunks in the database, heartbeats), so the Deployment row, the Events,
the log and the Node update all happen. One thread per node: in production each deploy
is a Celery task, run in parallel by the workers. The archive is made once per build, as
in production, before the clock starts.

`setup_django` must run before anything else here: it points Django at a throwaway
database (SQLite in the bench folder, or a dedicated PostgreSQL database when
DATABASE_URL is set) and at the bench's SSH key.
"""

import os
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import django

NOOP_STEPS = {"install": {"argv": ["true"], "junit": "", "timeout": None},
              "start": {"argv": ["true"], "junit": "", "timeout": None}}


class Database:
    """SQLite under the bench folder, or a PostgreSQL database made for this run."""

    def __init__(self, folder):
        self.url = os.environ.get("DATABASE_URL", "")
        self.created = None
        if self.url.startswith(("postgres://", "postgresql://")):
            self._create_postgres()
        else:
            self.url = ""
        os.environ["TRAINYARD_VAR_DIR"] = str(folder / "var")

    @property
    def kind(self):
        return "PostgreSQL" if self.created else "SQLite (WAL)"

    def _create_postgres(self):
        import psycopg

        self.created = f"trainyard_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.created}"')
        parts = urlsplit(self.url)
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{self.created}"))
        # Django's pool holds a connection per thread for a whole deploy: 50 threads would
        # wait on a pool of 20. One plain connection per thread instead, closed at its end.
        os.environ["DB_POOL"] = "0"

    def drop(self):
        if not self.created:
            return
        from django.db import connections

        connections.close_all()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.created}" WITH (FORCE)')


def setup_django(folder, key_path):
    folder = Path(folder)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
    os.environ["TRAINYARD_SSH_KEY_FILE"] = str(key_path)
    os.environ["TRAINYARD_EMBEDDED_WORKER"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    database = Database(folder)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return database


class Bench:
    """The rows one bench run deploys with: a repository, its build and the nodes."""

    def __init__(self, repo_path, sha, targets):
        from nodes.models import Node
        from pipeline.models import Build, Commit, Repository
        from pipeline.services.git import update_mirror

        self.repository = Repository.objects.create(name="bench-app", clone_url=str(repo_path))
        update_mirror(self.repository)
        commit = Commit.objects.create(repository=self.repository, sha=sha, message="bench payload")
        self.build = Build.objects.create(repository=self.repository, commit=commit, sha=sha,
                                          branch="bench", spec={"checks": {}, "deploy": NOOP_STEPS})
        self.nodes = [Node.objects.create(name=f"bench-{t.index:02d}", host=t.host, ssh_port=t.port,
                                          user="root", host_key=t.host_key, base_path="/nonexistent",
                                          app_port=9000 + t.index)
                      for t in targets]

    def archive(self):
        """Made once per build, before any deploy (production keeps it under archives/)."""
        from nodes.services.deploys import archive_for

        return archive_for(self.build)

    def prepare(self, count, bases, round_no):
        """Untimed: point the first `count` nodes at fresh folders, one deploy job each."""
        from nodes.models import Node
        from pipeline.models import Event, Job

        self.event_mark = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
        nodes = self.nodes[:count]
        for node, base in zip(nodes, bases, strict=True):
            Node.objects.filter(pk=node.pk).update(base_path=str(base), current_sha="")
        jobs = [Job.objects.create(build=self.build, name=f"deploy-{round_no}-{i}", stage="deploy",
                                   command=[], timeout=600) for i in range(count)]
        return list(Node.objects.filter(pk__in=[n.pk for n in nodes]).order_by("name")), jobs

    def run(self, nodes, jobs):
        """Deploy to every node at once, one thread each; returns the Deployments."""
        with ThreadPoolExecutor(len(nodes)) as pool:
            return list(pool.map(self._deploy_one, nodes, jobs))

    def _deploy_one(self, node, job):
        from django.db import connection

        from nodes.services.deploys import deploy_build
        from pipeline.services.jobs import LogWriter

        try:
            log = LogWriter(job)
            deployment = deploy_build(self.build, node, self.build.spec["deploy"], log=log.write,
                                      on_tick=log.tick)
            log.flush()
            return deployment
        finally:
            connection.close()

    def check(self, deployments, jobs):
        """Untimed: every deploy succeeded and left its events and its log."""
        from nodes.models import Deployment
        from pipeline.models import Event, LogChunk

        failed = [d for d in deployments if d.status != Deployment.Status.SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} Trainyard deploy(s) failed; first: {failed[0].message}\n"
                               f"{failed[0].log[-3000:]}")
        events = Event.objects.filter(id__gt=self.event_mark)
        started = events.filter(kind="deployment.started").count()
        ended = events.filter(kind="deployment.status", new=Deployment.Status.SUCCEEDED).count()
        logged = LogChunk.objects.filter(job__in=jobs).values("job").distinct().count()
        if not started == ended == logged == len(deployments):
            raise RuntimeError(f"missing records: {started} start and {ended} end events, {logged} "
                               f"logs for {len(deployments)} deploys")


def git(*args, cwd):
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent",
           "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repository(folder, payload_name, size):
    """A git repository whose one commit holds `size` random (incompressible) bytes."""
    path = Path(folder) / "app"
    path.mkdir(parents=True)
    git("init", "-q", "-b", "master", cwd=path)
    (path / payload_name).write_bytes(os.urandom(size))
    (path / "README").write_text("Trainyard deploy fan-out benchmark payload\n")
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "payload", cwd=path)
    return path, git("rev-parse", "HEAD", cwd=path)
