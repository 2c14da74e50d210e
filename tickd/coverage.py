"""How far back each table is complete: the first id of the continuous run of stored ids that
reaches the newest tick, looked up again every minute for /metrics.

The first look at a table counts its ids down from the newest in windows, other greenlets
running between the counts; later looks start from the run found before, so they cost a few
counts: the ids stored since, and whether the id just below the run has arrived (repair, or
a history import, filled what was missing).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import gevent

from .logs import Throttle, failure, kv

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between looks


class Run(NamedTuple):
    """The continuous run of ids ending at a table's newest tick."""

    first_id: int
    first_time: int  # ms, the trade time of first_id
    last_id: int


class Coverage:
    """`runs`: symbol -> Run, for every prices_ table that has ticks."""

    def __init__(
        self,
        db: Database,
        interval: float = INTERVAL,
        sleep: Callable[[float], object] = gevent.sleep,
    ):
        self._db = db
        self._interval = interval
        self._sleep = sleep
        self._errors = Throttle(600.0)  # a line per table per ten minutes
        self.runs: dict[str, Run] = {}
        self._file = 0  # which database file: forget() counts one more

    def run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 (a bug: said, and looked at again later)
                self._failed("", exc)
            self._sleep(self._interval)

    def refresh(self) -> None:
        """Look at every table once; a table that cannot be read keeps its last run."""
        try:
            self._db.refresh()  # tables another program made since
            symbols = self._db.price_tables()
        except sqlite3.Error as exc:
            self._failed("", exc)
            return
        for symbol in symbols:
            known = self.runs.get(symbol)
            try:
                found = self._db.continuous_run(symbol, known and (known.first_id, known.last_id))
            except sqlite3.Error as exc:
                self._failed(symbol, exc)
                continue
            if found is None:
                self.runs.pop(symbol, None)
            else:
                self.runs[symbol] = Run(*found)
        for gone in self.runs.keys() - set(symbols):
            del self.runs[gone]

    def forget(self) -> None:
        """The database file was replaced: what was known of the old one does not hold."""
        self.runs.clear()
        self._file += 1

    def _failed(self, symbol: str, exc: Exception) -> None:
        held = self._errors.allow(symbol)
        if held is not None:
            log.warning(
                "cannot tell how far back the table is complete %s",
                kv(symbol=symbol or None, error=failure(exc), suppressed=held),
            )
