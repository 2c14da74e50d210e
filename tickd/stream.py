"""One symbol's aggTrade stream: a websocket-client connection, its read loop and its redials."""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Callable

import gevent
import gevent.event
import websocket
from websocket._abnf import ABNF, frame_buffer

from . import symbols
from .database import Database
from .logs import Throttle, kv
from .wire import BadFrame, parse_frame

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # bytes; Binance's frames are a few hundred
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
NO_CLOSE_FRAME = 1006  # RFC 6455's code for "closed without a close frame"


class FrameTooLarge(websocket.WebSocketException):
    """The peer announced a frame or message over MAX_MESSAGE bytes."""


class _LimitedFrames(frame_buffer):
    # websocket-client reads a frame's whole payload however long the header says it is;
    # refuse before reading instead.
    def recv_length(self) -> None:
        super().recv_length()
        if self.length > MAX_MESSAGE:
            raise FrameTooLarge(f"frame of {self.length} bytes")


class _Socket(websocket.WebSocket):
    def __init__(self, **options):
        super().__init__(**options)
        self.frame_buffer = _LimitedFrames(self._recv, skip_utf8_validation=True)


def dial(url: str, timeout: float) -> websocket.WebSocket:
    """Open a websocket to `url`; the handshake must finish within `timeout` seconds."""
    # UTF-8 is validated by decoding each text message (wire.parse_frame); the library's
    # own check is pure Python and costs a third of the CPU per tick.
    return websocket.create_connection(
        url, timeout=timeout, class_=_Socket, skip_utf8_validation=True, enable_multithread=True
    )


class Backoff:
    """Delays between connection attempts.

    After a connection that delivered trades: 0 (redial at once). After a failed dial or a
    connection that delivered nothing: 1, 2, 4, 8, 16, 30, 30... s. Delivery resets it.
    """

    __slots__ = ("_cap", "_first", "_next")

    def __init__(self, first: float = 1.0, cap: float = 30.0):
        self._first = first
        self._cap = cap
        self._next = first

    def next(self, delivered: bool) -> float:
        if delivered:
            self._next = self._first
            return 0.0
        delay = self._next
        self._next = min(delay * 2, self._cap)
        return delay


class Stream:
    """Records one symbol: connects, stores each trade, redials forever until stopped.

    `run()` is the body of the symbol's greenlet; `stop()` (from another greenlet) sends a
    close frame and makes `run()` return once the server answers it.
    """

    def __init__(
        self,
        symbol: str,
        *,
        base_url: str,
        db: Database,
        stale_timeout: float,
        connect: Callable[[str, float], websocket.WebSocket] = dial,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.symbol = symbol
        self.url = f"{base_url}/{symbols.stream_path(symbol)}"
        self.connected = False
        self.trades = 0  # trades received since start
        self._db = db
        self._stale_timeout = stale_timeout
        self._connect = connect
        self._ws: websocket.WebSocket | None = None
        self._stopping = False
        self._wake = gevent.event.Event()  # cuts a back-off wait short on stop()
        self._throttle = Throttle(60.0, clock)

    def run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                delivered = self._session()
            except Exception:
                log.exception("stream failed %s", kv(symbol=self.symbol))
                delivered = False
            if self._stopping:
                break
            delay = backoff.next(delivered)
            log.info("stream reconnecting %s", kv(symbol=self.symbol, delay=f"{delay:g}s"))
            self._wake.wait(delay)

    def stop(self) -> None:
        """Ask the stream to end: no redial, and a close frame to the server if connected."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None and ws.connected:
            # If this fails, the read loop sees the broken socket and ends.
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.send_close(websocket.STATUS_NORMAL)

    def _session(self) -> bool:
        """One connection, from dial to close. True if it delivered at least one trade."""
        try:
            ws = self._connect(self.url, min(CONNECT_TIMEOUT, self._stale_timeout))
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("stream connect failed %s", kv(symbol=self.symbol, error=_describe(exc)))
            return False
        if self._stopping:
            _close(ws, websocket.STATUS_NORMAL)
            return False
        self._ws = ws
        ws.settimeout(self._stale_timeout)
        self.connected = True
        log.info("stream connected %s", kv(symbol=self.symbol, url=self.url))
        before = self.trades
        code, reason = NO_CLOSE_FRAME, ""
        try:
            code = self._read(ws)
        except websocket.WebSocketTimeoutException:
            reason = f"nothing received for {self._stale_timeout:g}s"
        except (OSError, websocket.WebSocketException) as exc:
            reason = _describe(exc)
        finally:
            self.connected = False
            self._ws = None
            _close(ws, None if self._stopping else websocket.STATUS_NORMAL)
        log.info(
            "stream disconnected %s",
            kv(symbol=self.symbol, code=code, error=reason or None, trades=self.trades - before),
        )
        return self.trades > before

    def _read(self, ws: websocket.WebSocket) -> int:
        """Store every trade until the server closes; returns the close code."""
        parts: list[bytes] = []
        size = 0
        while True:
            frame = ws.recv_frame()
            opcode = frame.opcode
            if opcode == ABNF.OPCODE_TEXT and frame.fin:
                self._handle(frame.data)
            elif opcode == ABNF.OPCODE_PING:
                ws.pong(frame.data)
            elif opcode == ABNF.OPCODE_CLOSE:
                return _close_code(frame.data)
            elif opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT):
                # A message in fragments (Binance sends none): gather it, within the limit.
                size += len(frame.data)
                if size > MAX_MESSAGE:
                    raise FrameTooLarge(f"message of more than {MAX_MESSAGE} bytes")
                parts.append(frame.data)
                if frame.fin:
                    self._handle(b"".join(parts))
                    parts, size = [], 0

    def _handle(self, data: bytes) -> None:
        try:
            tick = parse_frame(data, self.symbol)
        except BadFrame as exc:
            held = self._throttle.allow(str(exc))
            if held is not None:
                log.warning(
                    "frame skipped %s",
                    kv(symbol=self.symbol, error=exc, bytes=len(data), suppressed=held),
                )
            return
        if tick is None:
            return
        self.trades += 1
        self._db.insert(self.symbol, tick)


def _close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def _close(ws: websocket.WebSocket, status: int | None) -> None:
    """Close the socket; send a close frame first unless one was already sent (status None)."""
    try:
        if status is not None and ws.connected:
            ws.send_close(status)
    except (OSError, websocket.WebSocketException):
        pass
    with contextlib.suppress(OSError):
        ws.shutdown()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return symbols.display(text, 200)
