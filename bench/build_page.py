#!/usr/bin/env python
"""Build page size and time with large JUnit reports.

    .venv/bin/python bench/build_page.py [--tests 1000,10000,100000] [--failed 25] [--repeat 5]

For each size N it stores one finished build whose `unit` job has N per-test results
(`--failed` of them failed, spread through the report, each with a short message), as a
JUnit report of that size leaves them, plus a 2,000-line log. Then it fetches the build
page (and, where the code has it, the page listing all of the job's results) through
Django's test client (the whole view, queries and template; no network) `--repeat` times
and prints the page's size, the median and slowest time, the number of test rows on the
page and whether every failed test is among them. SQLite (WAL) in a temporary folder,
or a PostgreSQL database made for the run with DATABASE_URL (both removed at the end).
"""

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fanout_trainyard import Database  # noqa: E402

ROW = re.compile(r'<li class="test ')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", default="1000,10000,100000",
                        help="per-test results in the job, comma-separated (default 1000,10000,100000)")
    parser.add_argument("--failed", type=int, default=25, help="failed tests among them (25)")
    parser.add_argument("--repeat", type=int, default=5, help="fetches per page (median shown)")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(n) for n in args.tests.split(",") if n.strip()})
    return args


def make_build(count, failed):
    from pipeline.models import Build, Commit, Job, LogChunk, Repository, TestResult

    repo = Repository.objects.create(name=f"bench-{count}", clone_url="/srv/git/bench.git")
    sha = f"{count:040x}"
    commit = Commit.objects.create(repository=repo, sha=sha, message="Bench")
    build = Build.objects.create(repository=repo, commit=commit, sha=sha, branch="feature/bench",
                                 status="failed", message="unit failed")
    job = Job.objects.create(build=build, name="unit", command=["pytest"], timeout=600,
                             status="failed", exit_code=1, message="exited 1")
    LogChunk.objects.bulk_create(LogChunk(job=job, seq=i, text=f"tests/test_{i}.py ....... [ 1%]\n")
                                 for i in range(2000))
    step = max(1, count // max(1, failed))
    failing = set(range(step // 2, count, step)[:failed])
    TestResult.objects.bulk_create(
        (TestResult(job=job, suite="pytest", classname=f"tests.test_mod{i // 100}",
                    name=f"test_case_{i}", outcome="failed" if i in failing else "passed",
                    duration=0.01, message="AssertionError: 1 != 2" if i in failing else "")
         for i in range(count)), batch_size=5000)
    return build, job, len(failing)


def fetch(client, url, repeat):
    times, body = [], b""
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        body = response.content
    return body, times


def measure(client, count, failed, repeat):
    build, job, failing = make_build(count, failed)
    body, times = fetch(client, f"/builds/{build.pk}/", repeat)
    text = body.decode()
    shown_failed = len(re.findall(r'<li class="test failed', text))
    rows = [("build page", count, len(body), times, len(ROW.findall(text)),
             "yes" if shown_failed == failing else f"{shown_failed} of {failing}")]
    link = re.search(r'href="([^"]*/tests/[^"]*)"', text)
    if link:
        body, times = fetch(client, link.group(1).replace("&amp;", "&"), repeat)
        text = body.decode()
        rows.append(("all results, page 1", count, len(body), times, len(ROW.findall(text)), ""))
    return rows


def main(argv=None):
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-page-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
    os.environ["TRAINYARD_EMBEDDED_WORKER"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    database = Database(folder)
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    try:
        call_command("migrate", verbosity=0)
        client = Client()
        print(f"Build page, {database.kind}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores; {args.repeat} fetches each, test client (no network)")
        header = f"{'page':<20} {'tests':>8} {'bytes':>11} {'median s':>9} {'max s':>7} " \
                 f"{'rows':>6}  all failed shown"
        print(header)
        print("-" * len(header))
        for count in args.sizes:
            for name, n, size, times, rows, failed in measure(client, count, args.failed, args.repeat):
                print(f"{name:<20} {n:>8} {size:>11,} {statistics.median(times):>9.3f} "
                      f"{max(times):>7.3f} {rows:>6}  {failed}")
    finally:
        database.drop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
