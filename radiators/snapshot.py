"""What a wall shows, as plain data: the one source for the page, `snapshot.json` and
the live socket (which sends it whole on connect, then only the panels that changed).

Contract (the socket layer relies on it):

    wall_snapshot(repository=None) -> {
        "repository": name or None (None: the wall of all repositories),
        "version": the server's version (a new one makes open pages reload),
        "now": ISO time it was taken,
        "panels": {panel name: JSON-ready data},   # compared panel by panel
    }

Panels are replaced whole on the screen, so each is small and self-contained:

- "layout": {"order": [panel names], "sound": bool} (WallLayout, edited in the admin).
- "branches": the default branch and every branch on a branch node (or building), one
  tile each, exceptions first: "failed"/"error" (broken since when, how many runs, the
  claim), then "flaky" (red only because of known flaky tests), then "no_results"; the
  green ones are one collapsed tile ("greens"). A running build never hides the result
  before it: `running` is shown beside the last result ("sick building").
- "builds": builds in progress with their jobs' progress, and the last finished ones.
- "train": per repository, the current train's strip (staging -> ... -> production,
  each stage with SHA, acceptance, time against its usual duration, ETA), its authors'
  answers (and for how long they have been blocking it) and the next tick's time.
- "environments": the SHA each environment runs (from its nodes).
- "tests": pass rate per suite over 24 h and 7 days, flaky and slowest tests (rollups).
- "nodes": node health.

Speed: whatever the history, a fixed number of queries (at most nine, plus one when a
red streak is longer than the window of recent builds read) on indexed, bounded reads:
never whole logs, commands or the TestResult table (`radiators.rollups` keeps the sums).
"""

import statistics
from collections import Counter, defaultdict
from datetime import timedelta

from django.db import connection
from django.db.models import CharField, Count, Exists, F, Min, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from nodes.models import Node
from pipeline.models import Build, DeployTrain, Job, TestResult, TrainCommit
from pipeline.services.train_schedule import task_name
from radiators.models import Claim, SuiteDay, TestCaseDay, WallLayout

PANELS = ["branches", "train", "builds", "environments", "tests", "nodes"]
RECENT_WINDOW = 300     # recent builds read to find each branch's state and red streak
MAX_TILES = 7           # branch tiles that stay readable; beyond: "+N more"
RUNNING_SHOWN = 5
FINISHED_SHOWN = 5
TRAIN_HISTORY = 10      # past trains whose stages give the usual durations
TRAINS_SHOWN = 2        # trains on the all-repositories wall
SUITES_SHOWN = 6
FLAKY_SHOWN = 5
SLOWEST_SHOWN = 5
PROBLEM_NODES_SHOWN = 5
MESSAGE_CHARS = 160
STAGES = ["staging", "preview", "preprod"]
PRODUCTION = "production"
RED = ("failed", "error")
ENDED = ("passed", "failed", "error")
BRANCH_KINDS = (Build.Kind.BRANCH, Build.Kind.MASTER)


def server_version():
    from django.conf import settings

    return getattr(settings, "TRAINYARD_VERSION", "dev")


def wall_snapshot(repository=None):
    now = timezone.now()
    builds = _recent_builds(repository)
    nodes = _nodes(repository)
    trains = _trains(repository)
    shown_trains = _shown_trains(trains)
    branches, wanted_builds = _branch_tiles(repository, builds, nodes, now)
    running = [b for b in builds if b["status"] in Build.ACTIVE][:RUNNING_SHOWN]
    finished = [b for b in builds if b["status"] not in Build.ACTIVE][:FINISHED_SHOWN]
    train_builds = {t[key]: t["id"] for t in trains for key in ("first_build", "last_build")
                    if t[key]}
    jobs = _jobs({b["id"] for b in running + finished} | wanted_builds | set(train_builds), now)
    for job in jobs:
        job["train_id"] = train_builds.get(job["build_id"])
    _mark_flaky(branches, jobs)
    return {
        "repository": repository.name if repository is not None else None,
        "version": server_version(),
        "now": now.isoformat(),
        "panels": {
            "layout": wall_layout(repository),
            "branches": _branches_panel(branches),
            "builds": _builds_panel(running, finished, jobs),
            "train": _train_panel(repository, trains, shown_trains, jobs, nodes, now),
            "environments": _environments_panel(nodes),
            "tests": _tests_panel(repository, now),
            "nodes": _nodes_panel(nodes),
        },
    }


def wall_layout(repository):
    """The wall's layout: from `repository.wall_layout` (select_related it to save the
    query) or, for the all-repositories wall, the layout without a repository."""
    if repository is None:
        layout = WallLayout.objects.filter(repository=None).first()
    else:
        try:
            layout = repository.wall_layout
        except WallLayout.DoesNotExist:
            layout = None
    order = [name for name in (layout.panels if layout else []) if name in PANELS] or PANELS
    return {"order": order, "sound": bool(layout and layout.sound)}


def _iso(value):
    return value.isoformat() if value else None


def _short(text):
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 1] + "…"


def _scoped(queryset, repository, field="repository"):
    return queryset if repository is None else queryset.filter(**{field: repository})


# Reads -------------------------------------------------------------------------------------

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
    """The jobs of the builds shown and of the trains read, in one query (by build id, on
    the job's build index). A red job also says how many tests failed in it, how many of
    those are not known to be flaky (flipped on one SHA in the last 7 days) and the first
    one's name. The red jobs are a UNION ALL branch of their own: the planner then counts
    the per-test subqueries for a few rows, not for every job (on PostgreSQL, a plan
    costed for every job crossed the JIT threshold, and compiling cost 25 ms)."""
    if not build_ids:
        return []
    failing = TestResult.objects.filter(job=OuterRef("pk"), outcome__in=RED)
    known_flaky = TestCaseDay.objects.filter(
        repository_id=OuterRef(OuterRef("build__repository_id")), suite=OuterRef("suite"),
        classname=OuterRef("classname"), name=OuterRef("name"),
        day__gte=timezone.localdate(now) - timedelta(days=7), flips__gt=0)

    def count(results):
        return Coalesce(Subquery(results.order_by().values("job_id").annotate(n=Count("*"))
                                 .values("n")[:1]), 0)

    columns = ("id", "build_id", "name", "stage", "status", "environment", "started_at",
               "finished_at", "failed_tests", "unexplained", "first_failed")
    jobs = Job.objects.filter(build_id__in=build_ids).order_by()
    others = (jobs.exclude(status__in=RED)
              .annotate(failed_tests=Value(0), unexplained=Value(0),
                        first_failed=Value(None, output_field=CharField())).values(*columns))
    red = (jobs.filter(status__in=RED)
           .annotate(failed_tests=count(failing),
                     unexplained=count(failing.filter(~Exists(known_flaky))),
                     first_failed=Subquery(failing.order_by("id").values("name")[:1]))
           .values(*columns))
    return sorted(others.union(red, all=True), key=lambda job: (job["build_id"], job["id"]))


# Branch tiles ------------------------------------------------------------------------------

def _branch_tiles(repository, builds, nodes, now):
    """One tile per branch that matters now: the default branch, a branch on a branch
    node, a branch building. Returns (tiles, ids of the builds whose jobs they need)."""
    by_branch = defaultdict(list)
    for build in builds:
        by_branch[(build["repository__name"], build["branch"])].append(build)
    keys = {}
    if repository is not None:
        keys[(repository.name, repository.default_branch)] = None
    for build in builds:
        if build["branch"] == build["repository__default_branch"] or build["status"] in Build.ACTIVE:
            keys.setdefault((build["repository__name"], build["branch"]), None)
    for node in nodes:
        if node["environment"] == Node.Environment.BRANCH and node["lease__branch"]:
            keys[(node["lease__repository__name"], node["lease__branch"])] = node
    window_full = len(builds) >= RECENT_WINDOW
    tiles, wanted, unfinished = [], set(), []
    for (repo, branch), node in keys.items():
        tile = _tile(repo, branch, by_branch.get((repo, branch), []), node)
        if tile["state"] in RED:
            wanted.add(tile["build_id"])
            if window_full and tile["streak_open"]:
                unfinished.append(tile)
        if tile["running"]:
            wanted.add(tile["running"]["build_id"])
        tiles.append(tile)
    if unfinished:
        _complete_streaks(unfinished)
    claims = _claims(repository)
    for tile in tiles:
        claim = claims.get((tile["repository"], tile["branch"]))
        if tile["state"] in RED and claim and claim["at"] >= tile["broken_since"]:
            tile["claim"] = {"by": claim["by"], "at": claim["at"], "note": claim["note"]}
        tile.pop("streak_open")
    return tiles, wanted


def _tile(repo, branch, builds, node):
    latest_ended = next((b for b in builds if b["status"] in ENDED), None)
    active = next((b for b in builds if b["status"] in Build.ACTIVE), None)
    state = latest_ended["status"] if latest_ended else "no_results"
    streak, since, open_ = 0, None, False
    if state in RED:
        open_ = True
        for build in builds:
            if build["status"] == "passed":
                open_ = False
                break
            if build["status"] in RED:
                streak += 1
                since = build["finished_at"] or build["created_at"]
    shown = latest_ended or active
    return {
        "key": f"{repo}:{branch}",
        "repository": repo,
        "branch": branch,
        "state": state,
        "build_id": latest_ended["id"] if latest_ended else None,
        "sha": (shown["sha"] if shown else (node or {}).get("current_sha", ""))[:10],
        "at": _iso(latest_ended["finished_at"] or latest_ended["created_at"]) if latest_ended else None,
        "message": _short(latest_ended["message"]) if state in RED else "",
        "broken_since": _iso(since),
        "broken_runs": streak,
        "streak_open": open_,
        "running": ({"build_id": active["id"], "sha": active["sha"][:10], "status": active["status"],
                     "started_at": _iso(active["started_at"] or active["created_at"])}
                    if active else None),
        "node": ({"name": node["name"], "health": node["health"] if node["enabled"] else "disabled",
                  "changed_at": _iso(node["last_changed_at"])} if node else None),
        "claim": None,
        "flaky_tests": [],
    }


def _complete_streaks(tiles):
    """Red streaks longer than the window of recent builds: counted in one query (the red
    builds after each branch's last green one)."""
    last_green = (Build.objects.filter(repository__name=OuterRef("repository__name"),
                                       branch=OuterRef("branch"), status="passed",
                                       kind__in=BRANCH_KINDS).order_by("-id").values("id")[:1])
    which = Q()
    for tile in tiles:
        which |= Q(repository__name=tile["repository"], branch=tile["branch"])
    rows = (Build.objects.filter(which, kind__in=BRANCH_KINDS, status__in=RED)
            .annotate(last_green=Coalesce(Subquery(last_green), 0))
            .filter(id__gt=F("last_green")).values("repository__name", "branch")
            .annotate(runs=Count("id"), since=Min("finished_at")).order_by())
    found = {(r["repository__name"], r["branch"]): r for r in rows}
    for tile in tiles:
        row = found.get((tile["repository"], tile["branch"]))
        if row:
            tile["broken_runs"] = row["runs"]
            tile["broken_since"] = _iso(row["since"]) or tile["broken_since"]


def _claims(repository):
    rows = _scoped(Claim.objects.filter(released_at=None), repository).values(
        "repository__name", "branch", "user__username", "created_at", "note")
    return {(r["repository__name"], r["branch"]): {"by": r["user__username"],
                                                   "at": _iso(r["created_at"]), "note": r["note"]}
            for r in rows}


def _mark_flaky(tiles, jobs):
    """A red build whose every red job failed only on tests known to be flaky is "flaky",
    shown apart from a real break."""
    by_build = defaultdict(list)
    for job in jobs:
        by_build[job["build_id"]].append(job)
    for tile in tiles:
        if tile["state"] != "failed":
            continue
        red = [j for j in by_build.get(tile["build_id"], []) if j["status"] in RED]
        if red and all(j["failed_tests"] and not j["unexplained"] for j in red):
            tile["state"] = "flaky"
            tile["flaky_tests"] = sorted({j["first_failed"] for j in red if j["first_failed"]})


RANK = {"failed": 0, "error": 0, "flaky": 1, "no_results": 2, "passed": 3}


def _branches_panel(tiles):
    exceptions = sorted((t for t in tiles if t["state"] != "passed"),
                        key=lambda t: (RANK[t["state"]], t["broken_since"] or "~", t["key"]))
    greens = sorted((t for t in tiles if t["state"] == "passed"), key=lambda t: t["key"])
    red = sum(t["state"] in RED for t in tiles)
    if red:
        state = "red"
    elif any(t["state"] == "flaky" for t in tiles):
        state = "flaky"
    elif greens and not exceptions:
        state = "all_green"
    elif greens:
        state = "green_with_gaps"  # nothing red, but some branch has no results yet
    else:
        state = "no_results"
    return {
        "state": state,
        "red": red,
        "tiles": exceptions[:MAX_TILES],
        "more": max(0, len(exceptions) - MAX_TILES),
        "greens": {"count": len(greens), "names": [t["key"] for t in greens[:6]],
                   "building": sum(1 for t in greens if t["running"])},
    }


# Builds --------------------------------------------------------------------------------------

def _builds_panel(running, finished, jobs):
    by_build = defaultdict(list)
    for job in jobs:
        by_build[job["build_id"]].append(job)

    def row(build, with_jobs):
        jobs_of = by_build.get(build["id"], [])
        data = {"id": build["id"], "repository": build["repository__name"],
                "branch": build["branch"], "sha": build["sha"][:10], "kind": build["kind"],
                "status": build["status"], "created_at": _iso(build["created_at"]),
                "started_at": _iso(build["started_at"]), "finished_at": _iso(build["finished_at"]),
                "url": reverse("pipeline:build", args=[build["id"]])}
        if with_jobs:
            data["jobs"] = [{"name": j["name"], "status": j["status"]} for j in jobs_of]
            data["done"] = sum(j["status"] in Job.ENDED for j in jobs_of)
        else:
            data["message"] = _short(build["message"]) if build["status"] in RED else ""
        return data

    return {"running": [row(b, True) for b in running], "finished": [row(b, False) for b in finished]}


# Trains --------------------------------------------------------------------------------------

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


# Environments, nodes ---------------------------------------------------------------------

def _environment_shas(nodes):
    shas = defaultdict(Counter)
    for node in nodes:
        if node["environment"] != Node.Environment.BRANCH and node["enabled"] and node["current_sha"]:
            shas[node["environment"]][node["current_sha"]] += 1
    return {env: counter.most_common(1)[0][0] for env, counter in shas.items()}


def _environments_panel(nodes):
    rows = []
    for env in [*STAGES, PRODUCTION]:
        of_env = [n for n in nodes if n["environment"] == env]
        if not of_env:
            continue
        shas = Counter(n["current_sha"] for n in of_env if n["enabled"] and n["current_sha"])
        top = shas.most_common(1)[0][0] if shas else ""
        changed = max((n["last_changed_at"] for n in of_env if n["last_changed_at"]), default=None)
        rows.append({"name": env, "sha": top[:10], "mixed": len(shas) > 1, "nodes": len(of_env),
                     "healthy": sum(n["health"] == "healthy" and n["enabled"] for n in of_env),
                     "changed_at": _iso(changed)})
    return {"environments": rows}


def _nodes_panel(nodes):
    counts = Counter(n["health"] if n["enabled"] else "disabled" for n in nodes)
    problems = [{"name": n["name"], "environment": n["environment"], "health": n["health"],
                 "message": _short(n["health_message"])}
                for n in nodes if n["enabled"] and n["health"] in ("unhealthy", "degraded")]
    return {"total": len(nodes), "counts": dict(sorted(counts.items())),
            "draining": sum(n["draining"] for n in nodes),
            "problems": problems[:PROBLEM_NODES_SHOWN],
            "more": max(0, len(problems) - PROBLEM_NODES_SHOWN)}


# Test health ------------------------------------------------------------------------------

def _tests_panel(repository, now):
    """Suites' pass rates (24 h: the days the last 24 h touch; 7 days), flaky tests
    (flips) and slowest tests (mean duration), from the rollups in one statement."""
    week = timezone.localdate(now) - timedelta(days=6)
    day = timezone.localdate(now - timedelta(hours=24))
    suite_table, case_table = SuiteDay._meta.db_table, TestCaseDay._meta.db_table
    where, params = "day >= %s", [week]
    if repository is not None:
        where += " AND repository_id = %s"
        params.append(repository.pk)
    # Only table names are formatted in (from the models); every value is a parameter.
    sql = f"""
        WITH cases AS (
            SELECT suite, classname, name, SUM(runs) AS runs, SUM(failures) AS failures,
                   SUM(flips) AS flips, SUM(duration_total) AS total, MAX(duration_max) AS longest
            FROM {case_table} WHERE {where} GROUP BY suite, classname, name
        ), ranked AS (
            SELECT cases.*,
                   ROW_NUMBER() OVER (ORDER BY total / runs DESC, name) AS slow_rank,
                   ROW_NUMBER() OVER (ORDER BY flips DESC, failures DESC, name) AS flaky_rank
            FROM cases WHERE runs > 0
        )
        SELECT 'case', suite, classname, name, runs, failures, flips, total, longest,
               slow_rank, flaky_rank
        FROM ranked WHERE slow_rank <= %s OR (flips > 0 AND flaky_rank <= %s)
        UNION ALL
        SELECT 'suite', suite, '', '', SUM(runs), SUM(failures), SUM(skipped),
               SUM(CASE WHEN day >= %s THEN runs ELSE 0 END),
               SUM(CASE WHEN day >= %s THEN failures ELSE 0 END),
               SUM(CASE WHEN day >= %s THEN skipped ELSE 0 END), 0
        FROM {suite_table} WHERE {where} GROUP BY suite
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, SLOWEST_SHOWN, FLAKY_SHOWN, day, day, day, *params])
        rows = cursor.fetchall()
    suites, slowest, flaky = [], [], []
    for kind, suite, classname, name, a, b, c, d, e, f, g in rows:
        if kind == "suite":
            suites.append({"suite": suite or "(no suite)", "rate_7d": _rate(a, b, c),
                           "runs_7d": int(a - c), "rate_24h": _rate(d, e, f), "runs_24h": int(d - f)})
            continue
        test = {"name": name, "classname": classname, "suite": suite}
        if f <= SLOWEST_SHOWN:
            slowest.append({**test, "mean": round(d / a, 2), "longest": round(e, 2), "rank": f})
        if c > 0 and g <= FLAKY_SHOWN:
            flaky.append({**test, "flips": int(c), "runs": int(a), "failures": int(b), "rank": g})
    suites.sort(key=lambda s: (s["rate_7d"] if s["rate_7d"] is not None else 2, s["suite"]))
    slowest.sort(key=lambda t: t.pop("rank"))
    flaky.sort(key=lambda t: t.pop("rank"))
    return {"state": "results" if suites else "no_results", "suites": suites[:SUITES_SHOWN],
            "more_suites": max(0, len(suites) - SUITES_SHOWN), "flaky": flaky, "slowest": slowest}


def _rate(runs, failures, skipped):
    counted = (runs or 0) - (skipped or 0)
    if counted <= 0:
        return None  # no results: never shown as a pass rate
    return round(100.0 * (counted - (failures or 0)) / counted, 1)
