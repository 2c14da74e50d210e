"""The history import (`python -m tickd.admin import`): every aggTrade of a symbol from a UTC
day on, from Binance's public archive (data.binance.vision), then from REST what the archive
has not published yet, into `prices_<SYMBOL>` beside a running store. This module runs it
(`Importer`) and says how it went (`Report`); `archive` knows the archive's files,
`downloads` stores them, `restdays` fills days from REST, `progress` shows the way.

A plain process, not gevent-patched: it blocks in SQLite (busy timeout) and in urllib
(a socket timeout per operation), and sleeps with time.sleep.

The plan is a list of periods, whole calendar months (one monthly file) and single days.
A period is skipped when it is already stored: its record in `history_import` (written
once every id of a file or of a REST day is stored) still matches the table, or the ids
from the tick before it to the tick after it are all there. What is not skipped is
downloaded (zip and CHECKSUM, sha256 checked), read as a stream and written in short
transactions; a monthly file the archive lacks becomes its days; a day the archive lacks
comes from REST if Binance still serves it. With `recheck`, the CHECKSUM of each file
stored earlier is fetched again, and a file Binance has replaced is stored again over its
rows. At the end the ids from the first trade of FROM to the end are audited; anything
missing is reported with its reason, and the import fails (exit 1). Nothing is deleted, so
a rerun goes on where a failed or killed run stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import io
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import database
from .archive import DAY_MS, TIMEOUT, Period, day_ms, month_end, plan, utc_day
from .downloads import Downloads
from .progress import Progress, duration
from .rest import Rest
from .restdays import RestDays
from .text import iso_time

REST_WINDOW_MS = 2 * DAY_MS  # Binance serves aggTrades by id for about the last two days


# -- the result --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the import could not get: which period, and why."""

    period: Period
    reason: str


@dataclass(frozen=True, slots=True)
class Hole:
    """Ids missing after the import, and the trade times around them (ms)."""

    first: int
    last: int
    since: int  # time of the trade before `first`
    until: int  # time of the trade after `last`

    def overlaps(self, period: Period) -> bool:
        return period.first <= utc_day(self.until) and period.last >= utc_day(self.since)

    def text(self) -> str:
        count = self.last - self.first + 1
        return (
            f"ids {self.first}..{self.last} missing ({count:,} trade{'s' * (count != 1)}), "
            f"traded between {iso_time(self.since)} and {iso_time(self.until)}"
        )


UNEXPLAINED = "in no file (one stops early, or the next starts late) and out of REST's reach"


@dataclass(slots=True)
class Report:
    """What the import did, and what is missing (nothing, if `complete`)."""

    symbol: str
    first: datetime.date
    last: datetime.date | None  # None: up to the live edge
    ids: tuple[int, int] | None = None  # first and last id audited
    problems: list[Problem] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    downloaded: int = 0  # files
    downloaded_bytes: int = 0
    skipped: int = 0  # periods already stored
    unchecked: int = 0  # of those, taken as stored without re-checking a file of theirs
    rechecked: int = 0  # files stored earlier whose CHECKSUM was fetched again (--recheck)
    replaced: int = 0  # of those, files Binance had replaced, stored again
    changed: int = 0  # rows those added or corrected (another timestamp or price)
    rows: int = 0  # written (stored or already there)
    rest_rows: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.problems and not self.holes and self.ids is not None

    def summary(self) -> str:
        """One line for stdout when complete."""
        to = self.last.isoformat() if self.last else "now"
        first, last = self.ids or (0, -1)
        return (
            f"{self.symbol} {self.first} .. {to} complete: ids {first}..{last} "
            f"({last - first + 1:,} trades, none missing); {self.downloaded} files downloaded "
            f"({self.downloaded_bytes / 1e6:,.1f} MB), {self._already_stored()}, "
            f"{self.rest_rows:,} trades from REST; {duration(self.seconds)}"
        )

    def _already_stored(self) -> str:
        """How many periods were found stored, and what re-checking them found."""
        notes = []
        if self.rechecked:
            notes.append(
                f"{self.rechecked} files re-checked: {self.replaced} replaced, "
                f"{self.changed:,} rows changed"
            )
        if self.unchecked:
            notes.append(f"{self.unchecked} not re-checked")
        text = f"{self.skipped} periods already stored"
        return f"{text} ({'; '.join(notes)})" if notes else text

    def failure(self) -> str:
        """The lines for stderr when incomplete: each day (or run of days) that could not
        be had and why, with the ids missing there; then ids missing for no reason met."""
        lines, told = [f"{self.symbol}: the import is incomplete"], set()
        for first, last, reason in _grouped(self.problems):
            days = first.name if first == last else f"{first.name} .. {last.name}"
            lines.append(f"  {days}: {reason}")
            span = Period(first.first, last.last)
            for hole in self.holes:
                if hole not in told and hole.overlaps(span):
                    lines.append(f"    {hole.text()}")
                    told.add(hole)
        lines += [f"  {hole.text()}: {UNEXPLAINED}" for hole in self.holes if hole not in told]
        if self.ids is None and not self.problems:
            lines.append("  nothing stored from the first day on")
        lines.append(
            "Everything stored stays. Run the same command again to retry: "
            "what is stored is not downloaded again."
        )
        return "\n".join(lines)


def _grouped(problems: list[Problem]) -> Iterator[tuple[Period, Period, str]]:
    """Consecutive periods with the same reason, as (first, last, reason)."""
    run: list[Problem] = []
    for problem in problems:
        if run and (
            problem.reason != run[-1].reason
            or problem.period.first != run[-1].period.last + datetime.timedelta(days=1)
        ):
            yield run[0].period, run[-1].period, run[0].reason
            run = []
        run.append(problem)
    if run:
        yield run[0].period, run[-1].period, run[0].reason


# -- the import --------------------------------------------------------------------------


class Importer:
    """One import of `symbol` from day `first` to day `last` (None: up to the live edge)
    into the database of `conn` (busy timeout about 5 s), whose file is at `db_path`: the
    plan's periods in order, each skipped if already stored (its archive files re-checked
    first if `recheck`), else taken from the archive (`Downloads`) or from REST
    (`RestDays`); then the audit of every id."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        symbol: str,
        first: datetime.date,
        last: datetime.date | None,
        *,
        db_path: str,
        archive_url: str,
        rest: Rest,
        progress: Progress | None = None,
        pacer: database.Pacer | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        timeout: float = TIMEOUT,
        recheck: bool = False,
    ):
        self.conn, self.symbol, self.first, self.last = conn, symbol, first, last
        self.recheck = recheck
        self.now_ms = int(wall() * 1000)
        self.today = utc_day(self.now_ms)
        self.periods = plan(first, last or self.today, self.today)
        total = sum(period.days for period in self.periods)
        self.progress = progress or Progress(io.StringIO(), symbol, total)
        self.progress.total = total
        pacer = pacer or database.Pacer(conn, symbol, sleep=sleep)
        self.report = Report(symbol, first, last)
        self.scratch = os.path.abspath(db_path) + f".import-{os.getpid()}.zip"
        self.downloads = Downloads(
            conn,
            symbol,
            archive_url,
            scratch=self.scratch,
            pacer=pacer,
            progress=self.progress,
            fail=self._fail,
            problem=self._problem,
            sleep=sleep,
            timeout=timeout,
        )
        self.rest_days = RestDays(
            conn,
            symbol,
            rest,
            pacer=pacer,
            progress=self.progress,
            problem=self._problem,
            fail=self._fail,
            live_edge=last is None,
            now_ms=self.now_ms,
            sleep=sleep,
        )

    def run(self) -> Report:
        """Import, audit, and return the report. Raises sqlite3.Error (the database failed:
        nothing is reported done) and KeyboardInterrupt."""
        started = time.monotonic()
        remove_scratch(self.scratch)
        with database.transaction(self.conn):
            database.create_prices(self.conn, self.symbol)
        try:
            queue = deque(self.periods)
            while queue:
                period = queue.popleft()
                if self._stored(period):
                    self._skip(period)
                    continue
                if period.last >= self.today:  # never in the archive yet: REST
                    self.rest_days.fill(period)
                    continue
                found = self.downloads.store(period)
                if found is not None:
                    continue
                if period.monthly:  # no monthly file (yet): its days, one file each
                    self.progress.line(period, "no monthly file, taking its days")
                    queue.extendleft(reversed(period.daily()))
                elif period.end_ms > self.now_ms - REST_WINDOW_MS:
                    self.progress.line(period, "not in the archive (yet), taking it from REST")
                    self.rest_days.fill(period)
                else:
                    self._fail(
                        period, "not in the archive (404), and older than REST's 2-day window"
                    )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.scratch)
        self._audit()
        report, downloads = self.report, self.downloads
        report.downloaded, report.downloaded_bytes = downloads.files, downloads.bytes
        report.rechecked, report.replaced = downloads.rechecked, downloads.replaced
        report.changed, report.rest_rows = downloads.changed, self.rest_days.rows
        report.rows = self.progress.rows
        report.seconds = time.monotonic() - started
        self.progress.close()
        return report

    def _problem(self, period: Period, reason: str) -> None:
        """Note what could not be had in `period`; it is reported at the end."""
        self.report.problems.append(Problem(period, reason))
        self.progress.line(period, "problem:", reason=reason)

    def _fail(self, period: Period, reason: str) -> None:
        """`period` is finished, and could not be had."""
        self.report.problems.append(Problem(period, reason))
        self.progress.done(period, "failed:", reason=reason, say=True)

    # -- already stored? -------------------------------------------------------------------

    def _stored(self, period: Period) -> bool:
        """True if every trade of `period` is stored: its import record (or, for a day,
        its month's) still matches the table, or the ids from the tick before the period
        to the tick after it are all there. Ticks the store streamed count as well."""
        names = [period.name]
        if not period.monthly:
            names.append(period.first.strftime("%Y-%m"))
        for name in names:
            ids = database.imported(self.conn, self.symbol, name)
            if ids is not None and self._all(*ids):
                return True
        if period.monthly and all(self._recorded(day.name) for day in period.daily()):
            return True
        before = database.tick_before(self.conn, self.symbol, period.start_ms)
        after = database.tick_since(self.conn, self.symbol, period.end_ms)
        return before is not None and after is not None and self._all(before[0], after[0])

    def _recorded(self, name: str) -> bool:
        ids = database.imported(self.conn, self.symbol, name)
        return ids is not None and self._all(*ids)

    def _all(self, first: int, last: int) -> bool:
        return database.count_ids(self.conn, self.symbol, first, last) == last - first + 1

    def _skip(self, period: Period) -> None:
        """`period` is already stored: taken as it is, or with `recheck` once the archive
        files recorded for it are re-checked."""
        self.report.skipped += 1
        if self.recheck and self._recheck(period):
            self.progress.done(period, "already stored, re-checked")
        else:
            self.report.unchecked += 1
            self.progress.done(period, "already stored")

    def _recheck(self, period: Period) -> bool:
        """Re-check (Downloads.recheck) each archive file recorded as stored for `period`:
        its own, its month's (a day) or its days' (a month). True if there is one and
        every CHECKSUM was fetched."""
        month = Period(period.first.replace(day=1), month_end(period.first))
        files = [period, *(period.daily() if period.monthly else [month])]
        checked = [
            self.downloads.recheck(period, file, sha256)
            for file in files
            if (sha256 := database.imported_sha256(self.conn, self.symbol, file.name))
        ]
        return bool(checked) and all(checked)

    # -- the audit -------------------------------------------------------------------------

    def _audit(self) -> None:
        """Walk the ids from the first trade of FROM to the end (TO's last trade, or the
        last stored): every id missing is reported with what the periods around it met."""
        first = database.tick_since(self.conn, self.symbol, day_ms(self.first))
        if self.last is not None:
            last = database.tick_before(self.conn, self.symbol, day_ms(self.last) + DAY_MS)
        else:
            last = database.last_tick(self.conn, self.symbol)
        if first is None or last is None or last[0] < first[0]:
            if not self.report.problems:
                self.report.problems.append(Problem(self.periods[0], "no trade stored"))
            return
        self.report.ids = (first[0], last[0])
        if self._all(first[0], last[0]):
            return
        for low, high in database.missing_ids(self.conn, self.symbol, first[0], last[0]):
            for piece in subtract((low, high), self.rest_days.absent):
                since = database.tick_at(self.conn, self.symbol, piece[0] - 1)[1]
                until = database.tick_at(self.conn, self.symbol, piece[1] + 1)[1]
                self.report.holes.append(Hole(*piece, since, until))


def subtract(span: tuple[int, int], absent: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the id range `span` outside every range of `absent`."""
    pieces = [span]
    for low, high in absent:
        pieces = [
            part
            for first, last in pieces
            for part in ((first, min(last, low - 1)), (max(first, high + 1), last))
            if part[0] <= part[1]
        ]
    return pieces


def remove_scratch(path: str) -> None:
    """Remove the download files of import processes that no longer run (killed), found
    beside `path` (`<db>.import-<pid>.zip`)."""
    prefix = path[: path.rindex(".import-") + len(".import-")]
    for name in glob.glob(glob.escape(prefix) + "*.zip"):
        pid = name[len(prefix) : -len(".zip")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
        except PermissionError:  # another user's process: alive
            pass
