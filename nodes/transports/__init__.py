"""How Trainyard runs commands: locally (subprocess) or on a node over SSH (paramiko).

`get_transport(node)` picks one from the registry; paramiko is imported only by the SSH
transport.
"""

from .base import CommandResult, OutputGate, Transport, TransportError
from .local import LocalTransport

__all__ = ["CommandResult", "LocalTransport", "OutputGate", "Transport", "TransportError"]
