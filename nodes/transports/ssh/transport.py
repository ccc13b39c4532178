"""`SSHTransport`: commands and files on one node over one SSH connection."""

import threading
import time

import paramiko

from ..base import CommandResult, OutputGate, RunLimits, Transport, TransportError
from .commands import _PidLine, remote_command
from .connection import (
    DEFAULT_CONNECT_TIMEOUT,
    _handshake_failure,
    _open_socket,
    _ParamikoTransport,
    _reason,
    load_private_key,
)
from .hostkeys import _known_hosts_name, parse_host_key
from .sftp import SFTP_MIN_WRITE, _max_write, _upload

DEFAULT_KEEPALIVE = 15
DEFAULT_IO_TIMEOUT = 60.0  # a file transfer that makes no progress for this long fails
KILL_GRACE_SECONDS = 2.0
EXIT_GRACE_SECONDS = 0.5
POLL_SECONDS = 0.1
READ_SIZE = 65536


class SSHTransport(Transport):
    """Commands and files on one node over one SSH connection, host key pinned.

    `host_key` is the node's public host key line as an admin confirmed it (see
    `fetch_host_key`); without one the transport refuses to connect: trusting a key on
    first use would let whoever answers first become the node. Not for concurrent use
    by several threads.
    """

    name = "ssh"

    def __init__(self, host, port=22, username="root", *, host_key, key_filename=None, pkey=None,
                 connect_timeout=DEFAULT_CONNECT_TIMEOUT, keepalive=DEFAULT_KEEPALIVE,
                 io_timeout=DEFAULT_IO_TIMEOUT):
        self.host = host
        self.port = int(port)
        self.username = username
        self.host_key = host_key
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.io_timeout = io_timeout
        self.connections = 0  # how many times a connection was opened (reuse is visible)
        self._pkey = load_private_key(key_filename, pkey)
        self._client = None
        self._sftp = None
        self._sftp_max_write = SFTP_MIN_WRITE
        self._lock = threading.Lock()

    @property
    def where(self):
        return f"{self.host}:{self.port}"

    # Connection ------------------------------------------------------------------------

    def _session(self):
        """The live paramiko transport, connecting first if there is none (or it died)."""
        with self._lock:
            if self._client is None or not self._client.get_transport().is_active():
                self.close()
                self._client = self._connect()
                self.connections += 1
            return self._client.get_transport()

    def _pinned_key(self):
        if not self.host_key:
            raise TransportError(
                f"no pinned host key for {self.where}: refusing to connect. Read the key with "
                "fetch_host_key(), compare it with `ssh-keygen -lf` on the node, then pin it.")
        return parse_host_key(self.host_key)

    def _connect(self):
        expected = self._pinned_key()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        # Under the exact name paramiko looks up: a different key offered for a name that
        # has an entry raises BadHostKeyException, which carries both keys.
        client.get_host_keys().add(_known_hosts_name(self.host, self.port), expected.get_name(),
                                   expected)
        sock = _open_socket(self.host, self.port, self.connect_timeout)
        timeout = self.connect_timeout
        try:
            client.connect(self.host, self.port, username=self.username, pkey=self._pkey, sock=sock,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout, look_for_keys=False, allow_agent=False,
                           transport_factory=_ParamikoTransport)
        except Exception as exc:
            # paramiko's own thread often holds the real cause ("Error reading SSH protocol
            # banner") while the exception raised here only says "No existing session".
            cause = _handshake_failure(client.get_transport(), timeout)
            client.close()
            sock.close()
            raise self._connect_error(exc, expected, cause) from exc
        client.get_transport().set_keepalive(self.keepalive)
        return client

    def _connect_error(self, exc, expected, cause=None):
        if isinstance(exc, paramiko.BadHostKeyException):
            return TransportError(
                f"host key mismatch for {self.where}: expected {expected.get_name()} "
                f"{expected.fingerprint}, the server offered {exc.key.get_name()} "
                f"{exc.key.fingerprint}. Refusing to connect; if the node was rebuilt, confirm "
                "its new key and pin it.")
        if isinstance(exc, paramiko.AuthenticationException):
            return TransportError(f"authentication as {self.username} failed on {self.where}: "
                                  f"{_reason(exc)}")
        return TransportError(f"SSH connection to {self.where} failed: {_reason(cause or exc)}")

    def close(self):
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        for thing in (sftp, client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: S110 - closing a dead connection may fail; it is closed
                    pass

    # Commands --------------------------------------------------------------------------

    def run(self, argv, *, cwd=None, env=None, timeout, idle_timeout=None, on_output=None,
            output_cap=None, cancel=None, on_tick=None):
        argv = [str(a) for a in argv]
        if not argv:
            raise TransportError("empty command")
        command = remote_command(argv, cwd, env)
        if "\x00" in command:  # a shell string cannot carry it; locally exec refuses it too
            raise TransportError("a NUL byte in the command, its environment or working directory")
        started = time.monotonic()
        channel = self._open_channel(command, argv)
        gate = OutputGate(on_output, output_cap)
        stream = _PidLine(gate)
        result = CommandResult(exit_code=None, duration=0.0)
        try:
            self._pump(channel, stream, result,
                       RunLimits(started, timeout, idle_timeout, cancel, on_tick))
            stopped = result.timed_out or result.idle_timed_out or result.cancelled
            if stopped:
                self._await_pid(channel, stream)
        finally:
            self._end(channel, stream.pid)
            channel.close()
        stream.flush()
        gate.close()
        result.exit_code = self._exit_code(channel, argv, stopped)
        result.duration = time.monotonic() - started
        result.output_bytes = gate.total
        result.truncated = gate.truncated
        return result

    def _open_channel(self, command, argv):
        session = self._session()
        try:
            channel = session.open_session(timeout=self.connect_timeout)
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"could not start {argv[0]} on {self.where}: {_reason(exc)}") from exc
        channel.settimeout(POLL_SECONDS)
        return channel

    @staticmethod
    def _pump(channel, stream, result, limits):
        """Read output until the command ends or a limit stops it."""
        last_output = limits.started
        exited_at = None
        eof = False
        while True:
            if limits.exceeded(result, last_output):
                return
            now = time.monotonic()
            if channel.exit_status_ready():
                # Done; give straggling output a moment, not forever (a background child
                # may hold the output open).
                exited_at = exited_at or now
                if eof or now - exited_at > EXIT_GRACE_SECONDS:
                    return
            if eof:
                channel.status_event.wait(POLL_SECONDS)
                continue
            try:
                data = channel.recv(READ_SIZE)
            except TimeoutError:
                continue
            if not data:
                eof = True
                continue
            last_output = time.monotonic()
            stream.feed(data)

    @staticmethod
    def _await_pid(channel, stream):
        """Stopped before the command said its pid (cancelled as it started): read on until
        it does, so that `_end` can still stop it, unless it ends first."""
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while not stream.done and not channel.exit_status_ready() and time.monotonic() < deadline:
            try:
                data = channel.recv(READ_SIZE)
            except TimeoutError:
                continue
            if not data:
                return
            stream.feed(data)

    def _alive(self, channel):
        return not channel.closed and channel.get_transport().is_active()

    def _end(self, channel, pid):
        """Nothing of the command outlives run(), as with LocalTransport."""
        if pid is None or not self._alive(channel):
            return  # nothing we can signal: the node is gone or never said who runs
        if not channel.exit_status_ready():
            # Stopped by a limit, a cancel or an error: TERM the group, KILL after a grace.
            if self._signal_group(pid, "TERM"):
                channel.status_event.wait(KILL_GRACE_SECONDS)
                self._signal_group(pid, "KILL")
        elif not channel.eof_received:
            # It exited, but something it started still holds the output open.
            self._signal_group(pid, "KILL")

    def _signal_group(self, pid, name):
        """Best effort, on a second channel of the same connection. True if it was sent."""
        try:
            channel = self._client.get_transport().open_session(timeout=self.connect_timeout)
            channel.exec_command(f"kill -s {name} -- -{int(pid)} 2>/dev/null")
            channel.status_event.wait(self.connect_timeout)
            channel.close()
            return True
        except (paramiko.SSHException, OSError, EOFError, AttributeError):
            return False

    def _exit_code(self, channel, argv, stopped):
        # exit-status is unsigned and exit-signal sets a name: -1 with neither means the
        # channel closed without the command's end being reported.
        if channel.exit_status >= 0 or getattr(channel, "exit_signal", None):
            return channel.exit_status
        if stopped:
            return None
        cause = channel.get_transport().get_exception()
        detail = f": {_reason(cause)}" if cause else ""
        raise TransportError(f"lost the connection to {self.where} while running {argv[0]}{detail}")

    # Files -----------------------------------------------------------------------------

    def _sftp_client(self):
        self._session()  # reconnects if needed, which also drops a stale SFTP client
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
            # Without it a transfer to a node that stopped answering would wait forever.
            self._sftp.get_channel().settimeout(self.io_timeout)
            self._sftp_max_write = _max_write(self._sftp)
        return self._sftp

    def put_file(self, local_path, remote_path):
        try:
            sftp = self._sftp_client()
            _upload(sftp, str(local_path), str(remote_path), self._sftp_max_write)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"could not copy {local_path} to {self.where}:{remote_path}: "
                                 f"{_reason(exc)}") from exc

    def get_file(self, remote_path, local_path):
        try:
            self._sftp_client().get(str(remote_path), str(local_path))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"could not copy {self.where}:{remote_path} to {local_path}: "
                                 f"{_reason(exc)}") from exc
