"""The branch tiles: exceptions first, red streaks, claims, flaky apart, "+N more"."""

from collections import defaultdict

from django.db.models import Count, F, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from nodes.models import Node
from pipeline.models import Build
from radiators.models import Claim

from ._common import BRANCH_KINDS, ENDED, MAX_TILES, RECENT_WINDOW, RED, _iso, _scoped, _short


def _branch_tiles(repository, builds, nodes, now):
    """One tile per branch that matters now: the default branch, a branch on a branch
    node, a branch building. Returns (tiles, ids of the red builds whose jobs say whether
    known flaky tests explain them)."""
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
