"""What one symbol's connections deliver, taken in: each frame parsed, its id noted in the
ledger (which says what is missing), and the trade stored. The per-tick path of the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .database import Database
from .ledger import Ledger
from .logs import Throttle, kv
from .repair import Repair, Stats
from .wire import BadFrame, Tick, parse_frame

if TYPE_CHECKING:
    from .checks import Checks, Connection

log = logging.getLogger(__name__)


class Intake:
    """One symbol's trades, from frame to table. `checks` is set once they exist (they hand
    confirmed trades back through `accept` and `take`)."""

    def __init__(
        self,
        symbol: str,
        ledger: Ledger,
        *,
        db: Database,
        repair: Repair,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.symbol = symbol
        self.ledger = ledger
        self.checks: Checks | None = None
        self.trades = 0  # trades taken since start
        self.last_timestamp: int | None = None  # trade time (ms) of the newest trade taken
        self.last_trade: float | None = None  # monotonic time of the last trade taken
        self._db = db
        self._repair = repair
        self._stats = stats
        self._clock = clock
        self._debug = log.isEnabledFor(logging.DEBUG)  # read once: checked per trade
        self._bad_frames = Throttle(60.0, clock)

    def frame(self, connection: Connection, data: bytes) -> None:
        """A text message: a trade to take, another event to ignore, or a bad frame to skip."""
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
            self.take(connection, tick)

    def take(self, connection: Connection, tick: Tick) -> None:
        """A trade: accepted, or held for a check if its id jumped implausibly far."""
        if self.ledger.plausible(connection.seen, tick.id) or self.checks is None:
            self.accept(connection, tick)
        else:
            self.checks.suspect(connection, tick)

    def accept(self, connection: Connection, tick: Tick) -> None:
        """Count, note in the ledger (queueing what it finds missing), and store a trade."""
        if self._debug:
            log.debug("trade %s", kv(symbol=self.symbol, id=tick.id, time=tick.timestamp))
        self.trades += 1
        connection.trades += 1
        if connection.trades == 1:
            connection.delivered.set()
        self.last_trade = self._clock()
        missing = self.ledger.trade(connection.seen, tick.id)  # before the write, which may wait
        if self.ledger.last == tick.id:
            self.last_timestamp = tick.timestamp
        if missing:
            self.gap(*missing, "stream")
        if not self._db.insert(self.symbol, tick):
            self._stats.write_errors += 1
            self._repair.add(tick.id, tick.id)

    def gap(self, first: int, last: int, found_by: str) -> None:
        """Ids first..last are missing: count, log, and queue them for repair."""
        self._stats.gaps_found += 1
        log.info(
            "gap found %s",
            kv(symbol=self.symbol, ids=f"{first}-{last}", count=last - first + 1, by=found_by),
        )
        self._repair.add(first, last)
