"""The order of sqlite_sequence's rows: the tables that take the most ticks first.

The spec's prices_ tables are AUTOINCREMENT, so every INSERT first looks for its table's row
in sqlite_sequence, reading that table from its first row until the name matches (SQLite
3.40's code for it is a plain scan). The rows are in the order the tables got their first
tick, so a busy symbol whose table came late pays for every row before it, on every tick: on
this machine about 80 ns a row, 48 µs a tick at the end of 600 rows, where a whole tick costs
about 120 µs. A minute after the start, then every five minutes, the rows are put in the
order of the ticks each table took since the look before, when that saves a fifth of the rows
read. Only the rowids change: every name and value stays, so what AUTOINCREMENT hands out does
not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import gevent

from .logs import failure, kv

if TYPE_CHECKING:
    from .database import Database
    from .stream import Stream

log = logging.getLogger(__name__)

FIRST = 60.0  # seconds from the start to the first look: the busiest have shown by then
INTERVAL = 300.0  # seconds between looks
GAIN = 0.8  # rewrite when the new order reads at most this share of the rows the current one does


def rows_read(names: Sequence[object], counts: Mapping[object, int]) -> int:
    """Rows of sqlite_sequence the inserts in `counts` (table name -> inserts) read, with
    its rows in the order of `names`."""
    return sum(counts.get(name, 0) * position for position, name in enumerate(names, 1))


def plan(names: Sequence[object], counts: Mapping[object, int]) -> list[int] | None:
    """The order (indexes into `names`) with the most inserts first and the others as they
    were; None if it would not read at most GAIN of the rows the current order reads."""
    order = sorted(range(len(names)), key=lambda i: -counts.get(names[i], 0))  # stable
    now = rows_read(names, counts)
    if now == 0 or rows_read([names[i] for i in order], counts) > GAIN * now:
        return None
    return order


class SequenceOrder:
    """Reorders sqlite_sequence `first` seconds after the start, then every `interval`, by the
    ticks each stream took meanwhile. `streams()` gives the running streams by symbol, each
    with the ticks it took so far (`intake.trades`; a stream started again counts from 0)."""

    def __init__(
        self,
        db: Database,
        streams: Callable[[], Mapping[str, Stream]],
        first: float = FIRST,
        interval: float = INTERVAL,
        sleep: Callable[[float], object] = gevent.sleep,
    ):
        self._db = db
        self._streams = streams
        self._first = first
        self._interval = interval
        self._sleep = sleep
        self._before: Mapping[str, int] = {}  # the first look counts from the start

    def run(self) -> None:
        delay = self._first
        while True:
            self._sleep(delay)
            delay = self._interval
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error or a bug: next time)
                log.warning("cannot reorder sqlite_sequence %s", kv(error=failure(exc)))

    def look(self) -> bool:
        """Count the ticks since the last look and reorder if it pays; whether it did."""
        now = {symbol: stream.intake.trades for symbol, stream in self._streams().items()}
        counts = {}
        for symbol, n in now.items():
            before = self._before.get(symbol, 0)
            counts[f"prices_{symbol}"] = n - before if n >= before else n  # n: a new stream
        self._before = now
        reads: list[int] = []  # rows read in the old order and in the new, for the log

        def order(names: list[object]) -> list[int] | None:
            new = plan(names, counts)
            if new is not None:
                reads[:] = [rows_read(names, counts), rows_read([names[i] for i in new], counts)]
            return new

        if not self._db.reorder_sequence(order):
            return False
        ticks = max(sum(counts.values()), 1)
        rows = f"{reads[0] / ticks:.1f}->{reads[1] / ticks:.1f}"
        log.info("sqlite_sequence reordered %s", kv(rows_read_per_insert=rows))
        return True
