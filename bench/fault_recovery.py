#!/usr/bin/env python
"""Fault recovery: after each fault, how long until Trainyard's work lands again.

    .venv/bin/python bench/fault_recovery.py [--workers 2] [--pool prefork] [--concurrency 2]
        [--faults none,kill-worker,restart-redis,terminate-db,duplicate-task] [--timeout 180]

Sets up a temporary PostgreSQL database (created and migrated here, dropped at the end) and
a private redis-server, then starts N `celery worker` processes, each with its own var dir
(its own git mirrors and workspaces, as separate hosts have), and `celery beat` (the
reaper's clock). There is no web server: this process plays the web and requests builds
through `pipeline.services.builds.request_build`, from a real git repository.

Each round commits a spec whose one check holds until released (it waits for a port this
process opens, as tests.helpers.Gate does), requests a build of it and waits until the
check runs. Then it injects the fault, releases the check, and requests the next build (a
new commit with the fast passing spec, tests.helpers.FAST_SPEC). It prints, per fault, the
seconds from the fault until the affected build ended (and how), how many times its check
ran to its end, and the seconds until the next build passed.

Faults:
- none: the baseline.
- kill-worker: SIGKILL the worker that runs the check, with its whole process group (the
  check dies with it), then start it again as a supervisor would. Only the reaper (a beat
  task) can notice: the job stopped beating.
- restart-redis: SIGKILL redis-server and start it again on the same port, empty.
- terminate-db: pg_terminate_backend every connection to the database but this process's.
- duplicate-task: deliver the running check's task a second time, and its build's.

Everything it starts stops at the end, and its folder is removed (unless --keep).
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAULTS = ("none", "kill-worker", "restart-redis", "terminate-db", "duplicate-task")


def counting_gate():
    """tests.helpers.Gate that also counts the checks that got through it once open."""
    from tests.helpers import Gate

    class CountingGate(Gate):
        passed = 0

        def open(self):
            super().open()
            threading.Thread(target=self._count, daemon=True).start()

        def _count(self):
            while True:
                try:
                    conn, _ = self._listener.accept()
                except OSError:  # closed
                    return
                conn.close()
                self.passed += 1

    return CountingGate()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--pool", choices=("prefork", "threads"), default="prefork",
                        help="the workers' pool (default prefork, as in production)")
    parser.add_argument("--concurrency", type=int, default=2, help="per worker (default 2)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, in order (default: {','.join(FAULTS)})")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for a build before giving up on it (default 180)")
    parser.add_argument("--postgres", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server to create the temporary database on (its URL)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs) at the end")
    args = parser.parse_args()
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return args


# Setup: database, Redis, Django ----------------------------------------------------------

def database_on(server_url, name):
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url, name):
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(server_url, name):
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                     [name])
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def setup_django(database_url, redis_url, var_dir):
    """This process is the web: it publishes to the private Redis and writes the database."""
    for name in ("TRAINYARD_ENV", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"):
        os.environ.pop(name, None)
    os.environ.update({"DJANGO_SETTINGS_MODULE": "pipeline.settings", "DATABASE_URL": database_url,
                       "REDIS_URL": redis_url, "TRAINYARD_VAR_DIR": str(var_dir),
                       "TRAINYARD_EMBEDDED_WORKER": "0"})
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


# One round ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, root, redis, env):
        from pipeline.models import Repository
        from tests.helpers import FAST_SPEC, GitRepo

        self.args, self.root, self.redis, self.env = args, root, redis, env
        self.workers = []
        self.repo = GitRepo(root / "origin")
        self.repo.commit({"trainyard.yml": FAST_SPEC, "README": "hello\n"}, message="Initial commit")
        self.repository = Repository.objects.create(name="bench", clone_url=str(self.repo.path))
        self.round = 0

    def start_workers(self):
        from tests.faults import BeatProcess, WorkerProcess

        for i in range(1, self.args.workers + 1):
            worker = WorkerProcess(self.env, self.root / f"worker{i}", f"worker{i}",
                                   concurrency=self.args.concurrency, pool=self.args.pool)
            self.workers.append(worker)
        threads = [threading.Thread(target=w.start) for w in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for worker in self.workers:
            worker.assert_alive()
        self.beat = BeatProcess(self.env, self.root / "beat").start()

    def stop(self):
        for process in [*self.workers, getattr(self, "beat", None)]:
            if process is not None:
                process.stop(timeout=20)

    def request(self, files, message):
        from pipeline.services.builds import request_build

        self.repo.commit(files, message=message)
        build, created = request_build(self.repository, "master", via="bench")
        assert created, f"no new build for {message}"
        return build

    def next_build(self):
        from tests.helpers import FAST_SPEC

        return self.request({"trainyard.yml": FAST_SPEC, "CHANGES": f"{time.time()}\n"},
                            f"next after round {self.round}")

    def held_build(self, gate, marker):
        spec = f"checks:\n  held: python3 {marker}\n"
        return self.request({"trainyard.yml": spec, marker: gate.script(before="holding")},
                            f"round {self.round}: a check that holds")

    def run(self, fault):
        from pipeline.models import Job
        from tests.faults import find_processes
        from tests.helpers import wait_until

        self.round += 1
        marker = f"held_{self.round}_{fault.replace('-', '_')}.py"
        gate = counting_gate()
        try:
            build = self.held_build(gate, marker)
            wait_until(lambda: Job.objects.filter(build=build, status=Job.Status.RUNNING).exists()
                       and find_processes(marker), timeout=self.args.timeout,
                       message=f"the check of build #{build.pk} to run")
            started = time.monotonic()
            note = getattr(self, f"fault_{fault.replace('-', '_')}")(build, marker)
            gate.open()
            following = self.next_build()
            ended = self.wait_both(build, following, started)
        finally:
            gate.close()
        return self.row(fault, build, following, ended, note, gate.passed)

    def wait_both(self, build, following, started):
        """Seconds from `started` until each build ended (None: not within the timeout)."""
        from pipeline.models import Build

        ended = {}
        deadline = started + self.args.timeout
        while len(ended) < 2 and time.monotonic() < deadline:
            for item in (build, following):
                if item.pk not in ended:
                    item.refresh_from_db()
                    if item.status in Build.ENDED:
                        ended[item.pk] = time.monotonic() - started
            time.sleep(0.05)
        return ended

    def row(self, fault, build, following, ended, note, passed_gate):
        job = build.jobs.first()
        return {
            "fault": fault,
            "affected": f"#{build.pk} {build.status}",
            "ended_s": ended.get(build.pk),
            "check_ran": passed_gate,
            "attempts": getattr(job, "attempt", "-"),
            "next": f"#{following.pk} {following.status}",
            "next_s": ended.get(following.pk) if following.status == "passed" else None,
            "note": note,
        }

    # The faults: each returns a note for the table.

    def fault_none(self, build, marker):
        return "baseline"

    def fault_kill_worker(self, build, marker):
        from tests.faults import find_processes

        pids = find_processes(marker)
        owner = next((w for w in self.workers for pid in pids if w.owns(pid)), None)
        if owner is None:
            return "no worker owns the check?"
        owner.kill()
        # As `restart: unless-stopped` would; the others go on meanwhile.
        threading.Thread(target=owner.start, daemon=True).start()
        return f"{owner.name} killed, started again"

    def fault_restart_redis(self, build, marker):
        self.redis.restart()
        alive = sum(w.alive() and "Unrecoverable error" not in w.log() for w in self.workers)
        return f"Redis back; {alive}/{len(self.workers)} workers alive"

    def fault_terminate_db(self, build, marker):
        from django.db import connection

        from tests.faults import terminate_backends

        count = terminate_backends(connection.settings_dict["NAME"])
        return f"{count} backends terminated"

    def fault_duplicate_task(self, build, marker):
        from pipeline.tasks import run_build, run_job

        for job in build.jobs.all():
            run_job.delay(job.pk)
        run_build.delay(build.pk)
        return "run_job and run_build sent again"


# Output -------------------------------------------------------------------------------------

def seconds(value):
    return f"{value:7.1f}" if value is not None else "      -"


def print_table(rows, args):
    print(f"\nFault recovery: {args.workers} workers ({args.pool}, concurrency {args.concurrency}),"
          f" one private Redis, PostgreSQL; seconds from the fault.")
    print(f"{'fault':<15} {'affected build':<18} {'ended':>7} {'check ran':>9} {'attempt':>7}  "
          f"{'next build':<16} {'passed':>7}  note")
    for r in rows:
        print(f"{r['fault']:<15} {r['affected']:<18} {seconds(r['ended_s'])} {r['check_ran']:>9}"
              f" {r['attempts']!s:>7}  {r['next']:<16} {seconds(r['next_s'])}  {r['note']}")
    print(f"('-': not within {args.timeout:.0f} s. 'check ran': how many runs of the held check"
          " went past the released gate; 'attempt': the job's attempt number at the end.)")


def main():
    args = parse_args()
    from tests.faults import RedisServer

    root = Path(tempfile.mkdtemp(prefix="trainyard-faults-"))
    dbname = f"trainyard_bench_{os.getpid()}"
    database_url = database_on(args.postgres, dbname)
    create_database(args.postgres, dbname)
    bench = None
    try:
        with RedisServer(directory=root / "redis") as redis:
            setup_django(database_url, redis.url(), root / "web")
            env = {"DATABASE_URL": database_url, "REDIS_URL": redis.url()}
            bench = Bench(args, root, redis, env)
            bench.start_workers()
            warm = bench.wait_both(bench.next_build(), bench.next_build(), time.monotonic())
            print(f"warm-up: two builds ended after {max(warm.values(), default=0):.1f} s")
            rows = []
            for fault in args.faults:
                rows.append(bench.run(fault))
                print(f"  {fault}: done", flush=True)
            print_table(rows, args)
            bench.stop()
    finally:
        if bench is not None:
            bench.stop()
        from django.db import connections

        connections.close_all()
        drop_database(args.postgres, dbname)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
