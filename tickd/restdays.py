"""The history import's days from REST: the days the archive has not published yet (today,
a day it lags on), filled over `GET /fapi/v1/aggTrades?fromId=` within REST's window of
about two days, up to a trade of the next day, REST's latest trade, or the import's end."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from . import database
from .archive import Period
from .progress import Progress
from .rest import INVALID_SYMBOL, OUT_OF_WINDOW, PAGE, Rest, RestError
from .wire import Tick

REST_TRIES = 8  # per call, the delay doubling from 1 s to 60 s
REFUSED = object()  # REST's answer to an id older than its window (-4166)


class RestGone(Exception):
    """REST cannot serve this symbol at all (-1121, or errors that outlasted the retries)."""


class RestDays:
    """Fills single days of `symbol` from REST into `prices_<symbol>` through `pacer`.

    What cannot be had is told through `problem(period, reason)` (noted, the day goes on)
    and `fail(period, reason)` (the day is over). A day is recorded in `history_import`
    once REST has shown a trade after it and every id of it is stored. `live_edge`: the
    import runs up to now, so a day in progress ends at REST's latest trade when first
    asked. `rows` counts the trades written; `absent` holds the id ranges REST skips,
    which never existed (holes in Binance's own history)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        symbol: str,
        rest: Rest,
        *,
        pacer: database.Pacer,
        progress: Progress,
        problem: Callable[[Period, str], None],
        fail: Callable[[Period, str], None],
        live_edge: bool,
        now_ms: int,
        sleep: Callable[[float], object] = time.sleep,
    ):
        self.conn, self.symbol, self.rest = conn, symbol, rest
        self.pacer, self.progress, self.sleep = pacer, progress, sleep
        self._report_problem, self._report_failure = problem, fail
        self.live_edge, self.now_ms = live_edge, now_ms
        self.rows = 0
        self.absent: list[tuple[int, int]] = []
        self._target: int | None = None  # REST's latest id, once asked
        self._gone: str | None = None
        self._failed: set[Period] = set()  # days with a problem: never recorded as stored

    def fill(self, period: Period) -> None:
        """Fill `period` (a day) from REST: the ids missing from the tick before it (or the
        day's first trade) on, until a trade of the next day, REST's latest trade when the
        day is in progress, or TO."""
        if self._gone:
            self._fail(period, self._gone)
            return
        written = self.rows
        try:
            self._day(period)
        except RestGone as exc:
            self._gone = str(exc)
            self._fail(period, self._gone)
            return
        self.progress.done(period, "from REST", rows=self.rows - written)

    def _problem(self, period: Period, reason: str) -> None:
        self._failed.add(period)
        self._report_problem(period, reason)

    def _fail(self, period: Period, reason: str) -> None:
        self._failed.add(period)
        self._report_failure(period, reason)

    def _day(self, period: Period) -> None:
        before = database.tick_before(self.conn, self.symbol, period.start_ms)
        if before is not None:
            start = before[0] + 1
        else:
            start = self._first_since(period)
            if start is None:
                return
        end_ms = period.end_ms
        if self.live_edge and end_ms > self.now_ms:
            self._latest()  # the live edge: REST's latest trade now, not a moving target
        stored = database.tick_before(self.conn, self.symbol, end_ms)
        upper = stored[0] if stored is not None and stored[0] >= start else start - 1
        for first, last in list(database.missing_ids(self.conn, self.symbol, start, upper)):
            self._pages(period, first, last)
        over = self._pages(period, upper + 1, None)
        # Over (a trade of the next day seen) and every id of it stored: recorded, so that
        # a rerun neither asks REST nor downloads the day once the archive has it.
        last = database.tick_before(self.conn, self.symbol, end_ms)
        if over and period not in self._failed and last and self._all(start, last[0]):
            database.record_import(
                self.conn, self.symbol, period.name, (start, last[0]), source="rest"
            )

    def _all(self, first: int, last: int) -> bool:
        return database.count_ids(self.conn, self.symbol, first, last) == last - first + 1

    def _latest(self) -> int | None:
        if self._target is None:
            page = self._call(None, 1)
            self._target = page[-1].id if page else 0
        return self._target

    def _pages(self, period: Period, first: int, last: int | None) -> bool:
        """Fetch ids `first`..`last` (None: on until the period's end, REST's latest, or
        the live edge) and store them, a page of 1000 at a time; True if a trade after the
        period was seen (the period is over)."""
        cursor, bounds = first, [bound for bound in (last, self._target) if bound is not None]
        upto = min(bounds, default=None)  # past neither `last` nor the live edge
        while last is None or cursor <= last:
            if self._target is not None and cursor > self._target:
                return False
            try:
                page = self._call(cursor)
            except RestError as exc:  # -4166: older than REST's window
                if exc.code != OUT_OF_WINDOW:
                    raise
                reachable = self._first_reachable(cursor, last)
                self._problem(
                    period,
                    f"ids {cursor}..{reachable - 1} are older than REST's window "
                    "(-4166) and not in the archive",
                )
                cursor = reachable
                continue
            if not page:
                return self._over(period)
            rows, over, skipped = take(page, cursor, period.end_ms, upto)
            self.absent += skipped
            if rows:
                self.progress.writing(period)
                self.rows += self.pacer.write(rows, self.progress.wrote)
            if over or len(rows) < len(page):
                return over
            if len(page) < PAGE:  # REST's latest trade
                return self._over(period)
            cursor = page[-1].id + 1
        return False

    def _over(self, period: Period) -> bool:
        """After REST's latest trade: True if no trade of `period` can come any more (it
        ended a minute ago: a quiet market traded nothing since)."""
        return self.now_ms >= period.end_ms + 60_000

    def _first_reachable(self, first: int, last: int | None) -> int:
        """The lowest id from `first` on that REST still serves (REST's window moves: the
        oldest ids answer -4166); one past `last` (or the latest) if none."""
        if last is None:  # up to REST's latest trade
            latest = self._call(None, 1)
            last = latest[-1].id if latest else first
        low, high = first, last + 1  # refused; served, or past the end
        while high - low > 1:
            middle = (low + high) // 2
            if self._probe(middle) is REFUSED:
                low = middle
            else:
                high = middle
        return high

    def _probe(self, from_id: int) -> Tick | object | None:
        """The first trade from id `from_id` on (None if there is none yet), or REFUSED
        if REST no longer serves that id (-4166)."""
        try:
            page = self._call(from_id, 1)
        except RestError as exc:
            if exc.code != OUT_OF_WINDOW:
                raise
            return REFUSED
        return page[0] if page else None

    def _first_since(self, period: Period) -> int | None:
        """The id of the first trade at or after the start of `period`, when nothing is
        stored before it: found over REST by bisection (a few dozen calls for a busy
        symbol). Its earlier trades out of REST's reach are reported as a problem."""
        since = period.start_ms
        latest = self._call(None, 1)
        if not latest:
            return None
        answer = latest[-1].id
        if latest[-1].timestamp < since:
            return answer + 1
        # Positions: at `high` the first trade from there on is `answer`, at or after
        # `since`; at `low` it is before `since`, or REST refuses it (`refused`).
        high, low, refused, step = answer, 0, False, PAGE
        while True:  # down in growing steps
            probe = max(high - step, 1)
            tick = self._probe(probe)
            if tick is REFUSED or tick.timestamp < since:
                low, refused = (probe, True) if tick is REFUSED else (tick.id, False)
                break
            high, answer, step = probe, tick.id, step * 4
            if probe == 1:
                return answer
        while high - low > 1:
            middle = (low + high) // 2
            tick = self._probe(middle)
            if tick is REFUSED:
                low, refused = middle, True
            elif tick.timestamp < since:
                low, refused = tick.id, False
            else:
                high, answer = middle, tick.id
        if refused:
            self._problem(
                period,
                f"its trades before id {answer} are older than REST's window (-4166) "
                "and not in the archive",
            )
        return answer

    def _call(self, from_id: int | None, limit: int = PAGE) -> list[Tick]:
        """Rest.agg_trades, retried (the delay doubling from 1 s to 60 s) for anything but
        -4166 (raised) and -1121 (RestGone)."""
        delay, error = 1.0, None
        for _ in range(REST_TRIES):
            try:
                return self.rest.agg_trades(self.symbol, from_id, limit)
            except RestError as exc:
                if exc.code == OUT_OF_WINDOW:
                    raise
                if exc.code == INVALID_SYMBOL:
                    raise RestGone(f"Binance does not list {self.symbol} (REST -1121)") from None
                if 400 <= exc.status < 500 and exc.status not in (408, 418, 429):
                    raise RestGone(f"REST refused: {exc}") from None
                error = exc
            self.sleep(delay)
            delay = min(delay * 2, 60.0)
        raise RestGone(f"REST failed {REST_TRIES} times: {error}")


def take(
    page: list[Tick], cursor: int, end_ms: int, upto: int | None
) -> tuple[list[Tick], bool, list[tuple[int, int]]]:
    """The trades of `page` (asked from id `cursor`) that were traded before `end_ms`, with
    ids up to `upto` (None: any); True if one at or after `end_ms` was met; and the id
    ranges the page skips. Those never existed (a hole in Binance's own history): noted,
    never reported missing."""
    rows, skipped, previous = [], [], cursor - 1
    for tick in page:
        if tick.timestamp >= end_ms:
            return rows, True, skipped
        if upto is not None and tick.id > upto:
            break
        if tick.id > previous + 1:
            skipped.append((previous + 1, tick.id - 1))
        rows.append(tick)
        previous = tick.id
    return rows, False, skipped
