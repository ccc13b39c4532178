"""Real OpenSSH `sshd` nodes on loopback, one daemon per node (TESTING.md, "OpenSSH nodes").

`SshdNode` writes its own host key, config and authorized_keys under a folder, starts
`/usr/sbin/sshd -f <config>` (it daemonises and writes a pid file) and can `stop()` it:
the listener *and* every process it forked (live sessions, the commands they run) are
killed, which is what a node dying looks like to a client already connected.

tests/conftest.py loads this module as a plugin, so its fixtures are there in every test.
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, require, wait_until

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
NODE_COUNT = 3

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/hostkeys/ssh_host_ed25519_key
PidFile {root}/run/sshd.pid
AuthorizedKeysFile {root}/keys/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 200:30:400
MaxSessions 100
LogLevel ERROR
SetEnv HOME={root}/home
Subsystem sftp {sftp}
"""


def require_sshd():
    require(os.path.exists(SSHD) and os.path.exists(SSH_KEYGEN),
            "OpenSSH server (apt-get install openssh-server)")


def generate_key(path):
    """An ed25519 key pair without a passphrase; returns the public key line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, capture_output=True)
    return public_line(path.with_name(path.name + ".pub"))


def public_line(pub_path):
    """`ssh-ed25519 AAAA...` without the comment."""
    kind, blob = Path(pub_path).read_text().split()[:2]
    return f"{kind} {blob}"


def keygen_fingerprint(pub_path):
    """The fingerprint as OpenSSH prints it (`SHA256:...`)."""
    out = subprocess.run([SSH_KEYGEN, "-lf", str(pub_path)], check=True, capture_output=True,
                         text=True).stdout
    return out.split()[1]


@dataclass
class ClientKey:
    path: Path  # the private key file
    public: str


def _children(pid):
    """Pids whose parent is `pid` (read from /proc: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces or ')': fields resume after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def process_alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # PID 1 here may not reap: a zombie is dead enough


class SshdNode:
    """One node: an sshd on 127.0.0.1:<port> and a folder `root` with its files."""

    def __init__(self, root, client_key, port=None):
        self.root = Path(root).absolute()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.client_key = client_key
        self.pid = None
        for sub in ("hostkeys", "run", "keys", "home", "base"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.host_key = generate_key(self.root / "hostkeys" / "ssh_host_ed25519_key")
        (self.root / "keys" / "authorized_keys").write_text(client_key.public + "\n")
        self.config = self.root / "sshd_config"
        self.config.write_text(CONFIG.format(port=self.port, root=self.root, sftp=SFTP_SERVER))

    @property
    def base(self):
        return self.root / "base"

    @property
    def host_key_pub(self):
        return self.root / "hostkeys" / "ssh_host_ed25519_key.pub"

    @property
    def pid_file(self):
        return self.root / "run" / "sshd.pid"

    def transport_kwargs(self, **extra):
        """Arguments for nodes.transports.ssh.SSHTransport."""
        return {"host": self.host, "port": self.port, "username": "root",
                "key_filename": str(self.client_key.path), "host_key": self.host_key, **extra}

    def start(self):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        self.pid_file.unlink(missing_ok=True)
        proc = subprocess.run([SSHD, "-f", str(self.config), "-E", str(self.root / "sshd.log")],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"sshd on port {self.port} did not start: {proc.stderr.strip()}")
        # The pid file is written after the listening socket is bound.
        wait_until(lambda: self.pid_file.exists() and self.pid_file.read_text().strip(),
                   timeout=10, message=f"sshd pid file on port {self.port}")
        self.pid = int(self.pid_file.read_text())
        wait_until(self.accepts, timeout=10, message=f"sshd to accept on port {self.port}")
        return self

    def accepts(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def processes(self):
        """The listener and everything below it (sessions, the commands they run)."""
        if self.pid is None:
            return []
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(_children(pid))
        return tree

    def stop(self):
        """The node dies: SIGKILL the listener and all its descendants at once."""
        tree = self.processes()
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(process_alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pid = None
        self.pid_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    require_sshd()
    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    return ClientKey(path=path, public=generate_key(path))


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory, client_key):
    """Start extra nodes (e.g. one a test may kill); all of them stop at session end."""
    started = []

    def make():
        node = SshdNode(tmp_path_factory.mktemp("node"), client_key).start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def ssh_nodes(sshd_factory):
    """Three running nodes shared by the session, each with its own port and folder."""
    return [sshd_factory() for _ in range(NODE_COUNT)]
