#!/usr/bin/env python
"""The wall's server time with a large history.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/wall_snapshot.py [--results 1000000] [--repeat 50]

Seeds one repository with `--results` stored per-test results (200 tests per job, two
junit jobs per build, so 1M results are 2,500 builds over 30 days), test-health rollups
for those 30 days (what radiators.rollups keeps), 40 branches on branch nodes (a third of
them red, one claimed, master red since 12 runs), 20 deployed trains and one awaiting
approval with two authors, staging/preview/preprod/production nodes and the train's
schedule. Then it fetches the per-repository wall, its snapshot.json and the wall of all
repositories through Django's test client (view, queries, template or JSON; no network)
`--repeat` times each and prints median and p95 server time, the number of queries and
the response size. PostgreSQL: a database made for the run (dropped at the end); without
DATABASE_URL, SQLite in a temporary folder (slow to seed 1M rows: use --results 100000).
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fanout_trainyard import Database  # noqa: E402

TESTS_PER_JOB = 200
JOBS_PER_BUILD = 2
BRANCHES = 40


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=int, default=1_000_000, help="stored test results (1M)")
    parser.add_argument("--repeat", type=int, default=50, help="fetches per page (50)")
    return parser.parse_args(argv)


def seed(results):
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from nodes.models import Node, NodeLease
    from pipeline.models import Approval, Build, Commit, DeployTrain, Job, Repository, TestResult, TrainCommit
    from pipeline.services.train_schedule import ensure_schedule
    from radiators.models import Claim, SuiteDay, TestCaseDay

    now = timezone.now()
    repo = Repository.objects.create(name="big", clone_url="/srv/git/big.git")
    users = [get_user_model().objects.create_user(name) for name in ("alice", "bob", "carol")]
    builds_count = max(1, results // (TESTS_PER_JOB * JOBS_PER_BUILD))
    branches = ["master"] + [f"feature/f{i}" for i in range(BRANCHES)]
    commits = Commit.objects.bulk_create(Commit(repository=repo, sha=f"{i:040x}", message="c")
                                         for i in range(builds_count + 100))
    span = timedelta(days=30) / builds_count
    builds = []
    for i in range(builds_count):
        branch = branches[i % len(branches)]
        red = (branch == "master" and i > builds_count - 12 * len(branches)) or \
              (i % len(branches) % 3 == 1 and i >= builds_count - len(branches))
        at = now - timedelta(days=30) + span * i
        builds.append(Build(repository=repo, commit=commits[i], sha=commits[i].sha, branch=branch,
                            kind="master" if branch == "master" else "branch",
                            status="failed" if red else "passed", message="unit failed" if red else "",
                            started_at=at, finished_at=at + timedelta(minutes=3)))
    builds = Build.objects.bulk_create(builds, batch_size=5000)
    jobs = Job.objects.bulk_create(
        (Job(build=b, name=name, command=["pytest"], timeout=600, junit_path="r.xml",
             status="failed" if b.status == "failed" and name == "unit" else "passed",
             started_at=b.started_at, finished_at=b.finished_at)
         for b in builds for name in ("unit", "integration")), batch_size=5000)
    _results(connection, TestResult, jobs, results)
    _rollups(connection, repo, SuiteDay, TestCaseDay, now)
    for i, branch in enumerate(branches[1:]):
        node = Node.objects.create(name=f"bn-{i}", base_path=f"/srv/bn-{i}", health="healthy")
        NodeLease.objects.create(node=node, repository=repo, branch=branch)
    for env in ("staging", "preview", "preprod", "production", "production", "production"):
        Node.objects.create(name=f"{env}-{Node.objects.count()}", environment=env, repository=repo,
                            base_path="/srv/x", health="healthy", current_sha=commits[-1].sha)
    Build.objects.create(repository=repo, commit=commits[-2], sha=commits[-2].sha, branch="master",
                         kind="master", status="running", started_at=now)
    Claim.objects.create(repository=repo, branch="master", user=users[0])
    _trains(repo, commits, users, now, DeployTrain, Build, Job, TrainCommit, Approval)
    ensure_schedule(repo, "0 * * * *")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # What autovacuum does soon after a bulk load: without statistics the planner
            # guesses row counts (and may JIT-compile a plan for rows that are not there).
            cursor.execute("ANALYZE")
    return repo


def _results(connection, TestResult, jobs, results):
    """Per-test rows: generate_series on PostgreSQL (a million in seconds), bulk_create else."""
    job_ids = [j.pk for j in jobs]
    failing = {j.pk for j in jobs if j.status == "failed"}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"""
                INSERT INTO {TestResult._meta.db_table}
                    (job_id, suite, classname, name, outcome, duration, message)
                SELECT j.id, 'unit', 'tests.test_mod' || (t / 20), 'test_case_' || t,
                       CASE WHEN j.id = ANY(%s) AND t = 7 THEN 'failed' ELSE 'passed' END,
                       (t %% 17) * 0.05, ''
                FROM unnest(%s::bigint[]) AS j(id), generate_series(0, %s) AS t
                LIMIT %s""",  # noqa: S608 (a model's table name; values are parameters)
                [list(failing), job_ids, TESTS_PER_JOB - 1, results])
        return
    rows = (TestResult(job_id=job_id, suite="unit", classname=f"tests.test_mod{t // 20}",
                       name=f"test_case_{t}", outcome="failed" if job_id in failing and t == 7
                       else "passed", duration=(t % 17) * 0.05)
            for job_id in job_ids for t in range(TESTS_PER_JOB))
    TestResult.objects.bulk_create(rows, batch_size=10000)


def _rollups(connection, repo, SuiteDay, TestCaseDay, now):
    days = [(now - timedelta(days=d)).date() for d in range(30)]
    SuiteDay.objects.bulk_create(SuiteDay(repository=repo, suite=suite, day=day, runs=4000,
                                          failures=7, duration=300.0)
                                 for day in days for suite in ("unit", "integration"))
    TestCaseDay.objects.bulk_create(
        (TestCaseDay(repository=repo, suite="unit", classname=f"tests.test_mod{t // 20}",
                     name=f"test_case_{t}", day=day, runs=40, failures=1 if t == 7 else 0,
                     flips=1 if t in (7, 42) else 0, duration_total=40 * (t % 17) * 0.05,
                     duration_max=(t % 17) * 0.05)
         for day in days for t in range(TESTS_PER_JOB)), batch_size=5000)


def _trains(repo, commits, users, now, DeployTrain, Build, Job, TrainCommit, Approval):
    for i in range(21):
        waiting = i == 20
        at = now - timedelta(hours=21 - i)
        train = DeployTrain.objects.create(
            repository=repo, head_sha=commits[-(i + 3)].sha,
            status="awaiting_approval" if waiting else "deployed",
            environment="production" if waiting else "",
            approval_requested_at=now - timedelta(minutes=7) if waiting else None)
        build = Build.objects.create(repository=repo, commit=commits[-(i + 3)], sha=train.head_sha,
                                     branch="master", kind="train", status="running", train=train,
                                     spec={"environments": ["staging", "preview", "preprod"]})
        for k, env in enumerate(("staging", "preview", "preprod")):
            start = at + timedelta(minutes=5 * k)
            Job.objects.create(build=build, name=f"deploy-{env}", command=[], timeout=600,
                               status="passed", started_at=start,
                               finished_at=start + timedelta(minutes=2))
            Job.objects.create(build=build, name=f"acceptance-{env}", command=["pytest"],
                               timeout=600, status="passed", started_at=start + timedelta(minutes=2),
                               finished_at=start + timedelta(minutes=5))
        if not waiting:
            Job.objects.create(build=build, name="production", command=[], timeout=600,
                               status="passed", started_at=at + timedelta(minutes=15),
                               finished_at=at + timedelta(minutes=19))
            continue
        for position, user in enumerate(users[:2]):
            TrainCommit.objects.create(train=train, commit=commits[-(30 + position)],
                                       position=position, author=user)
        Approval.objects.create(train=train, user=users[0], verdict="good")


def measure(client, url, repeat):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, size, queries = [], 0, 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        size, queries = len(response.content), len(captured)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], queries, size


def main(argv=None):
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-wall-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
    os.environ["TRAINYARD_EMBEDDED_WORKER"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    database = Database(folder)
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from pipeline.models import TestResult

    try:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        repo = seed(args.results)
        seeded = time.perf_counter() - started
        stored = TestResult.objects.count()
        client = Client()
        print(f"Wall, {database.kind}, Python {platform.python_version()}, {os.cpu_count()} cores; "
              f"{stored:,} stored test results (seeded in {seeded:.0f} s); {args.repeat} fetches "
              "each, test client (no network)")
        header = f"{'page':<28} {'median ms':>10} {'p95 ms':>8} {'queries':>8} {'bytes':>9}"
        print(header)
        print("-" * len(header))
        for name, url in ((f"/radiators/{repo.name}/", f"/radiators/{repo.name}/"),
                          ("snapshot.json", f"/radiators/{repo.name}/snapshot.json"),
                          ("/radiators/ (all)", "/radiators/")):
            median, p95, queries, size = measure(client, url, args.repeat)
            print(f"{name:<28} {median * 1000:>10.1f} {p95 * 1000:>8.1f} {queries:>8} {size:>9,}")
    finally:
        database.drop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
