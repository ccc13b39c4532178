"""Opening a connection: the TCP socket, paramiko's Transport as we use it, private keys."""

import contextlib
import io
import signal
import socket
from pathlib import Path

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from ..base import TransportError

DEFAULT_CONNECT_TIMEOUT = 10.0
_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


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


def _handshake_failure(session, timeout):
    """Why the handshake failed, when the exception at hand only says "No existing
    session": paramiko's thread may hold the cause, or it is still waiting."""
    if session is None or session.initial_kex_done:
        return None
    return session.get_exception() or TimeoutError(f"no SSH handshake within {timeout}s")


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
