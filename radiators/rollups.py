"""Test-health rollups: SuiteDay and TestCaseDay, kept up to date as each job stores its
JUnit results, so the wall reads a few hundred rollup rows instead of every TestResult.

`record_results(job, rows)` is called once per stored report (from
`pipeline.services.jobs._store_test_results`). Each row adds one run to its test's day;
an attempt that ran again after its worker died ran the tests again, and counts again.

Flips (the flaky signal): a test flips when it fails on a SHA where it passed before, or
passes where it failed before (same repository, same build SHA, another job: a rebuild,
the master build of a branch's SHA, a retried job). Only a bounded set of earlier jobs on
that SHA is compared, and only for the tests that could flip (this run's failures, and
earlier failures), so a large suite costs one small query.

Rows are added with `INSERT ... ON CONFLICT DO UPDATE SET runs = runs + excluded.runs`
(PostgreSQL and SQLite both): two jobs finishing at once add up instead of overwriting
each other. Keys are sorted, so two writers take row locks in the same order.
"""

from collections import defaultdict

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from pipeline.models import Job, TestResult
from radiators.models import SuiteDay, TestCaseDay

FAILING = ("failed", "error")
# Earlier jobs on the same SHA compared for flips: plenty for rebuilds and retries.
EARLIER_JOBS = 20


def record_results(job, rows, *, day=None):
    """Add one stored report (`parse_junit` rows) of `job` to the day's rollups."""
    if not rows:
        return
    build = job.build
    day = day or timezone.localdate()
    flipped = _flipped_tests(job, build, rows)
    suites = defaultdict(lambda: [0, 0, 0, 0.0])
    cases = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
    for row in rows:
        key = (row["suite"], row["classname"], row["name"])
        failed = row["outcome"] in FAILING
        suite = suites[row["suite"]]
        suite[0] += 1
        suite[1] += failed
        suite[2] += row["outcome"] == "skipped"
        suite[3] += row["duration"]
        if row["outcome"] == "skipped":
            continue
        case = cases[key]
        case[0] += 1
        case[1] += failed
        case[2] += key in flipped
        case[3] += row["duration"]
        case[4] = max(case[4], row["duration"])
    with transaction.atomic():
        _upsert(SuiteDay, ("suite", "day"), ("runs", "failures", "skipped", "duration"), (),
                [(build.repository_id, suite, day, *values)
                 for suite, values in sorted(suites.items())])
        _upsert(TestCaseDay, ("suite", "classname", "name", "day"),
                ("runs", "failures", "flips", "duration_total"), ("duration_max",),
                [(build.repository_id, *key, day, *values) for key, values in sorted(cases.items())])


def _flipped_tests(job, build, rows):
    """The (suite, classname, name) of `rows` whose outcome contradicts an earlier result
    of the same test on the same SHA."""
    failing_now = {(r["suite"], r["classname"], r["name"]) for r in rows if r["outcome"] in FAILING}
    passing_now = {(r["suite"], r["classname"], r["name"]) for r in rows if r["outcome"] == "passed"}
    earlier_jobs = list(Job.objects.filter(build__repository_id=build.repository_id, build__sha=build.sha)
                        .exclude(pk=job.pk).exclude(junit_path="")
                        .order_by("-id").values_list("pk", flat=True)[:EARLIER_JOBS])
    if not earlier_jobs:
        return set()
    could_flip = Q(outcome__in=FAILING)
    if failing_now:
        could_flip |= Q(outcome="passed", name__in={name for _, _, name in failing_now})
    flipped = set()
    for suite, classname, name, outcome in (TestResult.objects.filter(could_flip, job_id__in=earlier_jobs)
                                            .values_list("suite", "classname", "name", "outcome")):
        key = (suite, classname, name)
        if (outcome == "passed" and key in failing_now) or (outcome in FAILING and key in passing_now):
            flipped.add(key)
    return flipped


def _upsert(model, key_columns, summed, maxed, rows):
    """Insert rows (repository_id, *keys, *summed, *maxed), or add them to existing ones."""
    if not rows:
        return
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = ["repository_id", *key_columns, *summed, *maxed]
    updates = [f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in summed]
    updates += [f"{quote(c)} = CASE WHEN excluded.{quote(c)} > {table}.{quote(c)} "
                f"THEN excluded.{quote(c)} ELSE {table}.{quote(c)} END" for c in maxed]
    # Only quoted identifiers from the models are formatted in; every value is a parameter.
    sql = (f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
           f"VALUES ({', '.join(['%s'] * len(columns))}) "
           f"ON CONFLICT ({', '.join(quote(c) for c in ['repository_id', *key_columns])}) "
           f"DO UPDATE SET {', '.join(updates)}")
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
