"""What a wall shows, as plain data: the one source for the page, `snapshot.json` and
the live socket (which sends it whole on connect, then only the panels that changed).

Contract (the socket layer relies on it):

    wall_snapshot(repository=None, panels=None) -> {
        "repository": name or None (None: the wall of all repositories),
        "version": the server's version (a new one makes open pages reload),
        "now": ISO time it was taken,
        "panels": {panel name: JSON-ready data},   # compared panel by panel
    }

With `panels` (a set of names) only those are read and returned: the live socket re-reads
what an event can change (`panels_changed_by`), and everything on its heartbeat.

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

import functools
import hashlib
from pathlib import Path

from django.utils import timezone

from pipeline.models import Build
from radiators.models import WallLayout

from ._branches import _branch_tiles, _branches_panel, _mark_flaky
from ._common import FINISHED_SHOWN, MAX_TILES, PANELS, RECENT_WINDOW, RUNNING_SHOWN
from ._panels import _builds_panel, _environments_panel, _nodes_panel, _tests_panel
from ._reads import _jobs, _nodes, _recent_builds, _shown_trains, _trains
from ._train_strip import _train_panel

__all__ = ["MAX_TILES", "PANELS", "RECENT_WINDOW", "panels_changed_by", "server_version",
           "wall_layout", "wall_snapshot"]


def server_version():
    """What open walls compare to know they run old code: TRAINYARD_VERSION when the
    deployment sets one, else a digest of the wall's own code (its page, script and
    styles), so a server started with a changed wall makes every open page reload."""
    from django.conf import settings

    return getattr(settings, "TRAINYARD_VERSION", None) or _code_digest()


@functools.cache
def _code_digest():
    from django.contrib.staticfiles import finders
    from django.template.loader import get_template

    digest = hashlib.sha256()
    paths = [finders.find(f"radiators/{name}") for name in ("live.js", "radiator.js",
                                                             "radiator.css")]
    paths.append(get_template("radiators/wall.html").origin.name)
    for path in paths:
        if path:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def wall_snapshot(repository=None, panels=None):
    """The wall's snapshot; with `panels` (names), only those panels are read and in it."""
    def wanted(*names):
        return panels is None or any(name in panels for name in names)

    now = timezone.now()
    builds = _recent_builds(repository) if wanted("branches", "builds") else []
    nodes = (_nodes(repository) if wanted("branches", "train", "environments", "nodes")
             else [])
    trains = _trains(repository) if wanted("train") else []
    branches, wanted_builds = (_branch_tiles(repository, builds, nodes, now)
                               if wanted("branches") else ([], set()))
    running = [b for b in builds if b["status"] in Build.ACTIVE][:RUNNING_SHOWN]
    finished = [b for b in builds if b["status"] not in Build.ACTIVE][:FINISHED_SHOWN]
    train_builds = {t[key]: t["id"] for t in trains for key in ("first_build", "last_build")
                    if t[key]}
    jobs = _jobs({b["id"] for b in running + finished} | wanted_builds | set(train_builds), now)
    for job in jobs:
        job["train_id"] = train_builds.get(job["build_id"])
    _mark_flaky(branches, jobs)
    reads = {
        "layout": lambda: wall_layout(repository),
        "branches": lambda: _branches_panel(branches),
        "builds": lambda: _builds_panel(running, finished, jobs),
        "train": lambda: _train_panel(repository, trains, _shown_trains(trains), jobs, nodes, now),
        "environments": lambda: _environments_panel(nodes),
        "tests": lambda: _tests_panel(repository, now),
        "nodes": lambda: _nodes_panel(nodes),
    }
    return {
        "repository": repository.name if repository is not None else None,
        "version": server_version(),
        "now": now.isoformat(),
        "panels": {name: read() for name, read in reads.items() if wanted(name)},
    }


def panels_changed_by(kind, on_train):
    """The panels an event can change, from its kind and whether it concerns a train; None:
    any of them. A build or job that rides no train changes only the branch tiles and the
    builds (a job's end also the test health: its results are stored with it); anything
    else (nodes, deployments, trains, claims, layouts, repositories) re-reads them all."""
    subject = kind.split(".", 1)[0]
    if on_train or subject not in ("build", "job"):
        return None
    return {"branches", "builds", "tests"} if subject == "job" else {"branches", "builds"}


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
