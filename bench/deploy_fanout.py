#!/usr/bin/env python
"""Deploy fan-out: Trainyard vs bare asyncssh vs Ansible, to N OpenSSH nodes at once.

    .venv/bin/python bench/deploy_fanout.py [--nodes 1,10,50] [--repeat 1] [--skip-ansible]

Starts one `sshd` per node on loopback (as tests/sshd.py does), makes a git repository
holding 5 MiB of random bytes and its release archive, then for each N deploys that
archive to N nodes at once with each tool, into a fresh folder per node and run:

- trainyard: `nodes.services.deploys.deploy_build` (Deployment row, Events, log chunks,
  Node update; no-op `install` and `start`), one thread per node.
- asyncssh: connect, mkdir, SFTP upload, one command (sha256 check, unpack, switch).
- ansible: ansible-playbook with forks = N (file, copy, stat + assert, unarchive, switch).

Every tool must leave the same thing on every node (`current` -> releases/<sha>, the
files unpacked, no archive left); the bench checks it after each run, untimed. Prints
per N and tool: wall time; client CPU (this process, plus its children for Ansible);
node CPU (the nodes' sshd and all they ran: sessions, shells, tar, sha256sum); other
CPU (the rest of the machine meanwhile: a run with much of it was disturbed); the
ratios; and whether the goals are met. Client and nodes share this machine's cores.
Everything it starts stops at the end, and its folder is removed.
"""

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout_ansible  # noqa: E402
from fanout_nodes import (  # noqa: E402
    check_deployed,
    client_key,
    node_cpu,
    start_nodes,
    stop_nodes,
    wait_idle,
)
from machine import machine_busy, settle  # noqa: E402

PAYLOAD = "payload.bin"
TOOLS = ("trainyard", "asyncssh", "ansible")
REQUIRES = {"asyncssh": "asyncssh", "ansible": "ansible-core"}
PINS = {"asyncssh": "asyncssh==2.24.1", "ansible-core": "ansible-core==2.19.14"}  # as measured
GOAL_VS_ASYNCSSH = 1.1
GOAL_VS_ANSIBLE = 10.0
GOAL_ONE_NODE = 0.25


@dataclass
class Sample:
    nodes: int
    tool: str
    wall: float
    cpu: float  # this process (+ children for Ansible)
    machine_cpu: float  # every process on the machine: client, nodes and anything else
    node_cpu: float = 0.0  # the nodes' sshd and everything they ran
    busy_before: float = 0.0  # cores the rest of the machine used just before the run

    @property
    def other_cpu(self):
        """CPU the machine spent on anything else meanwhile (other work, Ansible's ssh
        masters): a run with much of it was disturbed."""
        return max(0.0, self.machine_cpu - self.cpu - self.node_cpu)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1,10,50", help="comma-separated N (default 1,10,50)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per N and tool (median shown)")
    parser.add_argument("--size-mib", type=float, default=5.0, help="random payload size (5)")
    parser.add_argument("--skip-ansible", action="store_true", help="Trainyard and asyncssh only")
    parser.add_argument("--tools", default=",".join(TOOLS), help="which tools, comma-separated")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed one-node deploy per tool before measuring")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="before each run, wait up to this many seconds for the machine to "
                             "be idle (other processes under a quarter of a core); 0: do not wait")
    parser.add_argument("--keep", action="store_true", help="keep the bench folder")
    args = parser.parse_args(argv)
    args.counts = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    if not args.counts or args.counts[0] < 1:
        parser.error("--nodes needs positive counts")
    chosen = {t.strip() for t in args.tools.split(",")}
    if chosen - set(TOOLS):
        parser.error(f"unknown tool(s): {', '.join(sorted(chosen - set(TOOLS)))}")
    args.tools = [t for t in TOOLS if t in chosen and not (t == "ansible" and args.skip_ansible)]
    missing = [REQUIRES[t] for t in args.tools if t in REQUIRES and not _installed(REQUIRES[t])]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} ({sys.executable} -m pip install "
                     f"{' '.join(PINS[m] for m in missing)}), or leave the tool out with --tools")
    return args


def _installed(distribution):
    try:
        version(distribution)
    except Exception:  # noqa: BLE001 - PackageNotFoundError
        return False
    return True


# Measuring ----------------------------------------------------------------------------------

def _own_cpu():
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(nodes, tool, work):
    cpu, busy, started = _own_cpu(), machine_busy(), time.perf_counter()
    work()
    wall = time.perf_counter() - started
    return Sample(nodes, tool, wall, _own_cpu() - cpu, machine_busy() - busy)


# The runs -----------------------------------------------------------------------------------

class Runner:
    def __init__(self, folder, key, targets, bench, sha, checksum, archive, payload_size, settle=0.0):
        self.folder, self.key, self.targets, self.bench = folder, key, targets, bench
        self.settle = settle
        self.sha, self.checksum, self.archive = sha, checksum, archive
        self.payload_size = payload_size
        self.round = 0

    def run(self, tool, count):
        self.round += 1
        targets = self.targets[:count]
        bases = [t.base(tool, self.round) for t in targets]
        idle = settle(self.settle) if self.settle else 0.0
        before = node_cpu(targets)
        sample = getattr(self, f"_{tool}")(targets, bases)
        sample.busy_before = idle
        if not wait_idle(targets):
            raise RuntimeError(f"{tool} with N={count}: connections to the nodes did not end")
        sample.node_cpu = node_cpu(targets) - before
        for base in bases:
            problem = check_deployed(base, self.sha, PAYLOAD, self.payload_size)
            if problem:
                raise RuntimeError(f"{tool} with N={count}: {problem}")
        return sample

    def _trainyard(self, targets, bases):
        nodes, jobs = self.bench.prepare(len(targets), bases, self.round)
        deployments = []
        sample = measure(len(targets), "trainyard", lambda: deployments.extend(self.bench.run(nodes, jobs)))
        self.bench.check(deployments, jobs)
        return sample

    def _asyncssh(self, targets, bases):
        import fanout_asyncssh

        return measure(len(targets), "asyncssh", lambda: fanout_asyncssh.run(
            targets, bases, self.archive, self.sha, self.checksum, self.key.path))

    def _ansible(self, targets, bases):
        folder = self.folder / "ansible" / str(self.round)
        try:
            return measure(len(targets), "ansible", lambda: fanout_ansible.run(
                targets, bases, self.archive, self.sha, self.checksum, self.key.path, folder))
        finally:
            fanout_ansible.close_masters(folder)


# Reporting ----------------------------------------------------------------------------------

def machine_lines(database, archive):
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    try:
        asyncssh_version = version("asyncssh")
    except Exception:  # noqa: BLE001 - only printed
        asyncssh_version = "not installed"
    return [
        f"machine: {os.cpu_count()} CPU ({cpu}), {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, paramiko {version('paramiko')}, asyncssh "
        f"{asyncssh_version}, ansible-core {fanout_ansible.version()}, Django {version('Django')}",
        f"nodes: {ssh} sshd on 127.0.0.1; database: {database.kind}",
        f"archive: {archive.stat().st_size / 2**20:.2f} MiB (random bytes, gzip)",
    ]


def _median(samples, tool, attribute):  # attribute: a field or property of Sample
    values = [getattr(s, attribute) for s in samples if s.tool == tool]
    return statistics.median(values) if values else None


def table(samples, counts, tools):
    lines = [f"{'N':>3}  {'tool':<10} {'wall s':>7} {'client CPU s':>12} {'node CPU s':>10} "
             f"{'other CPU s':>11} {'vs asyncssh':>11} {'ansible/x':>9}  runs (wall s)"]
    for count in counts:
        these = [s for s in samples if s.nodes == count]
        base = _median(these, "asyncssh", "wall")
        ansible = _median(these, "ansible", "wall")
        for tool in tools:
            wall = _median(these, tool, "wall")
            runs = " ".join(f"{s.wall:.2f}" for s in these if s.tool == tool)
            versus = f"{wall / base:.2f}x" if base else "-"
            slower = f"{ansible / wall:.1f}x" if ansible and tool != "ansible" else "-"
            cpu = {name: _median(these, tool, name) for name in ("cpu", "node_cpu", "other_cpu")}
            lines.append(f"{count:>3}  {tool:<10} {wall:>7.2f} {cpu['cpu']:>12.2f} {cpu['node_cpu']:>10.2f} "
                         f"{cpu['other_cpu']:>11.2f} {versus:>11} {slower:>9}  {runs}")
    return lines


def goal_lines(samples):
    def wall(count, tool):
        return _median([s for s in samples if s.nodes == count], tool, "wall")

    lines = []
    top = max(s.nodes for s in samples)
    ours, theirs, ansible = wall(top, "trainyard"), wall(top, "asyncssh"), wall(top, "ansible")
    if ours and theirs:
        lines.append(_goal(f"N={top}: Trainyard / asyncssh = {ours / theirs:.2f} "
                           f"(goal <= {GOAL_VS_ASYNCSSH})", ours / theirs <= GOAL_VS_ASYNCSSH))
    if ours and ansible:
        lines.append(_goal(f"N={top}: Ansible / Trainyard = {ansible / ours:.1f} "
                           f"(goal >= {GOAL_VS_ANSIBLE:.0f})", ansible / ours >= GOAL_VS_ANSIBLE))
    one = wall(1, "trainyard")
    if one:
        lines.append(_goal(f"N=1: Trainyard {one:.3f} s (goal < {GOAL_ONE_NODE} s)", one < GOAL_ONE_NODE))
    return lines


def _goal(text, met):
    return f"  [{'met' if met else 'MISSED'}] {text}"


# Main ---------------------------------------------------------------------------------------

def bench(args, folder, started, cleanup):
    from fanout_trainyard import Bench, make_repository, setup_django

    key = client_key(folder)
    database = setup_django(folder, key.path)
    cleanup.append(database.drop)
    begun = time.perf_counter()
    targets = start_nodes(folder / "nodes", key, max(args.counts), started)
    print(f"started {len(targets)} sshd nodes in {time.perf_counter() - begun:.1f} s", flush=True)
    size = int(args.size_mib * 2**20)
    repo, sha = make_repository(folder, PAYLOAD, size)
    rows = Bench(repo, sha, targets)
    archive, checksum = rows.archive()
    print("\n".join(machine_lines(database, archive)), flush=True)
    runner = Runner(folder, key, targets, rows, sha, checksum, archive, size, args.settle)
    if not args.no_warmup:
        for tool in args.tools:
            runner.run(tool, 1)
    samples = []
    for count in args.counts:
        for _ in range(args.repeat):
            for tool in args.tools:
                sample = runner.run(tool, count)
                print(f"  N={count:<3} {tool:<10} {sample.wall:7.2f} s wall {sample.cpu:6.2f} s client CPU "
                      f"{sample.node_cpu:6.2f} s node CPU {sample.other_cpu:6.2f} s other CPU "
                      f"(machine {sample.busy_before:.2f} cores busy before)", flush=True)
                samples.append(sample)
    return samples


def main(argv=None):
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    started, cleanup = [], []
    begun = time.perf_counter()
    try:
        samples = bench(args, folder, started, cleanup)
    finally:
        stop_nodes(started)
        for step in reversed(cleanup):
            step()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print("\n".join(table(samples, args.counts, args.tools)))
    print("\n".join(goal_lines(samples)))
    print(f"whole run: {time.perf_counter() - begun:.0f} s")


if __name__ == "__main__":
    main()
