"""Host keys: reading the key a server offers, parsing a pinned key line."""

import base64
import binascii

import paramiko

from ..base import TransportError
from .connection import DEFAULT_CONNECT_TIMEOUT, _handshake_failure, _open_socket, _reason


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


def _known_hosts_name(host, port):
    # The name paramiko (and OpenSSH) look a host key up under.
    return host if port == 22 else f"[{host}]:{port}"
