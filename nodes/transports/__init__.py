"""How Trainyard runs commands: locally (subprocess) or on a node over SSH (paramiko).

`transport_class(name)` picks one from the registry; paramiko is imported only by the SSH
transport, and only when it is first used (`SSHTransport`, `fetch_host_key` load lazily).
"""

from importlib import import_module

from .base import CommandResult, OutputGate, Transport, TransportError
from .local import LocalTransport

# name -> "module:attribute", so that choosing "local" never imports paramiko.
REGISTRY = {
    "local": "nodes.transports.local:LocalTransport",
    "ssh": "nodes.transports.ssh:SSHTransport",
}
_LAZY = {"SSHTransport": "nodes.transports.ssh", "fetch_host_key": "nodes.transports.ssh"}


def transport_class(name):
    try:
        module, attribute = REGISTRY[name].split(":")
    except KeyError:
        raise TransportError(f"unknown transport {name!r}, expected one of {', '.join(REGISTRY)}") from None
    return getattr(import_module(module), attribute)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY", "CommandResult", "LocalTransport", "OutputGate", "SSHTransport", "Transport",
           "TransportError", "fetch_host_key", "transport_class"]
