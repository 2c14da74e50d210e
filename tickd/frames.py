"""WebSocket frames from the server, read in batches: one read for as many frames as arrived.

websocket-client does the handshake and sends pongs and close frames; reading is done here
because its reader makes two or three recv calls per frame (header, then payload), each
with a timeout object, and builds a frame object for each: a third of the CPU per tick.
The bytes come from `transport.Connection.read`.
"""

from __future__ import annotations

from collections.abc import Callable

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The server broke RFC 6455, or sent more than the size limit allows."""


def split(buffer: bytearray, limit: int) -> tuple[list[tuple[int, bool, bytes]], int]:
    """The complete frames at the start of `buffer` as (opcode, fin, payload), and how many
    bytes they took. Raises ProtocolError for a masked frame, reserved bits, or a frame
    announcing more than `limit` bytes (before its payload has arrived)."""
    frames = []
    pos, size = 0, len(buffer)
    while size - pos >= 2:
        first, second = buffer[pos], buffer[pos + 1]
        if first & 0x70:
            raise ProtocolError("reserved bits set")
        if second & 0x80:
            raise ProtocolError("masked frame from a server")
        length, header = second & 0x7F, 2
        if length == 126:
            if size - pos < 4:
                break
            length, header = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if size - pos < 10:
                break
            length, header = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes")
        end = pos + header + length
        if end > size:
            break
        frames.append((first & 0x0F, bool(first & 0x80), bytes(buffer[pos + header : end])))
        pos = end
    return frames, pos


class Reader:
    """Frames from one connection. `read()` blocks until at least one complete frame arrived.
    `receive()` blocks until bytes arrived and returns them all (b"": the peer closed)."""

    __slots__ = ("_buffer", "_limit", "_receive")

    def __init__(self, receive: Callable[[], bytes], limit: int):
        self._receive = receive
        self._limit = limit
        self._buffer = bytearray()

    def read(self) -> list[tuple[int, bool, bytes]]:
        """Raises ConnectionError when the server closes the TCP connection."""
        buffer = self._buffer
        while True:
            data = self._receive()
            if not data:
                raise ConnectionResetError("connection closed without a close frame")
            buffer += data
            frames, used = split(buffer, self._limit)
            if frames:
                del buffer[:used]
                return frames
