"""The reads every panel works from: recent builds, nodes, trains, jobs (bounded)."""

from datetime import timedelta

from django.db.models import Count, Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from nodes.models import Node
from pipeline.models import Build, DeployTrain, Job, TestResult
from radiators.models import TestCaseDay

from ._common import BRANCH_KINDS, RECENT_WINDOW, RED, STAGES, TRAIN_HISTORY, TRAINS_SHOWN, _scoped


def _recent_builds(repository):
    return list(_scoped(Build.objects.filter(kind__in=BRANCH_KINDS), repository)
                .order_by("-id")
                .values("id", "repository_id", "repository__name", "repository__default_branch",
                        "branch", "sha", "kind", "status", "message", "created_at", "started_at",
                        "finished_at")[:RECENT_WINDOW])


def _nodes(repository):
    nodes = Node.objects.all() if repository is None else Node.objects.usable_by(repository)
    return list(nodes.order_by("environment", "name").values(
        "name", "environment", "enabled", "draining", "health", "health_message",
        "current_sha", "current_branch", "last_changed_at", "lease__branch",
        "lease__repository__name"))


def _trains(repository):
    """The latest trains, newest first, each with its environments (from its first
    build's spec)."""
    of_train = Build.objects.filter(train=OuterRef("pk"))
    environments = of_train.order_by("id").values("spec__environments")[:1]
    limit = TRAIN_HISTORY if repository is not None else TRAIN_HISTORY * 3
    rows = list(_scoped(DeployTrain.objects.all(), repository).order_by("-id")
                .annotate(environments=Subquery(environments),
                          first_build=Subquery(of_train.order_by("id").values("id")[:1]),
                          last_build=Subquery(of_train.order_by("-id").values("id")[:1]))
                .values("id", "repository_id", "repository__name", "kind", "status", "head_sha",
                        "base_sha", "environment", "message", "created_at", "finished_at",
                        "approval_requested_at", "environments", "first_build",
                        "last_build")[:limit])
    for row in rows:
        envs = row["environments"]
        if isinstance(envs, str):  # SQLite hands the JSON back as text
            import json

            envs = json.loads(envs)
        row["environments"] = [e for e in envs if isinstance(e, str)] if isinstance(envs, list) \
            else list(STAGES)
    return rows


def _shown_trains(trains):
    """One per repository: its active train, else its latest; active ones first."""
    current = {}
    for train in trains:
        seen = current.get(train["repository_id"])
        if seen is None or (train["status"] in DeployTrain.ACTIVE
                            and seen["status"] not in DeployTrain.ACTIVE):
            current[train["repository_id"]] = train
    shown = sorted(current.values(), key=lambda t: (t["status"] not in DeployTrain.ACTIVE, -t["id"]))
    return shown[:TRAINS_SHOWN]


def _jobs(build_ids, now):
    """The jobs of the builds shown and of the trains read (by build id, on the job's build
    index). A red job also says how many tests failed in it, how many of those are not
    known to be flaky (flipped on one SHA in the last 7 days) and the first one's name:
    a second query, for the red jobs only and only when there are some. Counting in the
    same query cost every read (most are of walls with no new red job) 5-10 ms of query
    building and planning; on PostgreSQL a plan costed for every job also crossed the JIT
    threshold."""
    if not build_ids:
        return []
    jobs = list(Job.objects.filter(build_id__in=build_ids).order_by("build_id", "id").values(
        "id", "build_id", "name", "stage", "status", "environment", "started_at",
        "finished_at"))
    red = {job["id"]: job for job in jobs if job["status"] in RED}
    for job in jobs:
        job.update(failed_tests=0, unexplained=0, first_failed=None)
    if red:
        for counts in _failed_tests(red, now):
            red[counts.pop("id")].update(counts)
    return jobs


def _failed_tests(job_ids, now):
    failing = TestResult.objects.filter(job=OuterRef("pk"), outcome__in=RED)
    known_flaky = TestCaseDay.objects.filter(
        repository_id=OuterRef(OuterRef("build__repository_id")), suite=OuterRef("suite"),
        classname=OuterRef("classname"), name=OuterRef("name"),
        day__gte=timezone.localdate(now) - timedelta(days=7), flips__gt=0)

    def count(results):
        return Coalesce(Subquery(results.order_by().values("job_id").annotate(n=Count("*"))
                                 .values("n")[:1]), 0)

    return (Job.objects.filter(id__in=job_ids).order_by()
            .annotate(failed_tests=count(failing),
                      unexplained=count(failing.filter(~Exists(known_flaky))),
                      first_failed=Subquery(failing.order_by("id").values("name")[:1]))
            .values("id", "failed_tests", "unexplained", "first_failed"))
