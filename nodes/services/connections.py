"""The transport for a node, picked from a registry by the node's `transport` field."""

from django.conf import settings

from nodes.transports import LocalTransport, TransportError


def _local(node):
    return LocalTransport()


def _ssh(node):
    from nodes.transports.ssh import SSHTransport  # paramiko only where SSH is used

    if not node.host_key.strip():
        raise TransportError(
            f"{node.name} ({node.address}) has no pinned host key: pin it after comparing its "
            f"fingerprint (manage.py node pin-host-key {node.name}, or in the admin)")
    key_file = settings.TRAINYARD["SSH_KEY_FILE"]
    if not key_file:
        raise TransportError("TRAINYARD_SSH_KEY_FILE is not set: no key to log in to SSH nodes")
    return SSHTransport(host=node.host, port=node.ssh_port, username=node.user,
                        key_filename=str(key_file), host_key=node.host_key.strip())


TRANSPORTS = {"local": _local, "ssh": _ssh}


def get_transport(node):
    try:
        factory = TRANSPORTS[node.transport]
    except KeyError as exc:
        raise TransportError(f"{node.name}: unknown transport {node.transport!r}") from exc
    return factory(node)
