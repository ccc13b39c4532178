"""Run commands on a node over SSH (paramiko), with a pinned host key.

The only package that imports paramiko. One connection per transport, opened on first
use and reused for every command and file of a deploy; `close()` ends it.

How a command runs on the node: the login shell gets one string in which every piece of
user data is `shlex.quote`d:

    echo trainyard-pid:$$ && export K='v' && cd -- '<cwd>' && exec '<argv0>' '<arg>'...

`exec` replaces the shell, so the pid printed first (and taken out of the output) is the
command's own pid; sshd starts every session with `setsid()`, so that pid is also the
command's process group. Without a pty, closing the channel sends the command no signal
(it would keep running until it next writes output), so on a timeout, idle timeout or
cancellation the transport signals the group over a second channel: SIGTERM, then
SIGKILL after a grace period, like LocalTransport. A child that left the group (setsid,
daemonised) survives, as it does locally. Needs a POSIX login shell (sh, bash, dash...).

Differences from LocalTransport worth knowing:
- `env` is added to the node's login environment (locally it *is* the environment).
- A missing command or working directory is a non-zero exit (127 / 1) with the shell's
  message in the output, not a TransportError: the node's shell is the one to notice.

Layout:
- `hostkeys`: reading and parsing host keys (`fetch_host_key`, `parse_host_key`).
- `connection`: the TCP socket, paramiko's Transport as we use it, private keys.
- `commands`: the string the node's shell runs, and the pid line it prints first.
- `transport`: `SSHTransport` (connect, run, stop a command, copy files).
- `sftp`: uploads that bound the data in flight and fill whole SSH packets.
"""

from .commands import MAX_HEAD_BYTES, PID_MARKER, remote_command
from .connection import DEFAULT_CONNECT_TIMEOUT, load_private_key
from .hostkeys import fetch_host_key, key_line, parse_host_key
from .sftp import SFTP_MIN_WRITE, UPLOAD_IN_FLIGHT_BYTES, UPLOAD_PACKETS_PER_WRITE
from .transport import (
    DEFAULT_IO_TIMEOUT,
    DEFAULT_KEEPALIVE,
    EXIT_GRACE_SECONDS,
    KILL_GRACE_SECONDS,
    POLL_SECONDS,
    READ_SIZE,
    SSHTransport,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_IO_TIMEOUT", "DEFAULT_KEEPALIVE", "EXIT_GRACE_SECONDS",
    "KILL_GRACE_SECONDS", "MAX_HEAD_BYTES", "PID_MARKER", "POLL_SECONDS", "READ_SIZE",
    "SFTP_MIN_WRITE", "UPLOAD_IN_FLIGHT_BYTES", "UPLOAD_PACKETS_PER_WRITE", "SSHTransport",
    "fetch_host_key", "key_line", "load_private_key", "parse_host_key", "remote_command",
]
