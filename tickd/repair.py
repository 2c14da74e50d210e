"""Gap repair: the ids a symbol is missing, fetched over REST and stored, oldest first."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import gevent
import gevent.event

from .database import Database
from .ledger import Ranges
from .logs import failure, kv
from .rest import INVALID_SYMBOL, OUT_OF_WINDOW, NotListed, Rest, RestError
from .text import format_time

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0
RETRY_CAP = 300.0  # seconds; a gap is retried for as long as it can be filled
EMPTY_ANSWERS = 10  # empty pages in a row for ids known to exist: Binance will not serve them


class _Outcome(enum.Enum):
    """What became of one page."""

    STORED = "stored"  # its trades are in the table
    EMPTY = "empty"  # Binance answered no trade from the id asked
    UNWRITTEN = "unwritten"  # Binance answered trades, the database did not take them


class Stats:
    """Per-symbol counters, for logs and /metrics."""

    __slots__ = ("gaps_filled", "gaps_found", "ids_repaired", "ids_unfillable", "write_errors")

    def __init__(self) -> None:
        self.gaps_found = self.gaps_filled = 0
        self.ids_repaired = self.ids_unfillable = self.write_errors = 0


class Repair:
    """One symbol's repair queue and the body of its worker greenlet (`run`).

    `add(first, last)` queues ids; the worker fetches pages of up to 1000 trades from the
    oldest queued id, stores each page in one transaction, and removes from the queue every
    id the page accounts for (stored, or absent from Binance's own history). Failures (REST,
    database, anything unforeseen) are retried with a doubling delay up to 5 minutes, for as
    long as it takes; only ids Binance no longer serves (older than its REST window, about
    48 h, or never served after many empty answers) are given up, and logged as unfillable.
    """

    def __init__(
        self,
        symbol: str,
        db: Database,
        rest: Rest,
        stats: Stats,
        *,
        not_listed: NotListed | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = gevent.sleep,
    ):
        self.symbol = symbol
        self.gaps = Ranges()
        self.stats = stats
        self._db = db
        self._rest = rest
        self._clock = clock
        self._sleep = sleep
        self._empty = 0  # empty answers in a row
        self._wake = gevent.event.Event()
        # Shared with the symbol's checks: "not listed" once an hour, whoever meets it.
        self._not_listed = not_listed or NotListed(symbol, clock)
        self._started: float | None = None  # when the queue last became non-empty
        self._repaired_since = 0

    def add(self, first: int, last: int) -> None:
        if first > last:
            return
        if not self.gaps:
            self._started, self._repaired_since = self._clock(), 0
        self.gaps.add(first, last)
        self._wake.set()

    def run(self) -> None:
        """Work the queue until killed. An Exception of any kind is logged and retried (only
        a BaseException such as GreenletExit ends it), and a gap leaves the queue only once
        stored or found unfillable."""
        delay = RETRY_FIRST
        while True:
            if not self.gaps:
                self._wake.clear()
                self._wake.wait()
                continue
            first, last = self.gaps.first()
            try:
                done = self._step(first, last)
            except Exception as exc:  # noqa: BLE001 - a bug or an answer nobody foresaw
                log.error(
                    "repair failed unexpectedly, retrying %s",
                    kv(symbol=self.symbol, error=failure(exc)),
                )
                done = False
            if done:
                delay = RETRY_FIRST
                gevent.sleep(0)  # other greenlets run between pages
            else:
                self._sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

    def _step(self, first: int, last: int) -> bool:
        """One page from `first`, and what follows from its answer. False if the caller
        should wait before the next."""
        try:
            outcome = self._page(first, last)
        except RestError as exc:
            if exc.code == OUT_OF_WINDOW and self._give_up_old(first, last):
                self._report_progress()
                return True
            self._log_failure(exc)
            return False
        if outcome is _Outcome.UNWRITTEN:
            # The page had trades, so Binance serves them: the database is what failed
            # (it has logged why). Retried for as long as it takes; never given up.
            self._empty = 0
            return False
        if outcome is _Outcome.EMPTY:
            self._empty += 1
            if self._empty < EMPTY_ANSWERS:
                return False
            self._unfillable(first, last, "Binance serves no trade from this id")
        self._empty = 0
        self._report_progress()
        return True

    def _page(self, first: int, last: int) -> _Outcome:
        """Fetch and store one page from `first`. Raises RestError."""
        ticks = self._rest.agg_trades(self.symbol, from_id=first)
        ticks = [tick for tick in ticks if tick.id >= first]
        if not ticks:
            return _Outcome.EMPTY
        if not self._db.insert_many(self.symbol, ticks):
            self.stats.write_errors += 1
            return _Outcome.UNWRITTEN
        # Every id from `first` to the page's last one is now stored or never existed:
        # the answer lists consecutive trades, so an id it skips is a hole in Binance's history.
        covered = ticks[-1].id
        log.debug("repair page stored %s", kv(symbol=self.symbol, ids=f"{first}-{covered}"))
        queued = sum(min(b, covered) - max(a, first) + 1 for a, b in self.gaps if a <= covered)
        self.gaps.remove(first, covered)
        self.stats.ids_repaired += queued
        self._repaired_since += queued
        return _Outcome.STORED

    def _report_progress(self) -> None:
        if not self.gaps and self._started is not None:
            self.stats.gaps_filled += 1
            log.info(
                "gap filled %s",
                kv(
                    symbol=self.symbol,
                    ids=self._repaired_since,
                    seconds=f"{self._clock() - self._started:.1f}",
                ),
            )
            self._started = None

    def _give_up_old(self, first: int, last: int) -> bool:
        """`first` is older than Binance's REST window: find the first id it still serves
        (bisection, about 30 calls for a billion ids) and give up only the ids before it.
        False if a call failed otherwise (the caller retries later)."""
        lo, hi = first, last + 1  # lo is not served; hi is served, or just past the gap
        probe = last  # the gap's last id first: often nothing of the gap is served at all
        while probe is not None:
            try:
                self._rest.agg_trades(self.symbol, from_id=probe, limit=1)
                hi = probe
            except RestError as exc:
                if exc.code != OUT_OF_WINDOW:
                    return False
                lo = probe
            probe = (lo + hi) // 2 if lo + 1 < hi else None
        self._unfillable(first, hi - 1, "older than Binance's REST window")
        return True

    def _unfillable(self, first: int, last: int, reason: str) -> None:
        before, after = self._db.neighbour_times(self.symbol, first, last)
        self.gaps.remove(first, last)
        self.stats.ids_unfillable += last - first + 1
        log.error(
            "unfillable gap %s",
            kv(
                symbol=self.symbol,
                ids=f"{first}-{last}",
                count=last - first + 1,
                after=format_time(before) if before else "?",
                before=format_time(after) if after else "?",
                reason=reason,
            ),
        )

    def _log_failure(self, exc: RestError) -> None:
        if exc.code == INVALID_SYMBOL:
            self._not_listed.report()
            return
        log.warning("repair failed, retrying %s", kv(symbol=self.symbol, error=exc))
