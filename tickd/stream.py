"""One symbol's aggTrade stream: its connections and the trades they carry.

A Stream owns, in one gevent Group: a reader greenlet per open connection (two during a
24-hour rotation), the symbol's repair worker, and its checks (audits, silence checks,
confirmations of implausible ids). Its `run()` greenlet dials, supervises and redials forever
until `stop()`. Which ids are missing is the ledger's rule (`tickd.ledger`), not the stream's.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable

import gevent
import gevent.event
import websocket
from gevent.pool import Group

from . import frames, symbols, transport
from .checks import Checks
from .database import Database
from .intake import Intake
from .ledger import Ledger, Seen
from .limits import AttemptLimiter
from .logs import failure, kv
from .repair import Repair, Stats
from .rest import NotListed, Rest
from .turns import Turns, Unlimited

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # bytes; Binance's frames are a few hundred
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # seconds the server gets to answer our close frame
NO_CLOSE_FRAME = 1006  # RFC 6455's code for "closed without a close frame"
ROTATION_RETRY = 10.0  # seconds before retrying a replacement connection that failed
UNLIMITED = Unlimited()


def dial(url: str, timeout: float, tls: ssl.SSLContext | None = None) -> websocket.WebSocket:
    """Open a websocket to `url`; the handshake must finish within `timeout` seconds.
    A `wss://` URL uses `tls`, the process's one client context (building one costs
    milliseconds of CPU on the hub: too much for every dial of a thousand symbols)."""
    # websocket-client does the HTTP upgrade and sends; frames.Reader reads, through
    # transport.Connection (one read per wake-up, TLS decrypted in memory).
    return transport.dial(url, timeout, tls)


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


class Session:
    """One open connection: read by its own greenlet until it closes."""

    __slots__ = (
        "code",
        "delivered",
        "ended",
        "last_rx",
        "opened",
        "opened_ms",
        "reason",
        "seen",
        "trades",
        "ws",
    )

    def __init__(self, ws: websocket.WebSocket, opened: float, opened_ms: int, seen: Seen):
        self.ws = ws
        self.seen = seen  # its first and last trade ids, in the stream's ledger
        self.opened = opened  # monotonic seconds
        self.last_rx = opened  # monotonic time bytes last arrived (pings count)
        self.opened_ms = opened_ms  # wall clock, ms since the epoch, as Binance's trade times
        self.trades = 0
        self.delivered = gevent.event.Event()  # set by the first trade
        self.ended = gevent.event.Event()
        self.code = NO_CLOSE_FRAME
        self.reason = ""

    @property
    def connected(self) -> bool:
        return not self.ended.is_set()

    def abort(self, reason: str) -> None:
        """Cut the connection without a close handshake; the reader ends at once."""
        self.reason = self.reason or reason
        with contextlib.suppress(OSError):
            self.ws.shutdown()

    def hang_up(self, close_frame: bool) -> None:
        """After the reader: a close frame if asked (and still possible), then the socket."""
        with contextlib.suppress(OSError, websocket.WebSocketException):
            if close_frame and self.ws.connected:
                self.ws.send_close(websocket.STATUS_NORMAL)
        with contextlib.suppress(OSError):
            self.ws.shutdown()

    def close(self) -> None:
        """Send a close frame; the reader ends when the server answers (or gives up)."""
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.send_close(websocket.STATUS_NORMAL)
        if not self.ended.wait(CLOSE_TIMEOUT):
            with contextlib.suppress(OSError):
                self.ws.shutdown()  # the reader's recv fails and it ends
            self.ended.wait(CLOSE_TIMEOUT)

    def read(
        self,
        text: Callable[[Session, bytes], None],
        clock: Callable[[], float],
        turns: Turns | Unlimited = UNLIMITED,
    ) -> int:
        """Hand every text message to `text` and answer pings, until the server closes;
        returns the close code. Each frame waits for its share of a turn of the loop
        (`turns`). Raises OSError, frames.ProtocolError or what `text` raises."""
        take = turns.take
        ws = self.ws
        reader = frames.Reader(ws.sock.read, MAX_MESSAGE)
        parts: list[bytes] = []
        size = 0
        while True:
            batch = reader.read()
            self.last_rx = clock()
            # A batch is one read's worth (transport.READ_SIZE): other greenlets run between.
            for opcode, fin, payload in batch:
                take()
                if opcode == frames.TEXT and fin:
                    text(self, payload)
                elif opcode == frames.PING:
                    ws.pong(payload)
                elif opcode == frames.CLOSE:
                    return _close_code(payload)
                elif opcode in (frames.TEXT, frames.BINARY, frames.CONTINUATION):
                    # A message in fragments (Binance sends none): gather it, within the limit.
                    size += len(payload)
                    if size > MAX_MESSAGE:
                        raise frames.ProtocolError(f"message of more than {MAX_MESSAGE} bytes")
                    parts.append(payload)
                    if fin:
                        text(self, b"".join(parts))
                        parts, size = [], 0


class Stream:
    """Records one symbol. `run()` is the body of its greenlet; `stop()`, from another
    greenlet, closes its connections (close frames) and makes `run()` return."""

    def __init__(
        self,
        symbol: str,
        *,
        base_url: str,
        db: Database,
        rest: Rest,
        attempts: AttemptLimiter,
        stale_timeout: float,
        max_age: float,
        silence_timeout: float,
        after_pause: bool = False,
        turns: Turns | Unlimited = UNLIMITED,
        backoff: Backoff | None = None,
        connect: Callable[[str, float], websocket.WebSocket] = dial,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.symbol = symbol
        self.url = f"{base_url}/{symbols.stream_path(symbol)}"
        self.ledger = Ledger()
        self.stats = Stats()
        self.reconnects = 0
        self._group = Group()  # readers, repair, audits and checks
        not_listed = NotListed(symbol, clock)  # one hourly line, from repair or checks
        self.repair = Repair(symbol, db, rest, self.stats, not_listed=not_listed, clock=clock)
        self.intake = Intake(
            symbol, self.ledger, db=db, repair=self.repair, stats=self.stats, clock=clock
        )
        self.intake.checks = self.checks = Checks(
            self.intake,
            db=db,
            rest=rest,
            group=self._group,
            not_listed=not_listed,
            silence_timeout=silence_timeout,
            clock=clock,
            wall=wall,
        )
        self._db = db
        self._attempts = attempts
        self._stale_timeout = stale_timeout
        self._max_age = max_age
        self._after_pause = after_pause
        self._turns = turns
        self._backoff = backoff or Backoff()
        self._connect = connect
        self._clock = clock
        self._wall = wall
        self._sessions: list[Session] = []
        self._stopping = False
        self._wake = gevent.event.Event()  # cuts waits short on stop()

    @property
    def connected(self) -> bool:
        return any(session.connected for session in self._sessions)

    # -- the supervising greenlet -------------------------------------------------------

    def run(self) -> None:
        try:
            self._resume()
            self._group.spawn(self.repair.run)
            self._group.spawn(self.checks.audits)
            while not self._stopping:
                session = self._open()
                delivered = False
                if session is not None:
                    try:
                        delivered = self._supervise(session)
                    except Exception as exc:  # noqa: BLE001 (a bug: cut, logged, redialled)
                        log.error("stream failed %s", kv(symbol=self.symbol, error=failure(exc)))
                        for open_session in list(self._sessions):
                            open_session.abort("stream failed")
                if self._stopping:
                    break
                self.reconnects += 1
                delay = self._backoff.next(delivered)
                log.info("stream reconnecting %s", kv(symbol=self.symbol, delay=f"{delay:g}s"))
                self._wake.wait(delay)
        finally:
            self._stopping = True
            try:
                close_all(self._sessions)
            finally:
                self._group.kill()

    def stop(self) -> None:
        """Ask the stream to end: no redial, close frames on every connection."""
        self._stopping = True
        self._wake.set()

    def _resume(self) -> None:
        """Start from the highest stored id, so the first frame reveals a restart's gap."""
        while not self._stopping:
            try:
                stored = self._db.max_id(self.symbol)
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error or a bug: both are retried)
                log.error("cannot read last id, retrying %s", kv(symbol=self.symbol, error=exc))
                self._wake.wait(5.0)
            else:
                self.ledger.resume(stored, after_pause=self._after_pause)
                return

    def _open(self) -> Session | None:
        """Dial a new connection (after the process-wide attempt limit allows it)."""
        self._attempts.acquire()
        if self._stopping:
            return None
        try:
            ws = self._connect(self.url, min(CONNECT_TIMEOUT, self._stale_timeout))
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("stream connect failed %s", kv(symbol=self.symbol, error=_describe(exc)))
            return None
        # No socket timeout (each recv would arm a timer): the supervisor watches last_rx.
        ws.settimeout(None)
        session = Session(ws, self._clock(), int(self._wall() * 1000), self.ledger.open())
        self._sessions.append(session)
        self._group.spawn(self._read_session, session)
        log.info("stream connected %s", kv(symbol=self.symbol, url=self.url))
        return session

    def _supervise(self, current: Session) -> bool:
        """Wait while `current` (and its replacements) live: rotate at max age, check silence.
        Returns whether the last connection delivered a trade."""
        rotate_at = current.opened + self._max_age
        while True:
            now = self._clock()
            stale_at = current.last_rx + self._stale_timeout
            check_at = self.checks.due(self.intake.last_trade)
            timeout = max(0.0, min(rotate_at, check_at, stale_at) - now)
            gevent.wait([current.ended, self._wake], count=1, timeout=timeout)
            if self._stopping or current.ended.is_set():
                return current.delivered.is_set()
            now = self._clock()
            if now >= current.last_rx + self._stale_timeout:
                current.abort(f"nothing received for {self._stale_timeout:g}s")
                current.ended.wait()
                return current.delivered.is_set()
            if now >= self.checks.due(self.intake.last_trade):
                self.checks.silence(current)
            if now >= rotate_at:
                replacement = self._rotate(current)
                if replacement is None:
                    rotate_at = now + ROTATION_RETRY
                else:
                    current, rotate_at = replacement, replacement.opened + self._max_age

    def _rotate(self, old: Session) -> Session | None:
        """Open the replacement first; close `old` once the new one has delivered (or `old`
        ended on its own). During the overlap both store trades; ids make that harmless."""
        log.info(
            "stream rotating %s", kv(symbol=self.symbol, age=f"{self._clock() - old.opened:.0f}s")
        )
        new = self._open()
        if new is None:
            return None
        # A quiet market may not trade for a while: after the stale timeout, the new
        # connection's pings are proof enough.
        events = [new.delivered, new.ended, old.ended, self._wake]
        gevent.wait(events, count=1, timeout=self._stale_timeout)
        if new.ended.is_set():
            return None
        if not old.ended.is_set():
            old.close()
        return new

    # -- reading --------------------------------------------------------------------------

    def _read_session(self, session: Session) -> None:
        try:
            session.code = session.read(self.intake.frame, self._clock, self._turns)
        except (OSError, frames.ProtocolError, websocket.WebSocketException) as exc:
            session.reason = session.reason or _describe(exc)
        except Exception as exc:  # noqa: BLE001 (a bug, not the network: the redial follows)
            log.error("stream reader failed %s", kv(symbol=self.symbol, error=failure(exc)))
            session.reason = session.reason or "reader failed"
            if session.seen.last:  # the trade in hand may not have been stored
                self.repair.add(session.seen.last, session.seen.last)
        finally:
            session.hang_up(close_frame=not self._stopping)
            self._sessions.remove(session)
            for first, last in self.ledger.close(session.seen):
                self.intake.gap(first, last, "rotation")
            session.ended.set()
            log.info(
                "stream disconnected %s",
                kv(
                    symbol=self.symbol,
                    code=session.code,
                    error=session.reason or None,
                    trades=session.trades,
                ),
            )


def close_all(sessions: list[Session]) -> None:
    """Send a close frame on each connection and wait (a while) for them to end."""
    sessions = list(sessions)
    for session in sessions:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            session.ws.send_close(websocket.STATUS_NORMAL)
    gevent.wait([session.ended for session in sessions], timeout=CLOSE_TIMEOUT)


def _close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def _describe(exc: BaseException) -> str:
    return symbols.display(str(exc) or type(exc).__name__, 200)
