"""One websocket frame per wall message, written as it is to every screen's socket.

A websocket server frames a message once per socket; uvicorn's websockets-sansio protocol
(the server Trainyard runs, pinned in pyproject.toml) does it, through the ASGI send, in a
few coroutines per socket. When a socket negotiated no extension (Trainyard's servers
decline per-message deflate), a server's text frame is the same bytes on every socket: the
hub builds it once per message and each screen writes it to its transport, after the
checks uvicorn's own send makes. Any other server or a socket with an extension (a test
server that accepts deflate) goes through the ASGI send, as does any write that would wait.
At a thousand screens this took a third off the time to write a message to all of them.
"""

from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # served by something else: every write takes the ASGI send
    WebSocketsSansIOProtocol = None


def text_frame(text):
    """A server's (unmasked, unextended, final) text frame carrying `text`."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class DirectSocket:
    """The server's connection under an ASGI `send`, written to directly."""

    __slots__ = ("protocol",)

    def __init__(self, protocol):
        self.protocol = protocol

    @classmethod
    def under(cls, send):
        """A DirectSocket when `send` is uvicorn's websockets-sansio send itself (no
        middleware wraps it) on a socket with no extension; else None."""
        protocol = getattr(send, "__self__", None)
        if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        if protocol.conn.extensions:
            return None
        return cls(protocol)

    def write(self, frame):
        """Write `frame` if uvicorn's send would write it at once; False if it would wait
        (the client's buffer is full) or refuse (closing): take the ASGI send then."""
        protocol = self.protocol
        if (protocol.disconnected or protocol.close_sent or not protocol.writable.is_set()
                or protocol.conn.state is not State.OPEN or protocol.transport.is_closing()):
            return False
        protocol.transport.write(frame)
        return True
