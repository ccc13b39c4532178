"""Run commands on a node over SSH (paramiko), with a pinned host key.

The only module that imports paramiko. One connection per transport, opened on first
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
"""

import base64
import binascii
import contextlib
import io
import re
import shlex
import signal
import socket
import threading
import time
from pathlib import Path

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from .base import CommandResult, OutputGate, Transport, TransportError

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 15
DEFAULT_IO_TIMEOUT = 60.0  # a file transfer that makes no progress for this long fails
KILL_GRACE_SECONDS = 2.0
EXIT_GRACE_SECONDS = 0.5
POLL_SECONDS = 0.1
READ_SIZE = 65536
PID_MARKER = b"trainyard-pid:"
MAX_HEAD_BYTES = 64 * 1024  # login noise tolerated before the pid line
UPLOAD_IN_FLIGHT_BYTES = 512 * 1024  # sent before waiting for the answers (see _upload)
UPLOAD_PACKETS_PER_WRITE = 4  # SSH packets in one SFTP write, where the server takes that
SFTP_MIN_WRITE = 32768  # every SFTP server takes writes this big (draft-ietf-secsh-filexfer)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


# Host keys -----------------------------------------------------------------------------

def parse_host_key(line):
    """A `PKey` from a public key line (`ssh-ed25519 AAAA... [comment]`)."""
    parts = str(line or "").split()
    if len(parts) < 2:
        raise TransportError(f"not a public key line: {line!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except (binascii.Error, paramiko.SSHException, paramiko.UnknownKeyType, ValueError) as exc:
        raise TransportError(f"not a usable public key ({parts[0]}): {exc}") from exc


def key_line(key):
    return f"{key.get_name()} {key.get_base64()}"


def fetch_host_key(host, port=22, timeout=DEFAULT_CONNECT_TIMEOUT):
    """Read the key a server offers, trusting nothing: (key line, SHA256 fingerprint).

    For an admin to compare with the node's own `ssh-keygen -lf` before pinning it; no
    authentication happens and no command runs.
    """
    where = f"{host}:{port}"
    sock = _open_socket(host, port, timeout)
    session = paramiko.Transport(sock)
    try:
        session.start_client(timeout=timeout)
        key = session.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        cause = _handshake_failure(session, timeout) or exc
        raise TransportError(f"could not read the host key of {where}: {_reason(cause)}") from exc
    finally:
        session.close()
        sock.close()
    return key_line(key), key.fingerprint


def _handshake_failure(session, timeout):
    """Why the handshake failed, when the exception at hand only says "No existing
    session": paramiko's thread may hold the cause, or it is still waiting."""
    if session is None or session.initial_kex_done:
        return None
    return session.get_exception() or TimeoutError(f"no SSH handshake within {timeout}s")


def _known_hosts_name(host, port):
    # The name paramiko (and OpenSSH) look a host key up under.
    return host if port == 22 else f"[{host}]:{port}"


# Commands ------------------------------------------------------------------------------

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


def _handle_channel_request(channel, message):
    """paramiko drops "exit-signal" (RFC 4254 6.10); record it so that a command killed
    by a signal reports -signum, as subprocess does, instead of a lost connection."""
    start = message.packet.tell()
    if message.get_text() == "exit-signal":
        message.get_boolean()  # want-reply: always false for exit-signal
        name = message.get_text()
        channel.exit_signal = name
        channel.exit_status = -int(getattr(signal, f"SIG{name}", 255))
        channel.status_event.set()
        return
    message.packet.seek(start)
    paramiko.Channel._handle_request(channel, message)


class _ParamikoTransport(paramiko.Transport):
    # AES-GCM first where the server has it: it needs no HMAC over every packet (a fifth of
    # an upload's CPU here, and sshd's work too). The others follow in paramiko's order.
    _preferred_ciphers = tuple(sorted(paramiko.Transport._preferred_ciphers,
                                      key=lambda name: not name.startswith("aes128-gcm")))
    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        MSG_CHANNEL_REQUEST: _handle_channel_request,
    }


# Connections ---------------------------------------------------------------------------

class _QuickAckSocket(socket.socket):
    """Acknowledges what it receives at once (Linux TCP_QUICKACK, which the kernel drops
    on its own: set again after every read).

    sshd leaves Nagle on until a session starts. After authentication it sends a packet
    (hostkeys-00, the key options) that we have no reason to answer, so our ACK waits for
    the delayed-ACK timer, and sshd holds its answer to the first channel-open until that
    ACK comes: 40 ms on every connection (a one-node deploy takes 0.15 s).
    """

    def recv(self, bufsize, flags=0):
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):  # closed meanwhile: the next read says so
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _open_socket(host, port, timeout):
    """A TCP connection with TCP_NODELAY: paramiko does not set it, and small SSH packets
    then wait for delayed ACKs (a deploy step took 0.35 s instead of 0.12 s). Quick ACKs
    too where the system has them (`_QuickAckSocket`)."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise TransportError(f"cannot connect to {where}: timed out after {timeout}s") from exc
    except OSError as exc:
        raise TransportError(f"cannot connect to {where}: {_reason(exc)}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_QUICKACK"):
        timeout_set = sock.gettimeout()
        sock = _QuickAckSocket(fileno=sock.detach())
        sock.settimeout(timeout_set)
    return sock


def _reason(exc):
    """A short cause for a message: "connection refused", "timed out"..."""
    if isinstance(exc, EOFError) and not str(exc):
        return "the connection was closed by the other side"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    # "Connection refused" reads better mid-sentence; "EOFError" must stay as it is.
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def load_private_key(key_filename=None, pkey=None):
    """A PKey from a file, a PKey, or private key text (OpenSSH or PEM)."""
    if isinstance(pkey, paramiko.PKey):
        return pkey
    if key_filename is not None:
        try:
            return paramiko.PKey.from_path(Path(key_filename))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise TransportError(f"cannot load the private key {key_filename}: {exc}") from exc
    if pkey:
        for cls in _KEY_CLASSES:
            try:
                return cls.from_private_key(io.StringIO(pkey))
            except (paramiko.SSHException, ValueError):
                continue
        raise TransportError("the private key text is not an ed25519, ECDSA or RSA key")
    raise TransportError("no private key: pass key_filename or pkey")


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
            self._pump(channel, stream, result, started, timeout, idle_timeout, cancel, on_tick)
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
    def _pump(channel, stream, result, started, timeout, idle_timeout, cancel, on_tick):
        """Read output until the command ends or a limit stops it."""
        last_output = started
        exited_at = None
        eof = False
        while True:
            if on_tick is not None:
                on_tick()
            now = time.monotonic()
            if timeout is not None and now - started > timeout:
                result.timed_out = True
                return
            if idle_timeout is not None and now - last_output > idle_timeout:
                result.idle_timed_out = True
                return
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                return
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


def _upload(sftp, local_path, remote_path, max_write=SFTP_MIN_WRITE):
    """paramiko's `put` (same result, same size check), with a bound on the data in flight
    and writes that fill whole SSH packets.

    `put` sends as fast as sshd's channel window allows (2 MiB): sshd then holds up to 2 MiB
    that sftp-server has not taken yet, and grows that buffer by remapping and copying it
    again and again. The first 5 MiB upload on a connection took 0.15 s of mostly sshd CPU
    instead of 0.03 s, and with 50 nodes on one machine that CPU is everybody's wall time.
    Waiting for the answers every UPLOAD_IN_FLIGHT_BYTES keeps the buffer small.
    """
    size = 0
    with open(local_path, "rb") as source, sftp.open(remote_path, "wb") as target:
        chunk_size = _write_size(sftp, target, max_write)
        target.MAX_REQUEST_SIZE = chunk_size  # where paramiko splits a write into requests
        in_flight = max(1, UPLOAD_IN_FLIGHT_BYTES // chunk_size)
        for count, chunk in enumerate(iter(lambda: source.read(chunk_size), b""), start=1):
            # Not pipelined, a write waits for its answer and for those of all before it.
            target.set_pipelined(count % in_flight != 0)
            target.write(chunk)
            size += len(chunk)
    written = sftp.stat(remote_path).st_size
    if written != size:
        raise OSError(f"size mismatch in put! {written} != {size}")


def _write_size(sftp, target, max_write):
    """The data of one SFTP write: whole SSH packets, as many as the server takes in one
    write (up to UPLOAD_PACKETS_PER_WRITE). paramiko puts at most `max packet - 64` bytes
    in a packet, and a write request adds 25 bytes and the handle to its data: a plain
    32 KiB write took two packets, and every write costs an answer to read."""
    per_packet = sftp.get_channel().out_max_packet_size - 64
    header = 25 + len(target.handle)
    packets = min(UPLOAD_PACKETS_PER_WRITE, (max_write + header) // per_packet)
    return packets * per_packet - header if packets >= 1 else max_write


def _max_write(sftp):
    """The largest write the SFTP server takes, from its limits@openssh.com answer (OpenSSH
    8.6 and later: 255 KiB), else the 32 KiB every server takes."""
    try:
        kind, answer = sftp._request(CMD_EXTENDED, "limits@openssh.com")
        if kind != CMD_EXTENDED_REPLY:
            return SFTP_MIN_WRITE
        answer.get_int64()  # max packet length
        answer.get_int64()  # max read length
        most = answer.get_int64()
    except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError, AttributeError):
        return SFTP_MIN_WRITE  # not supported (or a paramiko without `_request`)
    return most or 1 << 20  # 0: no limit
