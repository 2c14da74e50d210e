"""One symbol's aggTrade stream: its connections, the trades they carry, and what is missing.

A Stream owns, in one gevent Group: a reader greenlet per open connection (two during a
24-hour rotation), the symbol's repair worker, its audits and silence checks. Its `run()`
greenlet dials, supervises and redials forever until `stop()`.
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

from . import frames, symbols
from .database import Database
from .limits import AttemptLimiter
from .logs import Throttle, failure, kv
from .repair import NOT_LISTED_EVERY, Repair, Stats
from .rest import INVALID_SYMBOL, Rest, RestError
from .wire import BadFrame, Tick, parse_frame

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # bytes; Binance's frames are a few hundred
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # seconds the server gets to answer our close frame
NO_CLOSE_FRAME = 1006  # RFC 6455's code for "closed without a close frame"
AUDIT_WINDOW = 48 * 3600  # seconds of history Binance's REST still serves
AUDIT_EVERY = 24 * 3600.0
FIRST_CHECK = 15.0  # seconds after start before a silent stream is checked against REST
ROTATION_RETRY = 10.0  # seconds before retrying a replacement connection that failed
IN_FLIGHT_MS = 3000  # a trade younger than this may not have reached us yet
YIELD_EVERY = 32  # frames of one batch handled before other greenlets get a turn
# An id this far past the last one known is checked over REST before it is stored or
# trusted: one forged or corrupted id would otherwise become MAX(id) for good. A restart
# after a long outage jumps this far too; it costs one REST call to confirm.
MAX_JUMP = 100_000
VERIFY_RETRY = 10.0  # seconds before another unconfirmed jump is checked
HELD_MAX = 10_000  # trades held while a jump is checked; later ones come back as a gap


def dial(url: str, timeout: float, tls: ssl.SSLContext | None = None) -> websocket.WebSocket:
    """Open a websocket to `url`; the handshake must finish within `timeout` seconds.
    A `wss://` URL uses `tls`, the process's one client context (building one costs
    milliseconds of CPU on the hub: too much for every dial of a thousand symbols)."""
    # websocket-client does the handshake and sends; frames.Reader does the reading.
    return websocket.create_connection(
        url, timeout=timeout, enable_multithread=True, sslopt={"context": tls} if tls else None
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


class Session:
    """One open connection: read by its own greenlet until it closes."""

    __slots__ = (
        "base",
        "code",
        "delivered",
        "ended",
        "first_id",
        "last_id",
        "last_rx",
        "opened",
        "opened_ms",
        "reason",
        "trades",
        "ws",
    )

    def __init__(self, ws: websocket.WebSocket, opened: float, opened_ms: int, base: int | None):
        self.ws = ws
        self.base = base  # the stream's highest known id when this connection opened
        self.opened = opened  # monotonic seconds
        self.last_rx = opened  # monotonic time bytes last arrived (pings count)
        self.opened_ms = opened_ms  # wall clock, ms since the epoch, as Binance's trade times
        self.trades = 0
        self.first_id = 0  # the first trade id this connection delivered
        self.last_id = 0  # the highest trade id this connection delivered
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

    def close(self) -> None:
        """Send a close frame; the reader ends when the server answers (or gives up)."""
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.send_close(websocket.STATUS_NORMAL)
        if not self.ended.wait(CLOSE_TIMEOUT):
            with contextlib.suppress(OSError):
                self.ws.shutdown()  # the reader's recv fails and it ends
            self.ended.wait(CLOSE_TIMEOUT)


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
        connect: Callable[[str, float], websocket.WebSocket] = dial,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.symbol = symbol
        self.url = f"{base_url}/{symbols.stream_path(symbol)}"
        self.stats = Stats()
        self.trades = 0  # trades received since start
        self.last_timestamp: int | None = None  # trade time (ms) of the newest trade received
        self.reconnects = 0
        self.unconfirmed = 0  # frames held back because their id jumped implausibly far
        self.last: int | None = None  # highest id stored or queued for repair
        self.repair = Repair(symbol, db, rest, self.stats, clock=clock)
        self._db = db
        self._rest = rest
        self._attempts = attempts
        self._stale_timeout = stale_timeout
        self._max_age = max_age
        self._silence_timeout = silence_timeout
        self._connect = connect
        self._clock = clock
        self._wall = wall
        self._sessions: list[Session] = []
        self._group = Group()
        self._stopping = False
        self._wake = gevent.event.Event()  # cuts waits short on stop()
        self._debug = log.isEnabledFor(logging.DEBUG)  # read once: checked per trade
        self._bad_frames = Throttle(60.0, clock)
        self._not_listed = Throttle(NOT_LISTED_EVERY, clock)
        self._last_trade: float | None = None  # monotonic time of the last trade received
        self._next_check = clock() + min(FIRST_CHECK, silence_timeout)  # at the earliest
        self._checking: gevent.Greenlet | None = None
        self._verifying: gevent.Greenlet | None = None
        self._held: list[tuple[Session, Tick]] = []  # the trades since an unconfirmed jump
        self._next_verify = 0.0  # monotonic time before which no jump is checked again
        # Resumed after a pause: the paused ids (after `_paused[0]`, before `_paused[1]`)
        # were not wanted, so neither the first trade nor the audits ask for them.
        self._after_pause = after_pause
        self._paused: list[int | None] = [None, None]

    @property
    def connected(self) -> bool:
        return any(session.connected for session in self._sessions)

    # -- the supervising greenlet -------------------------------------------------------

    def run(self) -> None:
        try:
            self._resume()
            self._group.spawn(self.repair.run)
            self._group.spawn(self._audits)
            backoff = Backoff()
            while not self._stopping:
                session = self._open()
                delivered = False
                if session is not None:
                    try:
                        delivered = self._supervise(session)
                    except Exception:
                        log.exception("stream failed %s", kv(symbol=self.symbol))
                        for open_session in list(self._sessions):
                            open_session.abort("stream failed")
                if self._stopping:
                    break
                self.reconnects += 1
                delay = backoff.next(delivered)
                log.info("stream reconnecting %s", kv(symbol=self.symbol, delay=f"{delay:g}s"))
                self._wake.wait(delay)
        finally:
            self._stopping = True
            try:
                self._close_all()
            finally:
                self._group.kill()

    def stop(self) -> None:
        """Ask the stream to end: no redial, close frames on every connection."""
        self._stopping = True
        self._wake.set()

    def _close_all(self) -> None:
        sessions = list(self._sessions)
        for session in sessions:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                session.ws.send_close(websocket.STATUS_NORMAL)
        gevent.wait([session.ended for session in sessions], timeout=CLOSE_TIMEOUT)

    def _resume(self) -> None:
        """Start from the highest stored id, so the first frame reveals a restart's gap."""
        while not self._stopping:
            try:
                stored = self._db.max_id(self.symbol)
                if self._after_pause:
                    self._paused[0] = stored  # the first trade starts a new run
                else:
                    self.last = stored
                return
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error or a bug: both are retried)
                log.error("cannot read last id, retrying %s", kv(symbol=self.symbol, error=exc))
                self._wake.wait(5.0)

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
        session = Session(ws, self._clock(), int(self._wall() * 1000), self.last)
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
            timeout = max(0.0, min(rotate_at, self._next_check_at(), stale_at) - now)
            gevent.wait([current.ended, self._wake], count=1, timeout=timeout)
            if self._stopping or current.ended.is_set():
                return current.delivered.is_set()
            now = self._clock()
            if now >= current.last_rx + self._stale_timeout:
                current.abort(f"nothing received for {self._stale_timeout:g}s")
                current.ended.wait()
                return current.delivered.is_set()
            if now >= self._next_check_at():
                self._start_check(current)
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
            session.code = self._read(session)
        except (OSError, frames.ProtocolError, websocket.WebSocketException) as exc:
            session.reason = session.reason or _describe(exc)
        except Exception as exc:  # noqa: BLE001 (a bug, not the network: the redial follows)
            log.error("stream reader failed %s", kv(symbol=self.symbol, error=failure(exc)))
            session.reason = session.reason or "reader failed"
            if session.last_id:  # the trade in hand may not have been stored
                self.repair.add(session.last_id, session.last_id)
        finally:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                if session.ws.connected and not self._stopping:
                    session.ws.send_close(websocket.STATUS_NORMAL)
            with contextlib.suppress(OSError):
                session.ws.shutdown()
            self._sessions.remove(session)
            self._overlap_ended(session)
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

    def _read(self, session: Session) -> int:
        """Store every trade until the server closes; returns the close code."""
        ws, clock = session.ws, self._clock
        reader = frames.Reader(ws.sock, MAX_MESSAGE)
        parts: list[bytes] = []
        size = 0
        while True:
            batch = reader.read()
            session.last_rx = clock()
            for count, (opcode, fin, payload) in enumerate(batch, 1):
                if count % YIELD_EVERY == 0:
                    gevent.sleep(0)  # a backlog must not keep other greenlets waiting
                if opcode == frames.TEXT and fin:
                    self._handle(session, payload)
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
                        self._handle(session, b"".join(parts))
                        parts, size = [], 0

    def _handle(self, session: Session, data: bytes) -> None:
        try:
            tick = parse_frame(data, self.symbol)
        except BadFrame as exc:
            held = self._bad_frames.allow(str(exc))
            if held is not None:
                log.warning(
                    "frame skipped %s",
                    kv(symbol=self.symbol, error=exc, bytes=len(data), suppressed=held),
                )
            return
        if tick is not None:
            self._take(session, tick)

    def _take(self, session: Session, tick: Tick) -> None:
        known = max(session.last_id, self.last or 0)
        if known and tick.id > known + MAX_JUMP:
            self._suspect(session, tick, known)
        else:
            self._accept(session, tick)

    def _accept(self, session: Session, tick: Tick) -> None:
        """Count, check for missing ids, and store one trade whose id is trusted."""
        if self._debug:
            log.debug("trade %s", kv(symbol=self.symbol, id=tick.id, time=tick.timestamp))
        self.trades += 1
        session.trades += 1
        if session.trades == 1:
            session.delivered.set()
        self._last_trade = self._clock()
        trade_id, previous, last = tick.id, session.last_id, self.last
        if trade_id > previous:
            session.last_id = trade_id
        if not session.first_id:
            session.first_id = trade_id
        if last is None or trade_id > last:
            if last is None and self._after_pause and self._paused[1] is None:
                self._paused[1] = trade_id
            self.last = trade_id  # before the write, which may wait
            self.last_timestamp = tick.timestamp
        # Ids missing between two trades of one connection, or between what we had and the
        # first trade of a connection opened alone (a reconnect, a restart). During a
        # rotation the other connection still delivers those ids, maybe a moment later.
        if previous:
            if trade_id > previous + 1:
                self._gap(previous + 1, trade_id - 1, "stream")
        elif last is not None and trade_id > last + 1 and len(self._sessions) == 1:
            self._gap(last + 1, trade_id - 1, "stream")
        if not self._db.insert(self.symbol, tick):
            self.stats.write_errors += 1
            self.repair.add(trade_id, trade_id)

    def _overlap_ended(self, old: Session) -> None:
        """`old` has closed while another connection was open (a rotation). A trade that
        connection delivered while `old` was still open skipped the reconnect check: the
        ids between what `old` (or the store before it) had and that trade came on neither."""
        seen = max(old.last_id, old.base or 0)
        for other in self._sessions:
            if other.first_id and seen and other.first_id > seen + 1:
                self._gap(seen + 1, other.first_id - 1, "rotation")

    def _suspect(self, session: Session, tick: Tick, known: int) -> None:
        """An id implausibly far past `known`: not stored, not trusted, until REST confirms
        it. The trades that follow it are held meanwhile (and taken once it is confirmed);
        any dropped come back as a gap, revealed by the next trade or silence check."""
        self.unconfirmed += 1
        if self._verifying is not None and not self._verifying.dead:
            if len(self._held) < HELD_MAX:
                self._held.append((session, tick))
        elif self._clock() >= self._next_verify:
            self._held = []
            self._verifying = self._group.spawn(self._verify, session, tick, known)

    def _verify(self, session: Session, tick: Tick, known: int) -> None:
        try:
            found = self._rest.agg_trades(self.symbol, from_id=tick.id, limit=1)
        except RestError as exc:
            found, error = None, exc
        else:
            error = None
        held, self._held = self._held, []
        if found and found[0].id == tick.id and found[0].timestamp == tick.timestamp:
            log.info(
                "trade id jump confirmed %s",
                kv(symbol=self.symbol, id=tick.id, after=known, count=tick.id - known - 1),
            )
            self._accept(session, tick)
            for held_session, held_tick in held:
                self._take(held_session, held_tick)
            return
        self._next_verify = self._clock() + VERIFY_RETRY
        log.warning(
            "implausible trade id skipped %s",
            kv(
                symbol=self.symbol,
                id=tick.id,
                last=known,
                reason=error or "Binance has no such trade",
                held=len(held),
            ),
        )

    def _gap(self, first: int, last: int, found_by: str) -> None:
        self.stats.gaps_found += 1
        log.info(
            "gap found %s",
            kv(symbol=self.symbol, ids=f"{first}-{last}", count=last - first + 1, by=found_by),
        )
        self.repair.add(first, last)

    # -- audits and silence checks ---------------------------------------------------------

    def _audits(self) -> None:
        """At start and then daily: queue the holes among the ids of the last 48 hours, so a
        repair cut short by a restart is not forgotten."""
        while True:
            since = int((self._wall() - AUDIT_WINDOW) * 1000)
            try:
                for first, last in self._db.holes(self.symbol, since):
                    if not self._was_paused(first, last):
                        self._gap(first, last, "audit")
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error or a bug: retried tomorrow)
                log.error("audit failed %s", kv(symbol=self.symbol, error=failure(exc)))
            gevent.sleep(AUDIT_EVERY)

    def _was_paused(self, first: int, last: int) -> bool:
        after, before = self._paused
        if after is None:
            return False
        return first > after and (before is None or last < before)

    def _next_check_at(self) -> float:
        """When a silence check is due: after STREAM_SILENCE_TIMEOUT without a trade (soon
        after start if none came yet), and never sooner than a timeout after the last check."""
        if self._last_trade is None:
            return self._next_check
        return max(self._last_trade + self._silence_timeout, self._next_check)

    def _start_check(self, session: Session) -> None:
        self._next_check = self._clock() + self._silence_timeout
        if self._checking is None or self._checking.dead:
            self._checking = self._group.spawn(self._check, session)

    def _check(self, session: Session) -> None:
        """Ask REST for the latest trade. One we never received that happened after the
        connection opened means the connection is dead: close it (the redial follows) and
        repair. One from before it is a gap left by a restart: repair it."""
        try:
            trades = self._rest.agg_trades(self.symbol, limit=1)
        except RestError as exc:
            if exc.code == INVALID_SYMBOL:
                if self._not_listed.allow("not listed") is not None:
                    log.error(
                        "symbol not listed on Binance USD-M futures %s", kv(symbol=self.symbol)
                    )
            else:
                log.warning("silence check failed %s", kv(symbol=self.symbol, error=exc))
            return
        except Exception as exc:  # noqa: BLE001 (a bug: logged, and the next check runs anyway)
            log.error("silence check failed %s", kv(symbol=self.symbol, error=failure(exc)))
            return
        if not trades:
            return
        latest, last = trades[-1], self.last
        if last is not None and latest.id > last:
            self.last = latest.id
            self._gap(last + 1, latest.id, "silence check")
        # Dead: Binance traded after this connection opened, and the trade never came (one of
        # the last few seconds may still be on its way).
        recent = self._wall() * 1000 - IN_FLIGHT_MS
        missed = latest.id > session.last_id and session.opened_ms < latest.timestamp < recent
        if missed and session.connected:
            log.warning(
                "stream silent while Binance trades, reconnecting %s",
                kv(symbol=self.symbol, latest=latest.id),
            )
            session.close()


def _close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def _describe(exc: BaseException) -> str:
    return symbols.display(str(exc) or type(exc).__name__, 200)
