"""The train strip: stages with SHA, acceptance and timing against the usual, authors, next tick."""

import statistics
from collections import defaultdict
from datetime import timedelta

from django.db.models import OuterRef, Subquery
from django.urls import reverse

from pipeline.models import DeployTrain, Job, TrainCommit
from pipeline.services.train_schedule import task_name

from ._common import PRODUCTION, STAGES, _iso, _short
from ._panels import _environment_shas


def _train_panel(repository, trains, shown, jobs, nodes, now):
    by_train = defaultdict(dict)
    for job in jobs:
        if job["train_id"]:
            by_train[job["train_id"]][job["name"]] = job  # the newest build's wins
    usual = _usual_durations(trains, by_train)
    authors = _authors([t["id"] for t in shown])
    env_sha = _environment_shas(nodes)
    ticks = _next_ticks(repository, now)
    items = []
    for train in shown:
        items.append({"repository": train["repository__name"],
                      "next_tick": ticks.get(train["repository__name"]),
                      "train": _train_row(train, by_train[train["id"]], usual, authors, env_sha, now)})
    if repository is not None and not items:
        items.append({"repository": repository.name, "next_tick": ticks.get(repository.name),
                      "train": None})
    return {"items": items}


def _stage_jobs(train, name):
    jobs = train
    if name == PRODUCTION:
        return jobs.get(PRODUCTION), None
    return jobs.get(f"deploy-{name}"), jobs.get(f"acceptance-{name}")


def _span(first, last):
    """(start, end) of a stage from its jobs; end None while it runs."""
    start = first["started_at"] if first else None
    end_job = last or first
    end = end_job["finished_at"] if end_job and end_job["status"] in Job.ENDED else None
    return start, end


def _usual_durations(trains, by_train):
    """Median seconds each stage took in the recent trains that passed it."""
    seen = defaultdict(list)
    for train in trains:
        jobs = by_train.get(train["id"], {})
        for name in [*STAGES, *train["environments"], PRODUCTION]:
            first, last = _stage_jobs(jobs, name)
            if (last or first) and (last or first)["status"] == "passed":
                start, end = _span(first, last)
                if start and end:
                    seen[name].append((end - start).total_seconds())
    return {name: statistics.median(values) for name, values in seen.items()}


def _stage_status(train, name, first, last):
    job = last or first
    if job is not None:
        if job["status"] in Job.ACTIVE:
            if name == PRODUCTION:
                return "deploying"
            return "testing" if job is last else "deploying"
        if job["status"] != "passed":
            return "failed"
        if last is None and name != PRODUCTION and train["status"] in DeployTrain.ACTIVE \
                and train["environment"] == name:
            return "testing"
        return "deployed" if name == PRODUCTION else "passed"
    if name == PRODUCTION and train["status"] == DeployTrain.Status.AWAITING_APPROVAL:
        return "approval"
    if train["environment"] == name and train["status"] in DeployTrain.ACTIVE:
        return "waiting"  # for a lock, or for its turn
    return "pending"


def _train_row(train, jobs, usual, authors, env_sha, now):
    active = train["status"] in DeployTrain.ACTIVE
    names = [] if train["kind"] == DeployTrain.Kind.ROLLBACK else train["environments"]
    stages, eta_seconds, eta_known = [], 0.0, active
    for name in [*names, PRODUCTION]:
        first, last = _stage_jobs(jobs, name)
        status = _stage_status(train, name, first, last)
        start, end = _span(first, last)
        elapsed = ((end or now) - start).total_seconds() if start else None
        typical = usual.get(name)
        if active and status not in ("passed", "deployed", "failed"):
            if status == "approval" or typical is None:
                eta_known = False
            else:
                eta_seconds += max(typical - (elapsed or 0), 0)
        deployed = status in ("passed", "deployed", "testing") or (status == "failed" and last)
        stages.append({
            "name": name, "status": status,
            "sha": (train["head_sha"] if deployed else env_sha.get(name, ""))[:10],
            "acceptance": (last["status"] if last else None),
            "started_at": _iso(start), "finished_at": _iso(end),
            "seconds": round(elapsed) if elapsed is not None else None,
            "usual_seconds": round(typical) if typical is not None else None,
            "slow": bool(elapsed and typical and elapsed > typical * 1.5 and status not in ("passed",
                                                                                             "deployed")),
        })
    waiting_since = train["approval_requested_at"]
    rows = []
    for author in authors.get(train["id"], []):
        blocking = (train["status"] == DeployTrain.Status.AWAITING_APPROVAL and not author["answer"]
                    and waiting_since is not None)
        rows.append({**author, "blocking_since": _iso(waiting_since) if blocking else None})
    return {
        "id": train["id"], "kind": train["kind"], "status": train["status"], "active": active,
        "status_label": DeployTrain.Status(train["status"]).label.lower(),
        "head_sha": train["head_sha"][:10], "environment": train["environment"],
        "message": _short(train["message"]),
        "url": reverse("pipeline:train", args=[train["repository__name"], train["id"]]),
        "created_at": _iso(train["created_at"]), "finished_at": _iso(train["finished_at"]),
        "stages": stages, "authors": rows,
        "eta": _iso(now + timedelta(seconds=eta_seconds)) if eta_known else None,
    }


def _authors(train_ids):
    """{train id: [{username, answer, answered_at}]} in the order of their first commit."""
    if not train_ids:
        return {}
    from pipeline.models import Approval

    answer = Approval.objects.filter(train=OuterRef("train_id"), user=OuterRef("author_id"))
    rows = (TrainCommit.objects.filter(train_id__in=train_ids, author__isnull=False)
            .order_by("train_id", "position")
            .annotate(answer=Subquery(answer.values("verdict")[:1]),
                      answered_at=Subquery(answer.values("created_at")[:1]))
            .values("train_id", "author_id", "author__username", "answer", "answered_at"))
    found, seen = defaultdict(list), set()
    for row in rows:
        if (row["train_id"], row["author_id"]) in seen:
            continue
        seen.add((row["train_id"], row["author_id"]))
        answered_at = row["answered_at"]
        if isinstance(answered_at, str):  # a subquery's datetime comes back as text on SQLite
            from django.utils.dateparse import parse_datetime

            answered_at = parse_datetime(answered_at)
        found[row["train_id"]].append({"username": row["author__username"], "answer": row["answer"],
                                       "answered_at": _iso(answered_at)})
    return found


def _next_ticks(repository, now):
    """{repository name: {"at": ISO or None, "enabled": bool}} from the django-celery-beat
    schedules "deploy train: <name>"."""
    from django_celery_beat.models import PeriodicTask

    prefix = task_name(repository) if repository is not None else task_name(_Named(""))
    tasks = PeriodicTask.objects.select_related("crontab")
    tasks = tasks.filter(name=prefix) if repository is not None else tasks.filter(name__startswith=prefix)
    ticks = {}
    for task in tasks:
        name = task.name[len(task_name(_Named(""))):]
        at = None
        if task.enabled and task.crontab_id:
            try:
                # The schedule's next moment after `now` (remaining_estimate would use its
                # own clock, a few microseconds later).
                last, delta, _ = task.crontab.schedule.remaining_delta(now)
                at = max(last + delta, now)
            except (ValueError, TypeError):
                at = None
        ticks[name] = {"at": _iso(at), "enabled": task.enabled}
    return ticks


class _Named:
    def __init__(self, name):
        self.name = name
