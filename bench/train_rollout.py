#!/usr/bin/env python
"""Production rollout vs the bare parallel deploy of the same batches, to N sshd nodes.

    .venv/bin/python bench/train_rollout.py [--nodes 50] [--batch-size 10] [--repeat 3]

Starts one `sshd` per node on loopback (bench/fanout_nodes.py, as tests/sshd.py does),
makes a git repository holding a tiny HTTP app (stdlib `http.server`, answering
"ok <its REVISION>"), one commit per run, and deploys it once to every node (untimed),
so each timed run replaces a live release: stop the old app, start the new one, prove
it answers. Node 0 is off-cycle, so the batches are [1], then `--batch-size` at a time.
Each round measures, in the same run:

- bare: `deploy_release` per node (`run:` app, health with `expect: "ok {sha}"`: the
  liveness proof), the nodes of a batch in parallel (a thread each), batch after batch.
- rollout: `nodes.deploy.rollout` with the same steps plus `drain` and `drain_check`
  (through the protocol: one command on the node that drains and polls the check),
  the same batches, its callbacks served in this thread.

The two alternate which goes first from round to round. After each run, untimed, every
node must point `current` at the run's SHA and answer with it over HTTP. Prints each run,
then a table (median of the rounds) with both wall times and their ratio; goal <= 1.25x.
Everything it starts stops at the end, and its folder is removed.
"""

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fanout_nodes import _ports, client_key, start_nodes, stop_nodes  # noqa: E402
from machine import settle  # noqa: E402

from nodes.deploy import (  # noqa: E402
    DeploySteps,
    RolloutTarget,
    deploy_release,
    make_archive,
    plan_batches,
    rollout,
)
from nodes.transports.ssh import SSHTransport  # noqa: E402
from tests.helpers import GitRepo  # noqa: E402

GOAL = 1.25
SERVER = """\
import http.server, pathlib, sys
sha = pathlib.Path("REVISION").read_text().strip()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"ok {sha}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[sys.argv.index("--port") + 1])
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
# -S: the app needs only the standard library; no site-packages scan at each start.
BARE_STEPS = DeploySteps(run=[sys.executable, "-S", "server.py", "--port", "$PORT"],
                         health="http://{host}:{port}/health", health_expect="ok {sha}",
                         health_timeout=30)
# A drain as a real app might do it: a flag the app's load balancer check reads; the
# check passes at once, as when no request is in flight.
ROLLOUT_STEPS = DeploySteps(**{**vars(BARE_STEPS), "drain": ["touch", "$STATE_DIR/draining"],
                               "drain_check": ["test", "-f", "$STATE_DIR/draining"]})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=50, help="how many sshd nodes (50)")
    parser.add_argument("--batch-size", type=int, default=10, help="nodes per batch (10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median shown)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="before each run, wait up to this many seconds for the machine to "
                             "be idle (other processes under a quarter of a core); 0: do not wait")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.batch_size < 1 or args.repeat < 1:
        parser.error("--nodes >= 2, --batch-size >= 1, --repeat >= 1")
    return args


class Fleet:
    """The nodes as RolloutTargets, and the releases to deploy to them."""

    def __init__(self, folder, nodes):
        self.folder, self.nodes = folder, nodes
        ports = _ports(len(nodes))
        self.targets = []
        for index, node in enumerate(nodes):
            state = node.sshd.root / "state"
            state.mkdir(exist_ok=True)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOST": "127.0.0.1",
                   "PORT": str(ports[index]), "STATE_DIR": str(state)}
            self.targets.append(RolloutTarget(
                key=index, name=f"node{index:02d}", transport=self.opener(node.sshd),
                base=str(node.sshd.root / "app"), host="127.0.0.1", port=ports[index], env=env,
                off_cycle=index == 0))
        self.repo = GitRepo(folder / "repo")
        self.releases = []

    @staticmethod
    def opener(sshd):
        return lambda: SSHTransport(**sshd.transport_kwargs())

    def new_release(self):
        number = len(self.releases) + 1
        sha = self.repo.commit({"server.py": SERVER, "version.txt": f"{number}\n"}, message=f"v{number}")
        archive, checksum = make_archive(self.repo.path, sha, self.folder / "archives")
        self.releases.append(sha)
        return sha, archive, checksum

    def bare(self, batch_size):
        """deploy_release per node, batch after batch, the nodes of a batch in parallel."""
        sha, archive, checksum = self.new_release()

        def one(target):
            with target.transport() as transport:
                result = deploy_release(transport, target.base, sha, archive, checksum, BARE_STEPS,
                                        env=target.env, host=target.host, port=target.port)
            if not result.ok:
                raise RuntimeError(f"bare deploy to {target.name} failed: {result.message}")

        started = time.perf_counter()
        for batch in plan_batches(self.targets, batch_size):
            with ThreadPoolExecutor(len(batch)) as pool:
                list(pool.map(one, batch))
        return time.perf_counter() - started, sha

    def rollout(self, batch_size):
        sha, archive, checksum = self.new_release()
        lines = []
        started = time.perf_counter()
        result = rollout(self.targets, sha, archive, checksum, ROLLOUT_STEPS, batch_size=batch_size,
                         log=lines.append, on_node_start=lambda target: None,
                         on_node_done=lambda target, outcome: None, on_tick=lambda: None)
        wall = time.perf_counter() - started
        if not result.ok:
            raise RuntimeError(f"rollout failed: {result.message}")
        drained = sum("drained: drain_check exited 0" in line for line in lines)
        if drained != len(self.targets):
            raise RuntimeError(f"{drained} of {len(self.targets)} nodes drained")
        return wall, sha

    def check(self, sha):
        """Untimed: every node points `current` at `sha` and answers with it."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for target in self.targets:
            link = os.readlink(Path(target.base) / "current")
            with opener.open(f"http://127.0.0.1:{target.port}/", timeout=5) as response:
                body = response.read().decode()
            if link != f"releases/{sha}" or body != f"ok {sha}":
                raise RuntimeError(f"{target.name}: current -> {link}, answers {body!r}")

    def stop_apps(self):
        for target in self.targets:
            pid_file = Path(target.base) / "shared" / "trainyard" / "app.pid"
            if pid_file.exists():
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def machine_lines():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return [f"machine: {os.cpu_count()} CPU ({cpu}), {platform.system()} {platform.release()}",
            f"python {platform.python_version()}, paramiko {version('paramiko')}; nodes: {ssh} "
            "sshd on 127.0.0.1"]


def bench(args, folder, started):
    key = client_key(folder)
    begun = time.perf_counter()
    nodes = start_nodes(folder / "nodes", key, args.nodes, started)
    print(f"started {len(nodes)} sshd nodes in {time.perf_counter() - begun:.1f} s", flush=True)
    fleet = Fleet(folder, nodes)
    try:
        print("\n".join(machine_lines()), flush=True)
        plan = plan_batches(fleet.targets, args.batch_size)
        print(f"batches: {' + '.join(str(len(b)) for b in plan)} (node00 off-cycle)", flush=True)
        fleet.check(fleet.bare(args.batch_size)[1])  # the first release: untimed warm-up
        samples = {"bare": [], "rollout": []}
        for round_no in range(args.repeat):
            kinds = ("bare", "rollout") if round_no % 2 == 0 else ("rollout", "bare")
            for kind in kinds:
                busy = settle(args.settle) if args.settle else 0.0
                wall, sha = getattr(fleet, kind)(args.batch_size)
                fleet.check(sha)
                samples[kind].append(wall)
                print(f"  round {round_no + 1} {kind:<8} {wall:6.2f} s   (machine {busy:.2f} cores "
                      "busy before)", flush=True)
        return samples, len(plan)
    finally:
        fleet.stop_apps()


def main(argv=None):
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-rollout-bench-"))
    started = []
    try:
        samples, batches = bench(args, folder, started)
    finally:
        stop_nodes(started)
        shutil.rmtree(folder, ignore_errors=True)
    bare, ours = statistics.median(samples["bare"]), statistics.median(samples["rollout"])
    print()
    print(f"{'N':>3} {'batches':>7}  {'bare deploy s':>13} {'rollout s':>9} {'ratio':>6}  "
          "runs (bare | rollout)")
    print(f"{args.nodes:>3} {batches:>7}  {bare:>13.2f} {ours:>9.2f} {ours / bare:>5.2f}x  "
          f"{' '.join(f'{w:.2f}' for w in samples['bare'])} | "
          f"{' '.join(f'{w:.2f}' for w in samples['rollout'])}")
    met = ours / bare <= GOAL
    print(f"  [{'met' if met else 'MISSED'}] rollout / bare = {ours / bare:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
