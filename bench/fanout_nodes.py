"""The bench's nodes: one OpenSSH `sshd` per node on loopback (tests/sshd.py), and what
every tool is checked against after a round (the node folders are on this machine)."""

import os
import shlex
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.sshd import ClientKey, SshdNode, _children, generate_key


@dataclass
class Target:
    """One node as every tool sees it."""

    index: int
    sshd: SshdNode

    @property
    def host(self):
        return self.sshd.host

    @property
    def port(self):
        return self.sshd.port

    @property
    def host_key(self):
        return self.sshd.host_key

    def base(self, tool, round_no):
        """A fresh deploy folder per tool and round: every deploy is a first deploy."""
        return self.sshd.root / "deploys" / f"{tool}-{round_no}"


def client_key(folder):
    path = Path(folder) / "client" / "id_ed25519"
    return ClientKey(path=path, public=generate_key(path))


def _ports(count):
    """Distinct free ports, all held at once while they are picked."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def start_nodes(folder, key, count, started):
    """Start `count` sshd nodes; each is appended to `started` as soon as it runs, so the
    caller can stop whatever did start if one fails."""
    ports = _ports(count)

    def one(index):
        node = SshdNode(Path(folder) / f"node{index:02d}", key, port=ports[index])
        node.start()
        started.append(node)
        return Target(index, node)

    with ThreadPoolExecutor(8) as pool:
        return sorted(pool.map(one, range(count)), key=lambda t: t.index)


def stop_nodes(started):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda node: node.stop(), started))


def node_cpu(targets):
    """CPU seconds the nodes' sshd have used, with every finished process below them
    (sessions, shells, tar, sha256sum...: a reaped child's time is added to its parent's)."""
    total = 0
    for target in targets:
        fields = Path(f"/proc/{target.sshd.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def wait_idle(targets, timeout=10):
    """Until every connection to the nodes has ended and been reaped (for `node_cpu`)."""
    deadline = time.monotonic() + timeout
    busy = list(targets)
    while busy and time.monotonic() < deadline:
        busy = [t for t in busy if _children(t.sshd.pid)]
        if busy:
            time.sleep(0.02)
    return not busy


def known_hosts_text(targets):
    return "".join(f"[{t.host}]:{t.port} {t.host_key}\n" for t in targets)


def remote_finish(base, sha, checksum):
    """The one shell command the bare-library runs send after the upload: verify, name,
    unpack, switch `current` atomically (a new link renamed over the old). Quoted."""
    release = f"releases/{sha}"
    part, tarball = f"{release}.tar.gz.part", f"{release}.tar.gz"
    steps = [
        f"cd -- {shlex.quote(str(base))}",
        f"printf '%s  %s\\n' {shlex.quote(checksum)} {shlex.quote(part)} | sha256sum -c --status",
        f"mv -f -- {shlex.quote(part)} {shlex.quote(tarball)}",
        f"tar -xzf {shlex.quote(tarball)} -C {shlex.quote(release)}",
        f"rm -f -- {shlex.quote(tarball)}",
        f"ln -sfn {shlex.quote(release)} current.tmp",
        "mv -Tf current.tmp current",
    ]
    return " && ".join(steps)


def check_deployed(base, sha, payload_name, payload_size):
    """None if `base` holds the release as every tool must leave it, else what is wrong."""
    base = Path(base)
    link = base / "current"
    if not link.is_symlink():
        return f"{link} is not a symlink"
    if os.readlink(link) != f"releases/{sha}":
        return f"{link} -> {os.readlink(link)}"
    release = base / "releases" / sha
    if (release / "REVISION").read_text() != f"{sha}\n":
        return f"{release}/REVISION is wrong"
    if (release / payload_name).stat().st_size != payload_size:
        return f"{release}/{payload_name} has the wrong size"
    if list((base / "releases").glob("*.tar.gz*")):
        return f"an archive was left in {base}/releases"
    return None
