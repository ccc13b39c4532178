#!/usr/bin/env python
"""Build overhead: the demo's branch build, through Trainyard and as a bare script.

    .venv/bin/python bench/build_overhead.py [--builds 1,20] [--repeat 3] [--concurrency 8]

- trainyard: the demo repository (`pipeline.demo`), local branch nodes, a real Celery
  worker in threads of this process (memory broker) and `request_build`. Each build runs
  lint, unit and integration, each in its own checkout, in the bubblewrap sandbox, after
  a cache hit of the demo's `.venv`; then the deploy to a local node (git archive,
  unpack, install, switch, start, health) and the smoke tests in a checkout of their
  own. Every row, event and log chunk is written as in production.
- bare: the same commands (the argv of the demo's trainyard.yml) in the same order and
  parallelism as plain subprocesses: one checkout (`git worktree add`) of the SHA with the
  warm `.venv` that the spec's `setup` made once (a symlink to it; `--bare-venv copy`:
  `tar -x` of it), the three checks at once, the deploy steps against a node folder and
  port of its own, the smoke tests.

Every round builds new commits (one trivial extra commit per branch), so each deploy
unpacks a new release and replaces the app the round before started, on both sides.
Before measuring, one untimed round of each side fills the setup cache and the nodes.
With N builds at once, Trainyard's worker runs `--concurrency` threads within its limits
(JOBS_PER_BUILD, JOBS_PER_REPOSITORY); the bare script gets a thread pool of the same
size and at most JOBS_PER_REPOSITORY of its commands at once. Prints per-stage wall times
of one build and Trainyard's overhead, the wall times of N builds and their ratio, the
load average of every run and whether the goals are met. Everything it starts stops at
the end, and its folder (and database, with DATABASE_URL) is removed.
"""

import argparse
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fanout_trainyard import Database, git  # noqa: E402
from machine import machine_busy, settle  # noqa: E402

GOAL_OVERHEAD = 0.5  # s, one build, with the sandbox, per-job checkouts and a warm cache
GOAL_RATIO = 1.3  # 20 builds at once vs the bare script's same work
QUEUES = ["default", "checks", "deploys"]
BUILD_TIMEOUT = 900
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"  # the PATH every sandboxed command gets
LOCAL_NODE_PATH = "/usr/local/bin:/usr/bin:/bin"  # what install and run get on a local node
STAGES = ("checks", "deploy", "smoke")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", default="1,20",
                        help="builds at once, comma-separated (default 1,20: one, then 20)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N and side (median shown)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the worker's threads, and the bare script's pool (8)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for the machine to "
                             "be idle (other processes under a quarter of a core); 0: do not wait")
    parser.add_argument("--bare-venv", choices=("link", "copy"), default="link",
                        help="how each bare build gets the warm .venv: link (a symlink to it, as "
                             "Trainyard's cache hit shows it in place, read-only: default) or copy "
                             "(tar -x of it, as Trainyard's cache restored it before)")
    parser.add_argument("--dir", default=None,
                        help="where to make the bench folder: both sides' checkouts, the cache, the "
                             "nodes, SQLite (default: the system's temporary folder; e.g. /dev/shm "
                             "to take the disk out of both sides)")
    parser.add_argument("--keep", action="store_true", help="keep the bench folder")
    args = parser.parse_args(argv)
    args.counts = sorted({int(n) for n in args.builds.split(",") if n.strip()})
    if not args.counts or args.counts[0] < 1 or args.repeat < 1 or args.concurrency < 1:
        parser.error("--builds, --repeat and --concurrency need positive numbers")
    return args


# Measuring (as bench/deploy_fanout.py) -------------------------------------------------------

class Sample:
    def __init__(self, side, count, busy_before):
        self.side, self.count, self.busy_before = side, count, busy_before
        self.load = os.getloadavg()[0]
        self.stages, self.jobs = {}, {}
        self._machine = machine_busy()

    def stop(self, wall):
        self.wall = wall
        # All of the machine's CPU: a process cannot count its sandboxed commands' own (bwrap's
        # pid namespace reaps them), so this includes whatever else ran meanwhile.
        self.cpu = machine_busy() - self._machine
        return self


# The world both sides share -----------------------------------------------------------------

def setup_django(folder):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
    os.environ["TRAINYARD_EMBEDDED_WORKER"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Broker and channel layer in this process: nobody's Redis is touched.
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.pop("REDIS_URL", None)
    for name in ("TRAINYARD_WORKSPACE_DIR", "TRAINYARD_CACHE_DIR", "TRAINYARD_NODE_DIR"):
        os.environ.pop(name, None)  # all of them under the bench's own var dir
    database = Database(folder)  # TRAINYARD_VAR_DIR; a database of its own with DATABASE_URL
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)  # "No hostname": memory://
    return database


def free_ports(count, first=20100):
    """The first of `count` consecutive loopback ports that are all free now."""
    import socket

    for start in range(first, 60000 - count, count + 7):
        held = []
        try:
            for port in range(start, start + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


class Pusher:
    """A clone of the demo repository that pushes one trivial commit per branch and round:
    new SHAs, same user work (the file is not Python and no test reads it)."""

    def __init__(self, folder, origin):
        self.origin, self.path, self.round = origin, folder / "pusher", 0
        git("clone", "-q", str(origin), str(self.path), cwd=folder)

    def push(self, branches):
        self.round += 1
        for branch in branches:
            known = git("branch", "--list", branch, cwd=self.path)
            git("checkout", "-q", *([branch] if known else ["-b", branch, "origin/feature/hello"]),
                cwd=self.path)
            (self.path / "bench-round.txt").write_text(f"round {self.round} of {branch}\n")
            git("add", "bench-round.txt", cwd=self.path)
            git("commit", "-q", "-m", f"Bench round {self.round}", cwd=self.path)
        git("push", "-q", "-f", "origin", *branches, cwd=self.path)
        return [git("rev-parse", branch, cwd=self.path) for branch in branches]


def branches_for(count):
    return ["feature/hello"] if count == 1 else [f"bench/{i:02d}" for i in range(1, count + 1)]


def stop_app(base, port):
    """The demo runs as a `deploy.run` process, the leader of its own process group, its pid
    in shared/trainyard/app.pid (Trainyard's, and the bare script's copy of it)."""
    pid_file = Path(base) / "shared" / "trainyard" / "app.pid"
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


# Trainyard ----------------------------------------------------------------------------------

_CACHE_HIT = re.compile(r"cache hit: .*?, ([\d.]+) s\)")
_COMMAND = re.compile(r"after ([\d.]+)s\]")


class Trainyard:
    def __init__(self, origin, count, first_port, folder):
        from nodes.services.pool import ensure_local_pool
        from pipeline.models import Repository

        self.repository = Repository.objects.create(name="demo", clone_url=str(origin))
        self.nodes = ensure_local_pool(folder / "nodes", count=count, first_port=first_port)

    def run(self, branches, busy_before):
        """Request a build of each branch's head and wait until every one has ended."""
        from pipeline.models import Build
        from pipeline.services.builds import request_build

        sample = Sample("trainyard", len(branches), busy_before)
        started = time.time()
        ids = []
        for branch in branches:
            build, created = request_build(self.repository, branch, via="bench")
            if not created:
                raise RuntimeError(f"{branch}: a build of {build.sha[:10]} was already running")
            ids.append(build.pk)
        deadline = time.monotonic() + BUILD_TIMEOUT
        # The times come from the rows, so a slow poll costs no accuracy, and little CPU.
        while Build.objects.filter(pk__in=ids, status__in=Build.ACTIVE).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Trainyard builds {ids} did not end in {BUILD_TIMEOUT} s")
            time.sleep(0.25)
        builds = list(Build.objects.filter(pk__in=ids).order_by("pk"))
        sample.stop(max(b.finished_at.timestamp() for b in builds) - started)
        for build in builds:
            _check_passed(build)
        if len(builds) == 1:
            sample.stages, sample.jobs = _stages(builds[0], started)
        return sample

    def stop_apps(self):
        for node in self.nodes:
            stop_app(node.base_path, node.app_port)


def _job_log(job):
    return "".join(job.log_chunks.order_by("seq").values_list("text", flat=True))


def _check_passed(build):
    if build.status == "passed":
        return
    lines = [f"Trainyard build #{build.pk} of {build.branch} {build.status}: {build.message}"]
    for job in build.jobs.exclude(status="passed"):
        lines += [f"  {job.name}: {job.status}: {job.message}", _job_log(job)[-3000:]]
    raise RuntimeError("\n".join(lines))


def _stages(build, started):
    """Stage ends from the rows: the last check, the deploy job, the build. Per job: when it
    started after its stage could, how long it ran, its cache restore and its command."""
    jobs = list(build.jobs.all())
    ends = {"checks": max(j.finished_at.timestamp() for j in jobs if j.stage == "checks"),
            "deploy": next(j.finished_at.timestamp() for j in jobs if j.stage == "deploy"),
            "smoke": build.finished_at.timestamp()}
    starts = {"checks": started, "deploy": ends["checks"], "smoke": ends["deploy"]}
    stages = {stage: ends[stage] - starts[stage] for stage in STAGES}
    details = {}
    for job in jobs:
        log = _job_log(job)
        restored, command = _CACHE_HIT.findall(log), _COMMAND.findall(log)
        details[job.name] = {
            "wait": job.started_at.timestamp() - starts[job.stage],
            "run": (job.finished_at - job.started_at).total_seconds(),
            "cache": float(restored[-1]) if restored else None,
            "command": float(command[-1]) if command else None,
        }
    return stages, details


# Bare ---------------------------------------------------------------------------------------

class Bare:
    """The same user work without Trainyard: plain subprocesses, no database, no sandbox."""

    def __init__(self, folder, origin, sha, count, first_port, concurrency, limit, venv_mode):
        from pipeline.spec import parse_spec

        self.folder, self.origin, self.concurrency = folder / "bare", origin, concurrency
        self.spec = parse_spec(git("show", f"{sha}:trainyard.yml", cwd=origin))
        self.commands = threading.Semaphore(limit)  # JOBS_PER_REPOSITORY
        self.nodes = [(self.folder / "nodes" / f"node-{i:02d}", first_port + i) for i in range(count)]
        self.round, self.venv_mode = 0, venv_mode
        self.worktrees = threading.Lock()
        self.folder.mkdir(parents=True)
        self.warm = self._make_venv(sha)

    def _env(self, home, command=None, **extra):
        return {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "CI": "true", "HOME": str(home),
                **self.spec.env, **(command.env if command else {}), **extra}

    def _make_venv(self, sha):
        """Untimed: the spec's `setup` once, in a checkout kept for it (link), or kept as a
        tar as Trainyard's cache keeps it (copy)."""
        work = self.folder / "setup"
        self._checkout(sha, self._src(work))
        (work / "home").mkdir()
        for command in self.spec.setup:
            _run(command.argv, cwd=self._src(work), env=self._env(work / "home"))
        if self.venv_mode == "link":
            return self._src(work)
        archive = self.folder / "venv.tar"
        _run(["tar", "-cf", str(archive), "-C", str(self._src(work)), *self.spec.cache["paths"]])
        shutil.rmtree(work)
        return archive

    def _checkout(self, sha, src):
        """A worktree of the repository (the cheapest checkout git has: 35 ms here, where
        `clone --shared` and a checkout take 110 ms and Trainyard's own 55 ms). One at a
        time: git 2.39 reads the other worktrees' records while adding one, and fails on a
        half-written one ("failed to read .git/worktrees/<name>/commondir")."""
        with self.worktrees:
            proc = subprocess.run(["git", "worktree", "add", "-q", "--detach", str(src), sha],
                                  cwd=self.origin, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"bare: git worktree add {src} failed: {proc.stderr.strip()}")

    @staticmethod
    def _src(work):
        """The checkout: a name of its own, which git also gives the worktree's records."""
        return work / f"src-{work.parent.name}-{work.name}"

    def run(self, shas, busy_before):
        self.round += 1
        sample = Sample("bare", len(shas), busy_before)
        sample.venv = self.venv_mode
        started = time.time()
        records = [{} for _ in shas]
        with ThreadPoolExecutor(self.concurrency) as pool, ThreadPoolExecutor(len(shas)) as drivers:
            runs = [drivers.submit(self._build, pool, i, sha, records[i]) for i, sha in enumerate(shas)]
            for run in runs:
                run.result()
        sample.stop(max(r["smoke"] for r in records) - started)
        if len(shas) == 1:
            times = records[0]
            sample.stages = {"checks": times["checks"] - started,
                             "deploy": times["deploy"] - times["checks"],
                             "smoke": times["smoke"] - times["deploy"]}
            sample.jobs = {name: {"run": took} for name, took in times["took"].items()}
        shutil.rmtree(self.folder / f"round-{self.round}", ignore_errors=True)
        git("worktree", "prune", cwd=self.origin)
        return sample

    def _build(self, pool, index, sha, times):
        """One build's steps, each run by the pool (as Celery runs jobs), in order."""
        work = self.folder / f"round-{self.round}" / f"build-{index:02d}"
        times["took"] = took = {}

        def job(name, work_fn, *args, limited=True):
            def timed():
                begun = time.perf_counter()
                if limited:
                    with self.commands:
                        work_fn(*args)
                else:
                    work_fn(*args)
                took[name] = time.perf_counter() - begun
            return pool.submit(timed)

        job("prepare", self._prepare, work, sha).result()
        checks = [job(name, self._command, work, command) for name, command in self.spec.checks.items()]
        for future in checks:
            future.result()
        times["checks"] = time.time()
        base, port = self.nodes[index]
        job("deploy", self._deploy, base, port, sha, work, limited=False).result()
        times["deploy"] = time.time()
        job("smoke", self._command, work, self.spec.smoke, f"http://127.0.0.1:{port}/").result()
        times["smoke"] = time.time()

    def _prepare(self, work, sha):
        """One checkout, and the warm `.venv` linked or copied into it."""
        self._checkout(sha, self._src(work))
        (work / "home").mkdir()
        if self.venv_mode == "link":
            for rel in self.spec.cache["paths"]:
                (self._src(work) / rel).symlink_to(self.warm / rel)
        else:
            _run(["tar", "-xpf", str(self.warm), "--no-same-owner", "-C", str(self._src(work))])

    def _command(self, work, command, target_url=None):
        extra = {"TARGET_URL": target_url} if target_url else {}
        _run(command.argv, cwd=self._src(work), env=self._env(work / "home", command, **extra))

    def _deploy(self, base, port, sha, work):
        """git archive, unpack, install, switch `current`, stop and run the app, poll health."""
        release, archive = base / "releases" / sha, work / f"{sha}.tar.gz"
        git("archive", "--format=tar.gz", "-o", str(archive), sha, cwd=self.origin)
        release.mkdir(parents=True)
        (base / "shared").mkdir(exist_ok=True)
        _run(["tar", "-xzf", str(archive), "-C", str(release)])
        archive.unlink()
        (release / "REVISION").write_text(f"{sha}\n")
        # What Trainyard gives install and run on a local node (nodes.services.deploys).
        env = {"HOST": "127.0.0.1", "PORT": str(port), "APP_STATE_DIR": f"{base}/shared/state",
               "PATH": LOCAL_NODE_PATH,
               "HOME": f"{base}/shared", "LANG": "C.UTF-8"}
        _run(self.spec.deploy["install"].argv, cwd=release, env=env)
        link = base / "current.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(f"releases/{sha}")
        link.replace(base / "current")
        stop_app(base, port)  # the previous release's process, as Trainyard stops it
        state = base / "shared" / "trainyard"
        state.mkdir(parents=True, exist_ok=True)
        with open(state / "app.log", "ab") as log:
            app = subprocess.Popen(self.spec.deploy["run"].argv, cwd=base / "current", env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        (state / "app.pid").write_text(f"{app.pid}\n")
        url = self.spec.deploy["health"]["url"].replace("{host}", "127.0.0.1")
        _wait_healthy(url.replace("{port}", str(port)))

    def stop_apps(self):
        for base, port in self.nodes:
            stop_app(base, port)


def _run(argv, *, cwd=None, env=None):
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"bare: {' '.join(map(str, argv))} exited {proc.returncode}:\n"
                           f"{proc.stdout.decode(errors='replace')[-3000:]}")


def _wait_healthy(url, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _DIRECT.open(url, timeout=5) as response:
                if 200 <= response.status < 300:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare: {url} did not answer in {timeout} s")
        time.sleep(interval)


# Reporting ----------------------------------------------------------------------------------

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, width=8, digits=2):
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def single_table(samples):
    ours = [s for s in samples if s.count == 1 and s.side == "trainyard"]
    theirs = [s for s in samples if s.count == 1 and s.side == "bare"]
    if not ours or not theirs:
        return [], None
    lines = [f"one build (median of {len(ours)}):",
             f"  {'stage':<26} {'trainyard s':>11} {'bare s':>8} {'overhead s':>10}  runs (trainyard / bare)"]
    rows = [(stage, lambda s, stage=stage: s.stages[stage]) for stage in STAGES]
    rows += [("total", lambda s: s.wall),
             ("outside the deploy", lambda s: s.stages["checks"] + s.stages["smoke"]),
             ("machine CPU (CPU s)", lambda s: s.cpu)]
    overheads = {}
    for name, value in rows:
        a, b = _median(value(s) for s in ours), _median(value(s) for s in theirs)
        overheads[name] = a - b
        runs = " ".join(f"{value(s):.2f}" for s in ours) + " / " + " ".join(f"{value(s):.2f}" for s in theirs)
        lines.append(f"  {name:<26} {a:>11.2f} {b:>8.2f} {a - b:>10.2f}  {runs}")
    lines += ["", "  per job (median s): trainyard started after its stage could, ran (of which the "
              "cache hit, the command), bare ran",
              f"  {'job':<12} {'started':>8} {'ran':>8} {'cache':>8} {'command':>8} {'bare ran':>8}"]
    for name in ("lint", "unit", "integration", "deploy", "smoke"):
        lines.append(f"  {name:<12} {_fmt(_job(ours, name, 'wait'))} {_fmt(_job(ours, name, 'run'))} "
                     f"{_fmt(_job(ours, name, 'cache'))} {_fmt(_job(ours, name, 'command'), digits=1)} "
                     f"{_fmt(_job(theirs, name, 'run'))}")
    lines.append(f"  {'(bare: one checkout + .venv ' + _VENV_WORDS[theirs[0].venv] + ')':<45} "
                 f"{_fmt(_job(theirs, 'prepare', 'run'))}")
    return lines, overheads


_VENV_WORDS = {"link": "linked", "copy": "copied"}


def _job(samples, name, key):
    return _median(s.jobs.get(name, {}).get(key) for s in samples)


def concurrent_table(samples, limits):
    lines, ratios = [], {}
    for count in sorted({s.count for s in samples if s.count > 1}):
        these = {side: [s for s in samples if s.count == count and s.side == side]
                 for side in ("trainyard", "bare")}
        walls = {side: _median(s.wall for s in runs) for side, runs in these.items()}
        ratios[count] = walls["trainyard"] / walls["bare"]
        lines += [f"{count} builds at once (median of {len(these['trainyard'])}; {limits}):",
                  f"  {'side':<10} {'wall s':>7} {'machine CPU s':>13} {'load avg':>8}  runs (wall s)"]
        for side, runs in these.items():
            lines.append(f"  {side:<10} {walls[side]:>7.2f} {_median(s.cpu for s in runs):>13.2f} "
                         f"{_median(s.load for s in runs):>8.2f}  "
                         + " ".join(f"{s.wall:.2f}" for s in runs))
        lines.append(f"  trainyard / bare = {ratios[count]:.2f}")
    return lines, ratios


def goal_lines(overheads, ratios):
    lines = []
    if overheads:
        lines.append(_goal(f"one build: overhead {overheads['total']:.2f} s, outside the deploy "
                           f"{overheads['outside the deploy']:.2f} s (goal <= {GOAL_OVERHEAD} s)",
                           overheads["total"] <= GOAL_OVERHEAD))
    for count, ratio in ratios.items():
        lines.append(_goal(f"{count} builds: trainyard / bare = {ratio:.2f} (goal <= {GOAL_RATIO})",
                           ratio <= GOAL_RATIO))
    return lines


def _goal(text, met):
    return f"  [{'met' if met else 'MISSED'}] {text}"


def machine_lines(database, mode, folder, bare_venv):
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    return [f"machine: {os.cpu_count()} CPU ({cpu}), {platform.system()} {platform.release()}",
            f"python {platform.python_version()}, Django {version('Django')}, celery {version('celery')}, "
            f"{bwrap or 'no bwrap'}, git {git('--version', cwd=ROOT).split()[-1]}",
            f"database: {database.kind}; broker: memory:// (this process); sandbox: {mode}",
            f"bench folder: {folder} ({_filesystem(folder)}); bare .venv: {bare_venv}"]


def _filesystem(path):
    out = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True, text=True)
    return " on ".join(out.stdout.split()[2:4]) if out.returncode == 0 else "?"


# Main ---------------------------------------------------------------------------------------

def measure(args, pusher, trainyard, bare):
    """Per N: one untimed round of each side (fills the cache, starts an app on each node),
    then `repeat` timed rounds, each side on new commits after the machine settled."""
    samples = []
    for n in args.counts:
        branches = branches_for(n)
        begun = time.perf_counter()
        pusher.push(branches)
        trainyard.run(branches, 0.0)
        bare.run(pusher.push(branches), 0.0)
        print(f"warm-up with {n} build(s): {time.perf_counter() - begun:.0f} s", flush=True)
        for _ in range(args.repeat):
            for side in (trainyard, bare):
                shas = pusher.push(branches)
                idle = settle(args.settle) if args.settle else 0.0
                sample = side.run(branches if side is trainyard else shas, idle)
                stages = " ".join(f"{name} {took:.2f}" for name, took in sample.stages.items())
                print(f"  N={n:<3} {sample.side:<10} {sample.wall:7.2f} s wall {sample.cpu:6.2f} s machine "
                      f"CPU (before: {idle:.2f} cores busy, load average {sample.load:.2f})  {stages}",
                      flush=True)
                samples.append(sample)
    return samples


def bench(args, folder, cleanup):
    database = setup_django(folder)
    cleanup.append(database.drop)
    from celery.contrib.testing.worker import start_worker
    from django.conf import settings

    from pipeline import sandbox
    from pipeline.celery import app
    from pipeline.demo import create_demo_repository

    limits = settings.TRAINYARD
    mode = sandbox.mode()
    print("\n".join(machine_lines(database, mode, folder, args.bare_venv)), flush=True)
    if mode != "bwrap":
        print(f"WARNING: the sandbox is '{mode}', not bubblewrap: this is not the measurement "
              "the goal is about", flush=True)
    origin = create_demo_repository(folder / "demo-origin")
    pusher = Pusher(folder, origin)
    count = max(args.counts)
    first_port = free_ports(2 * count)
    trainyard = Trainyard(origin, count, first_port, folder)
    cleanup.append(trainyard.stop_apps)
    bare = Bare(folder, origin, git("rev-parse", "feature/hello", cwd=origin), count, first_port + count,
                args.concurrency, limits["JOBS_PER_REPOSITORY"], args.bare_venv)
    cleanup.append(bare.stop_apps)
    with start_worker(app, pool="threads", concurrency=args.concurrency, perform_ping_check=False,
                      queues=QUEUES, shutdown_timeout=30, loglevel="WARNING"):
        samples = measure(args, pusher, trainyard, bare)
    limit_text = (f"trainyard: worker of {args.concurrency} threads, JOBS_PER_BUILD="
                  f"{limits['JOBS_PER_BUILD']}, JOBS_PER_REPOSITORY={limits['JOBS_PER_REPOSITORY']}; "
                  f"bare: a pool of {args.concurrency} threads, at most {limits['JOBS_PER_REPOSITORY']} "
                  "commands at once (deploys not counted, as in Trainyard)")
    return samples, limit_text


def main(argv=None):
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-build-", dir=args.dir))
    cleanup = []
    begun = time.perf_counter()
    try:
        samples, limits = bench(args, folder, cleanup)
    finally:
        for step in reversed(cleanup):
            step()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    single, overheads = single_table(samples)
    many, ratios = concurrent_table(samples, limits)
    print("\n".join(single + ([""] if single and many else []) + many))
    print("\n".join(goal_lines(overheads, ratios)))
    loads = [s.load for s in samples]
    print(f"load average (1 min) at the start of the runs: {min(loads):.2f}-{max(loads):.2f} "
          "(it still holds this bench's previous run)")
    print(f"whole run: {time.perf_counter() - begun:.0f} s")


if __name__ == "__main__":
    main()
