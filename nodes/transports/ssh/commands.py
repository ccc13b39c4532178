"""The string the node's shell runs, and the pid line it prints before the command."""

import re
import shlex

from ..base import TransportError

PID_MARKER = b"trainyard-pid:"
MAX_HEAD_BYTES = 64 * 1024  # login noise tolerated before the pid line
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def remote_command(argv, cwd=None, env=None):
    """The string the node's shell runs. Every argument, value and path is quoted."""
    parts = ["echo trainyard-pid:$$"]
    if env:
        for name in env:
            if not _ENV_NAME.fullmatch(str(name)):
                raise TransportError(f"invalid environment variable name: {name!r}")
        parts.append("export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()))
    if cwd is not None:
        parts.append(f"cd -- {shlex.quote(str(cwd))}")
    parts.append("exec " + " ".join(shlex.quote(str(arg)) for arg in argv))
    return " && ".join(parts)


class _PidLine:
    """Takes the `trainyard-pid:N` line out of the output stream and remembers N."""

    def __init__(self, gate):
        self.gate = gate
        self.pid = None
        self.done = False
        self._head = b""

    def feed(self, data):
        if self.done:
            self.gate.feed(data)
            return
        self._head += data
        at = self._head.find(PID_MARKER)
        end = self._head.find(b"\n", at) if at >= 0 else -1
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self.flush()
            return
        digits = self._head[at + len(PID_MARKER):end]
        self.pid = int(digits) if digits.isdigit() else None
        before, after = self._head[:at], self._head[end + 1:]
        self._head, self.done = b"", True
        for part in (before, after):
            if part:
                self.gate.feed(part)

    def flush(self):
        """No pid line after all (odd login shell): pass everything through."""
        head, self._head, self.done = self._head, b"", True
        if head:
            self.gate.feed(head)
