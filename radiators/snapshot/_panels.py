"""Builds, environments, nodes and test health panels."""

from collections import Counter, defaultdict
from datetime import timedelta

from django.db import connection
from django.urls import reverse
from django.utils import timezone

from nodes.models import Node
from pipeline.models import Job
from radiators.models import SuiteDay, TestCaseDay

from ._common import (
    FLAKY_SHOWN,
    PROBLEM_NODES_SHOWN,
    PRODUCTION,
    RED,
    SLOWEST_SHOWN,
    STAGES,
    SUITES_SHOWN,
    _iso,
    _short,
)


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
