"""A stream's checks against the database and REST: the audit of recent ids, the silence
check, and the confirmation of an implausible id. Each runs in a greenlet of the stream's Group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import gevent
import gevent.event
from gevent.pool import Group

from .database import Database
from .intake import Intake
from .ledger import Seen, dead
from .logs import failure, kv
from .rest import INVALID_SYMBOL, NotListed, Rest, RestError
from .wire import Tick

log = logging.getLogger(__name__)

AUDIT_WINDOW = 48 * 3600  # seconds of history Binance's REST still serves
AUDIT_EVERY = 24 * 3600.0
FIRST_CHECK = 15.0  # seconds after start before a silent stream is checked against REST
VERIFY_RETRY = 10.0  # seconds before another unconfirmed jump is checked
HELD_MAX = 10_000  # trades held while a jump is checked; later ones come back as a gap


class Connection(Protocol):
    """What checks and intake need of a stream's connection (a `stream.Session`)."""

    seen: Seen  # its ids, in the ledger
    opened_ms: int  # when it opened, wall clock
    trades: int  # trades it delivered
    delivered: gevent.event.Event  # set by its first trade

    @property
    def connected(self) -> bool: ...

    def close(self) -> None: ...


class Checks:
    """One symbol's checks, beside its `intake`: they queue the ids they find missing
    through it, and hand it back the trades they held."""

    def __init__(
        self,
        intake: Intake,
        *,
        db: Database,
        rest: Rest,
        group: Group,
        not_listed: NotListed,
        silence_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.symbol = intake.symbol
        self.ledger = intake.ledger
        self.unconfirmed = 0  # trades held back because their id jumped implausibly far
        self._db = db
        self._rest = rest
        self._group = group
        self._found = intake.gap
        self._accept = intake.accept
        self._take = intake.take
        self._not_listed = not_listed
        self._silence_timeout = silence_timeout
        self._clock = clock
        self._wall = wall
        self._next_check = clock() + min(FIRST_CHECK, silence_timeout)  # at the earliest
        self._checking: gevent.Greenlet | None = None
        self._verifying: gevent.Greenlet | None = None
        self._next_verify = 0.0
        self._held: list[tuple[Connection, Tick]] = []

    # -- the audit ------------------------------------------------------------------------

    def audits(self) -> None:
        """At start and then daily: queue the holes among the ids of the last 48 hours, so a
        repair cut short by a restart is not forgotten. The body of a greenlet."""
        while True:
            since = int((self._wall() - AUDIT_WINDOW) * 1000)
            try:
                for first, last in self._db.holes(self.symbol, since):
                    if self.ledger.wanted(first, last):
                        self._found(first, last, "audit")
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error or a bug: retried tomorrow)
                log.error("audit failed %s", kv(symbol=self.symbol, error=failure(exc)))
            gevent.sleep(AUDIT_EVERY)

    # -- the silence check ----------------------------------------------------------------

    def due(self, last_trade: float | None) -> float:
        """When a silence check is due: after STREAM_SILENCE_TIMEOUT without a trade (soon
        after start if none came yet), and never sooner than a timeout after the last check."""
        if last_trade is None:
            return self._next_check
        return max(last_trade + self._silence_timeout, self._next_check)

    def silence(self, connection: Connection) -> None:
        """Start a silence check of `connection`, unless one is running."""
        self._next_check = self._clock() + self._silence_timeout
        if self._checking is None or self._checking.dead:
            self._checking = self._group.spawn(self._silence, connection)

    def _silence(self, connection: Connection) -> None:
        """Ask REST for the latest trade. One we never received that happened after the
        connection opened means the connection is dead: close it (the redial follows) and
        repair. One from before it is a gap left by a restart: repair it."""
        try:
            trades = self._rest.agg_trades(self.symbol, limit=1)
        except RestError as exc:
            if exc.code == INVALID_SYMBOL:
                self._not_listed.report()
            else:
                log.warning("silence check failed %s", kv(symbol=self.symbol, error=exc))
            return
        except Exception as exc:  # noqa: BLE001 (a bug: logged, and the next check runs anyway)
            log.error("silence check failed %s", kv(symbol=self.symbol, error=failure(exc)))
            return
        if not trades:
            return
        latest = trades[-1]
        missing = self.ledger.latest(latest.id)
        if missing:
            self._found(*missing, "silence check")
        now_ms = int(self._wall() * 1000)
        if (
            dead(connection.seen, connection.opened_ms, latest.id, latest.timestamp, now_ms)
            and connection.connected
        ):
            log.warning(
                "stream silent while Binance trades, reconnecting %s",
                kv(symbol=self.symbol, latest=latest.id),
            )
            connection.close()

    # -- implausible ids ------------------------------------------------------------------

    def suspect(self, connection: Connection, tick: Tick) -> None:
        """A trade whose id jumped implausibly far: not stored, not trusted, until REST
        confirms it. The trades that follow it are held meanwhile (and taken once it is
        confirmed); any dropped come back as a gap, revealed by the next trade or a check."""
        self.unconfirmed += 1
        if self._verifying is not None and not self._verifying.dead:
            if len(self._held) < HELD_MAX:
                self._held.append((connection, tick))
        elif self._clock() >= self._next_verify:
            self._held = []
            self._verifying = self._group.spawn(self._confirm, connection, tick)

    def _confirm(self, connection: Connection, tick: Tick) -> None:
        known = self.ledger.last
        try:
            found = self._rest.agg_trades(self.symbol, from_id=tick.id, limit=1)
            error = None
        except RestError as exc:
            found, error = [], exc
        held, self._held = self._held, []
        if found and found[0].id == tick.id and found[0].timestamp == tick.timestamp:
            log.info(
                "trade id jump confirmed %s",
                kv(symbol=self.symbol, id=tick.id, after=known),
            )
            self._accept(connection, tick)
            for held_connection, held_tick in held:
                self._take(held_connection, held_tick)
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
