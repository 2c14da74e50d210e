"""The history import (`python -m tickd.admin import`): every aggTrade of a symbol from a UTC
day on, from Binance's public archive (data.binance.vision), then from REST what the archive
has not published yet, into `prices_<SYMBOL>` beside a running store.

A plain process, not gevent-patched: it blocks in SQLite (busy timeout) and in urllib
(a socket timeout per operation), and sleeps with time.sleep.

The plan is a list of periods, whole calendar months (one monthly file) and single days.
A period is skipped when it is already stored: its record in `history_import` (written
once every id of a file or of a REST day is stored) still matches the table, or the ids
from the tick before it to the tick after it are all there. What is not skipped is
downloaded (zip and CHECKSUM, sha256 checked), read as a stream and written in short
transactions; a monthly file the archive lacks becomes its days; a day the archive lacks
comes from REST if Binance still serves it. At the end the ids from the first trade of
FROM to the end are audited; anything missing is reported with its reason, and the import
fails (exit 1). Nothing is deleted, so a rerun goes on where a failed or killed run stopped.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import datetime
import fcntl
import glob
import hashlib
import http.client
import io
import itertools
import math
import operator
import os
import re
import signal
import sqlite3
import struct
import time
import zipfile
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO
from urllib.error import HTTPError, URLError
from urllib.parse import quote as url_quote
from urllib.request import Request, urlopen

from . import database
from .logs import kv
from .rest import INVALID_SYMBOL, OUT_OF_WINDOW, PAGE, Rest, RestError
from .text import iso_time
from .wire import Tick

DAY_MS = 86_400_000
REST_WINDOW_MS = 2 * DAY_MS  # Binance serves aggTrades by id for about the last two days
COLUMNS = ("agg_trade_id", "price", "transact_time")
HEADERLESS = (0, 1, 5)  # where COLUMNS are in a file without a header row (before 2022-08-11)
TIMEOUT = 30.0  # seconds per socket operation of a download
CHUNK = 1 << 20  # bytes read and hashed at a time
CHECKSUM_LIMIT = 4096  # bytes of a CHECKSUM file worth reading
DOWNLOAD_TRIES = 4  # per file, for network errors and 5xx (a 404 is an answer)
REST_TRIES = 8  # per call, the delay doubling from 1 s to 60 s
INF = math.inf
BLOCK = 1 << 18  # characters of CSV split into lines at a time
_SPLIT = operator.methodcaller("split", ",")
Columns = tuple[array, array, array]  # ids, times (int64), prices (float64) of a block of rows
REFUSED = object()  # REST's answer to an id older than its window (-4166)
_SHA256 = re.compile(r"\s*([0-9a-fA-F]{64})(?:\s|$)")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def day_ms(day: datetime.date) -> int:
    """Milliseconds since the epoch at 00:00 UTC of `day`."""
    return calendar.timegm(day.timetuple()) * 1000


def utc_day(ms: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date()


def parse_day(text: str) -> datetime.date:
    """The UTC day written `YYYY-MM-DD`; ValueError for anything else."""
    if not _DAY.fullmatch(text):
        raise ValueError(f"not YYYY-MM-DD: {text!r}")
    return datetime.date.fromisoformat(text)


# -- the plan (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """One archive file's worth of UTC days: a single day, or a whole calendar month."""

    first: datetime.date
    last: datetime.date

    @property
    def monthly(self) -> bool:
        return self.first != self.last

    @property
    def name(self) -> str:
        """`YYYY-MM` for a month, `YYYY-MM-DD` for a day, as the archive names its files."""
        return self.first.strftime("%Y-%m") if self.monthly else self.first.isoformat()

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def start_ms(self) -> int:
        return day_ms(self.first)

    @property
    def end_ms(self) -> int:
        """The first millisecond after the period."""
        return day_ms(self.last) + DAY_MS

    def daily(self) -> list[Period]:
        return [Period(day, day) for day in _days(self.first, self.last)]

    def file(self, symbol: str) -> str:
        return f"{symbol}-aggTrades-{self.name}.zip"

    def path(self, symbol: str) -> str:
        """The file's path under the archive's base URL (DESIGN 8)."""
        frequency = "monthly" if self.monthly else "daily"
        name = url_quote(symbol, safe="")
        return f"/data/futures/um/{frequency}/aggTrades/{name}/{url_quote(self.file(symbol))}"


def _days(first: datetime.date, last: datetime.date) -> Iterator[datetime.date]:
    day = first
    while day <= last:
        yield day
        day += datetime.timedelta(days=1)


def month_end(day: datetime.date) -> datetime.date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def plan(first: datetime.date, last: datetime.date, today: datetime.date) -> list[Period]:
    """The periods from day `first` to day `last`, in order: each calendar month wholly
    inside and over before `today` is one monthly period, every other day a daily one."""
    periods, day = [], first
    while day <= last:
        end = month_end(day)
        if day.day == 1 and end <= last and end < today:
            periods.append(Period(day, end))
            day = end + datetime.timedelta(days=1)
        else:
            periods.append(Period(day, day))
            day += datetime.timedelta(days=1)
    return periods


# -- reading an archive file (pure, streaming) ---------------------------------------------


class FileError(ValueError):
    """An archive file (or its CHECKSUM) that cannot be read; the message says where."""


def parse_checksum(body: bytes) -> str:
    """The sha256 (lower-case hex) in a CHECKSUM file, `sha256sum` output
    (`<64 hex>  <name>`); FileError if it holds none."""
    match = _SHA256.match(body.decode("ascii", "replace"))
    if match is None:
        raise FileError("the CHECKSUM file holds no sha256")
    return match[1].lower()


@dataclass(slots=True)
class Stats:
    """What one file held: rows, lowest and highest id, rows out of id order, header."""

    count: int = 0
    low: int = 0
    high: int = 0
    disorder: int = 0  # rows whose id is not above the previous row's
    header: bool = False
    last: int = 0  # the id of the last row read


def read_ticks(text: TextIO, period: Period, stats: Stats) -> Iterator[tuple[int, int, float]]:
    """(id, timestamp, price) of each row of an aggTrades CSV, in the file's order (see
    read_columns)."""
    for ids, times, prices in read_columns(text, period, stats):
        yield from zip(ids, times, prices, strict=True)


def read_columns(text: TextIO, period: Period, stats: Stats) -> Iterator[Columns]:
    """The rows of an aggTrades CSV as columns (ids, times, prices), a block of about
    BLOCK characters at a time; `stats` is up to date after each block. The header row is
    detected (a first field that does not start with a digit), never assumed: files before
    2022-08-11 have none. Raises FileError for a row it cannot read, with its line number,
    or for times that are not milliseconds in the file's days.

    The archive's files quote nothing: a line is split on its commas, a third faster than
    the csv module, which reads any block that holds a quote. A `\r` before the newline is
    left to int() and float(), which ignore it."""
    first = text.readline()
    if not first.strip():
        return
    (names,) = csv.reader([first])
    if names[0][:1].isdigit():
        positions, rest = HEADERLESS, first
    else:
        names = [name.strip().lower() for name in names]
        if not all(column in names for column in COLUMNS):
            raise FileError(f"line 1: a header without {', '.join(COLUMNS)}: {names[:8]}")
        positions, rest, stats.header = tuple(names.index(c) for c in COLUMNS), "", True
    while True:
        block = text.read(BLOCK)
        if block:
            lines = (rest + block).split("\n")
            rest = lines.pop()
        else:
            lines = [rest] if rest.strip() else []
        if lines:
            rows = csv.reader(lines) if '"' in block else map(_SPLIT, lines)
            try:
                yield _columns(rows, positions, period, stats)
            except (ValueError, IndexError, OverflowError) as exc:
                if isinstance(exc, FileError):
                    raise
                line = stats.count + 1 + stats.header
                what = f"{type(exc).__name__}: {exc}"
                raise FileError(f"line {line}: not an aggTrade row ({what})") from None
        if not block:
            return


def _columns(
    rows: Iterator[list[str]], positions: tuple[int, int, int], period: Period, stats: Stats
) -> Columns:
    """One block's rows as columns, checked and counted into `stats`: the loop that runs
    once per trade, kept lean."""
    ia, ip, it = positions
    ids, times, prices = array("q"), array("q"), array("d")
    add_id, add_time, add_price = ids.append, times.append, prices.append
    rows = iter(rows)
    if stats.count == 0:
        row = next(rows, None)
        if row is None:
            return ids, times, prices
        a, t, p = int(row[ia]), int(row[it]), float(row[ip])
        # Spot's files moved to microseconds in 2025: a time in another unit (or another
        # day) would be stored as nonsense. Checked on the first row; the lowest and
        # highest ids' times are checked once stored.
        if not period.start_ms - DAY_MS <= t < period.end_ms + DAY_MS:
            line = 1 + stats.header
            raise FileError(f"line {line}: transact_time {t} is not a time in ms in {period.name}")
        if not (0.0 < p < INF and a > 0):
            raise ValueError(f"id {a} price {row[ip]!r}")
        add_id(a)
        add_time(t)
        add_price(p)
        stats.count, stats.low, stats.high, stats.last = 1, a, a, a
    count, low, high, disorder, previous = (
        stats.count,
        stats.low,
        stats.high,
        stats.disorder,
        stats.last,
    )
    inf = INF
    try:
        for row in rows:
            a, t, p = int(row[ia]), int(row[it]), float(row[ip])
            if a <= previous:  # out of order, or repeated
                disorder += 1
                low = min(low, a)
            elif a > high:
                high = a
            if not 0.0 < p < inf:
                raise ValueError(f"id {a} price {row[ip]!r}")
            add_id(a)
            add_time(t)
            add_price(p)
            previous = a
            count += 1
    finally:
        stats.count, stats.low, stats.high, stats.disorder, stats.last = (
            count,
            low,
            high,
            disorder,
            previous,
        )
    return ids, times, prices


# -- reading a file in a child process ------------------------------------------------------

# R: a count of rows, then their ids, times (int64) and prices (float64); E: the end, then
# the Stats; X: the file cannot be read, then why (UTF-8, its length).
RECORD = struct.Struct("<cI")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
PIPE_SIZE = 1 << 20  # bytes: /proc/sys/fs/pipe-max-size, the most an unprivileged process gets
END = struct.Struct("<qqqq?")  # Stats: count, low, high, disorder, header
UNREADABLE = (FileError, zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, OSError)


def csv_member(path: str, name: str) -> str:
    """The CSV inside the zip at `path`, whose name is `name` with .csv for .zip (or its
    only member); FileError if there is none."""
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
    member = name.removesuffix(".zip") + ".csv"
    if member in members:
        return member
    if len(members) != 1:
        raise FileError(f"no {member} among its {len(members)} members")
    return members[0]


def read_file(path: str, member: str, period: Period, stats: Stats) -> Iterator[Columns]:
    """read_columns of the zip's member, inflated as it is read."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as raw:
        yield from read_columns(io.TextIOWrapper(raw, encoding="utf-8", newline=""), period, stats)


class Reader:
    """One archive file read (unzipped, parsed, checked) in a child process forked for it,
    which hands the trades over a pipe as columns of machine numbers: reading takes about
    as long as SQLite takes to store, and the two then run side by side, on two cores.

    `ticks(stats)` yields them; `stats` is filled in at the end. FileError if the file
    cannot be read. `close()` ends the child (killed if it is still running)."""

    def __init__(self, path: str, member: str, period: Period):
        read, write = os.pipe()
        # Room for the child to read ahead while SQLite stores (64 KiB by default).
        with contextlib.suppress(OSError):
            fcntl.fcntl(write, F_SETPIPE_SZ, PIPE_SIZE)
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller
            status = 1
            try:
                os.close(read)
                status = _read_into(path, member, period, write)
            finally:
                os._exit(status)
        os.close(write)
        self._pipe = open(read, "rb", buffering=1 << 20)  # noqa: SIM115 (closed by close)

    def ticks(self, stats: Stats) -> Iterator[tuple[int, int, float]]:
        return itertools.chain.from_iterable(self._records(stats))

    def _records(self, stats: Stats) -> Iterator[Iterator[tuple[int, int, float]]]:
        pipe = self._pipe
        while True:
            head = pipe.read(RECORD.size)
            if len(head) < RECORD.size:
                raise FileError("its reader stopped before the end (killed?)")
            kind, size = RECORD.unpack(head)
            if kind == b"R":
                columns = [array("q"), array("q"), array("d")]
                for column in columns:
                    column.frombytes(pipe.read(8 * size))
                if len(columns[2]) != size:
                    raise FileError("its reader stopped before the end (killed?)")
                yield zip(*columns, strict=True)
            elif kind == b"E":
                stats.count, stats.low, stats.high, stats.disorder, stats.header = END.unpack(
                    pipe.read(END.size)
                )
                return
            else:
                raise FileError(pipe.read(size).decode("utf-8", "replace"))

    def close(self) -> None:
        self._pipe.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # done already, or given up on
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _read_into(path: str, member: str, period: Period, fd: int) -> int:
    """The child of Reader: the file's trades into the pipe `fd`, then E and the stats, or
    X and why the file cannot be read. Exit status 0 when all was said."""
    stats = Stats()
    with open(fd, "wb", buffering=1 << 20) as out:
        try:
            for columns in read_file(path, member, period, stats):
                out.write(RECORD.pack(b"R", len(columns[0])))
                for column in columns:
                    out.write(column)
            end = (stats.count, stats.low, stats.high, stats.disorder, stats.header)
            out.write(RECORD.pack(b"E", 0) + END.pack(*end))
        except UNREADABLE as exc:
            why = (str(exc) or type(exc).__name__).encode()[:4000]
            out.write(RECORD.pack(b"X", len(why)) + why)
    return 0


# -- downloads ---------------------------------------------------------------------------


class NotFound(Exception):
    """The archive answered 404: no such file (never published, or not yet)."""


class DownloadError(Exception):
    """A file that could not be downloaded (network, HTTP status other than 404)."""


_NETWORK = (OSError, http.client.HTTPException, ValueError)  # URLError and timeouts are OSErrors


def fetch(url: str, sink: io.RawIOBase | None, timeout: float = TIMEOUT) -> tuple[bytes, str]:
    """GET `url`: streamed into `sink` (a file) with (b"", sha256 hex) returned, or, without a
    sink, (the first CHECKSUM_LIMIT bytes, their sha256). Raises NotFound on 404, else the
    network's exception."""
    request = Request(url, headers={"User-Agent": "tickd"})  # noqa: S310 (config: http(s) only)
    try:
        with urlopen(request, timeout=timeout) as response:  # noqa: S310
            digest = hashlib.sha256()
            if sink is None:
                body = response.read(CHECKSUM_LIMIT)
                return body, hashlib.sha256(body).hexdigest()
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                sink.write(chunk)
            return b"", digest.hexdigest()
    except HTTPError as error:
        with error:
            if error.code == 404:
                raise NotFound(url) from None
            raise DownloadError(f"HTTP {error.code}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else Exception(exc.reason)
    return str(exc) or type(exc).__name__


# -- what the user sees ------------------------------------------------------------------


class Progress:
    """The import's progress on `stream` (stderr): on a terminal one line rewritten in place
    (days done, rows, rows/s, ETA), with what goes wrong printed above it; else one plain
    log line per file or period, and one per thing that goes wrong."""

    def __init__(
        self,
        stream: TextIO,
        symbol: str,
        days: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.stream, self.symbol, self.total = stream, symbol, days
        self.tty = stream.isatty()
        self.clock, self.wall = clock, wall
        self.start = clock()
        self.days = 0.0  # done, from the plan
        self.rows = 0  # written by this run
        self._busy: Period | None = None  # the period being written
        self._base = 0  # rows before the current write
        self._drawn = 0.0

    def line(self, period: Period | None, what: str, **context: object) -> None:
        """One event, e.g. a file stored: a log line, or above the progress line."""
        name = f" {period.name}" if period else ""
        text = f"{iso_time(int(self.wall() * 1000))} {self.symbol}{name} {what} {kv(**context)}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text.rstrip() + "\n")
            self._draw()
        else:
            self.stream.write(text.rstrip() + "\n")
        self.stream.flush()

    def done(self, period: Period, what: str, say: bool = False, **context: object) -> None:
        """`period` is finished (stored, skipped or failed): counted, and said in a line
        of its own; on a terminal only if `say`, else the progress line moves on."""
        self.days += period.days
        self._busy = None
        if self.tty and not say:
            self._draw()
        else:
            self.line(period, what, **context)

    def writing(self, period: Period) -> None:
        """Rows of `period` are about to be written (one file, or one REST page)."""
        self._busy, self._base = period, self.rows

    def wrote(self, given: int, last: tuple | None) -> None:
        """After a commit: `given` rows written since `writing`, the last one `last`."""
        self.rows = self._base + given
        if not self.tty or self.clock() - self._drawn < 0.2:
            return
        fraction, period = 0.0, self._busy
        if period is not None and last is not None:
            fraction = (last[1] - period.start_ms) / (period.end_ms - period.start_ms)
            fraction = min(max(fraction, 0.0), 1.0) * period.days
        self._draw(self.days + fraction)

    def _draw(self, days: float | None = None) -> None:
        if not self.tty:
            return
        days = self.days if days is None else days
        seconds = max(self.clock() - self.start, 1e-9)
        rate = self.rows / seconds
        eta = "--"
        if 0 < days < self.total:
            eta = duration(seconds * (self.total - days) / days)
        text = (
            f"{self.symbol} {days:.1f}/{self.total} days  {self.rows:,} rows  "
            f"{rate:,.0f} rows/s  ETA {eta}"
        )
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = self.clock()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def duration(seconds: float) -> str:
    """`45s`, `12m 5s`, `3h 20m`: a duration for people."""
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


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
            f"({self.downloaded_bytes / 1e6:,.1f} MB), {self.skipped} periods already stored, "
            f"{self.rest_rows:,} trades from REST; {duration(self.seconds)}"
        )

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


class RestGone(Exception):
    """REST cannot serve this symbol at all (-1121, or errors that outlasted the retries)."""


class Importer:
    """One import of `symbol` from day `first` to day `last` (None: up to the live edge)
    into the database of `conn` (busy timeout about 5 s), whose file is at `db_path`."""

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
    ):
        self.conn, self.symbol, self.first, self.last = conn, symbol, first, last
        self.archive_url, self.rest, self.timeout = archive_url, rest, timeout
        self.wall, self.sleep = wall, sleep
        self.now_ms = int(wall() * 1000)
        self.today = utc_day(self.now_ms)
        self.periods = plan(first, last or self.today, self.today)
        total = sum(period.days for period in self.periods)
        self.progress = progress or Progress(io.StringIO(), symbol, total)
        self.progress.total = total
        self.pacer = pacer or database.Pacer(conn, symbol, sleep=sleep)
        self.report = Report(symbol, first, last)
        self.absent: list[tuple[int, int]] = []  # ids Binance says never existed (REST)
        self.scratch = os.path.abspath(db_path) + f".import-{os.getpid()}.zip"
        self._target: int | None = None  # REST's latest id, once asked
        self._rest_gone: str | None = None
        self._failed: set[Period] = set()  # periods with a problem: never recorded as stored

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
                    self.report.skipped += 1
                    self.progress.done(period, "already stored")
                    continue
                if period.last >= self.today:  # never in the archive yet: REST
                    self._from_rest(period)
                    continue
                found = self._from_archive(period)
                if found is not None:
                    continue
                if period.monthly:  # no monthly file (yet): its days, one file each
                    self.progress.line(period, "no monthly file, taking its days")
                    queue.extendleft(reversed(period.daily()))
                elif period.end_ms > self.now_ms - REST_WINDOW_MS:
                    self.progress.line(period, "not in the archive (yet), taking it from REST")
                    self._from_rest(period)
                else:
                    self._fail(
                        period, "not in the archive (404), and older than REST's 2-day window"
                    )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.scratch)
        self._audit()
        self.report.rows = self.progress.rows
        self.report.seconds = time.monotonic() - started
        self.progress.close()
        return self.report

    def _problem(self, period: Period, reason: str) -> None:
        """Note what could not be had in `period`; it is reported at the end."""
        self.report.problems.append(Problem(period, reason))
        self._failed.add(period)
        self.progress.line(period, "problem:", reason=reason)

    def _fail(self, period: Period, reason: str) -> None:
        """`period` is finished, and could not be had."""
        self.report.problems.append(Problem(period, reason))
        self._failed.add(period)
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

    # -- the archive -----------------------------------------------------------------------

    def _from_archive(self, period: Period) -> bool | None:
        """Download, check and store the period's file. None if the archive has no such
        file (404); False if it failed (reported); True if stored."""
        name = period.file(self.symbol)
        url = self.archive_url + period.path(self.symbol)
        for attempt in (1, 2):
            try:
                expected = parse_checksum(self._download(url + ".CHECKSUM", None)[0])
                with open(self.scratch, "wb") as sink:
                    _, sha256 = self._download(url, sink)
            except NotFound:
                return None
            except (DownloadError, FileError) as exc:
                self._fail(period, f"{name}: download failed: {exc}")
                return False
            self.report.downloaded += 1
            self.report.downloaded_bytes += os.path.getsize(self.scratch)
            if sha256 == expected:
                break
            if attempt == 2:
                self._fail(
                    period,
                    f"{name}: checksum mismatch twice (sha256 {sha256[:16]}..., "
                    f"its CHECKSUM says {expected[:16]}...)",
                )
                return False
            self.progress.line(period, "checksum mismatch, downloading again", file=name)
        return self._store_file(period, name, sha256)

    def _download(self, url: str, sink) -> tuple[bytes, str]:
        """fetch() with retries for network errors and server errors; never holds a
        transaction (none is open here)."""
        delay = 1.0
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                if sink is not None:
                    sink.seek(0)
                    sink.truncate()
                return fetch(url, sink, self.timeout)
            except NotFound:
                raise
            except (DownloadError, *_NETWORK) as exc:
                if attempt == DOWNLOAD_TRIES:
                    raise DownloadError(_reason(exc)) from None
            self.sleep(delay)
            delay *= 4
        raise AssertionError("unreachable")

    def _store_file(self, period: Period, name: str, sha256: str) -> bool:
        stats = Stats()
        self.progress.writing(period)
        started = time.monotonic()
        try:
            reader = Reader(self.scratch, csv_member(self.scratch, name), period)
            try:
                self.pacer.write(reader.ticks(stats), self.progress.wrote)
            finally:
                reader.close()
        except UNREADABLE as exc:
            self._fail(period, f"{name}: unreadable: {exc}")
            return False
        if stats.count == 0:
            self.progress.done(period, "stored, no trades in the file", file=name)
            return True
        low, high = stats.low, stats.high
        missing = high - low + 1 - database.count_ids(self.conn, self.symbol, low, high)
        if missing:
            self._fail(
                period,
                f"{name} has a hole: {missing:,} of the ids {low}..{high} are in neither "
                f"the file ({stats.count:,} rows) nor the table",
            )
            return False
        first_time = database.tick_at(self.conn, self.symbol, low)[1]
        last_time = database.tick_at(self.conn, self.symbol, high)[1]
        if first_time < period.start_ms or last_time >= period.end_ms:
            self._fail(
                period,
                f"{name}: trades from {iso_time(first_time)} to {iso_time(last_time)}, "
                f"outside {period.name}",
            )
            return False
        database.record_import(
            self.conn, self.symbol, period.name, (low, high), source=name, sha256=sha256
        )
        self.progress.done(
            period,
            "stored",
            file=name,
            rows=stats.count,
            ids=f"{low}-{high}",
            header="yes" if stats.header else "no",
            ordered="yes" if not stats.disorder else f"no({stats.disorder})",
            seconds=f"{time.monotonic() - started:.2f}",
        )
        return True

    # -- REST --------------------------------------------------------------------------------

    def _from_rest(self, period: Period) -> None:
        """Fill `period` (a day) from REST: the ids missing from the tick before it (or the
        day's first trade) on, until a trade of the next day, REST's latest trade when the
        day is in progress, or TO."""
        if self._rest_gone:
            self._fail(period, self._rest_gone)
            return
        written = self.report.rest_rows
        try:
            self._rest_day(period)
        except RestGone as exc:
            self._rest_gone = str(exc)
            self._fail(period, self._rest_gone)
            return
        self.progress.done(period, "from REST", rows=self.report.rest_rows - written)

    def _rest_day(self, period: Period) -> None:
        before = database.tick_before(self.conn, self.symbol, period.start_ms)
        if before is not None:
            start = before[0] + 1
        else:
            start = self._first_since(period)
            if start is None:
                return
        end_ms = period.end_ms
        if self.last is None and end_ms > self.now_ms:
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

    def _latest(self) -> int | None:
        if self._target is None:
            page = self._call(None, 1)
            self._target = page[-1].id if page else 0
        return self._target

    def _pages(self, period: Period, first: int, last: int | None) -> bool:
        """Fetch ids `first`..`last` (None: on until the period's end, REST's latest, or
        the live edge) and store them, a page of 1000 at a time; True if a trade after the
        period was seen (the period is over)."""
        cursor = first
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
            rows, over = self._take(page, cursor, period, last)
            if rows:
                self.progress.writing(period)
                self.report.rest_rows += self.pacer.write(rows, self.progress.wrote)
            if over or len(rows) < len(page):
                return over
            if len(page) < PAGE:  # REST's latest trade
                return self._over(period)
            cursor = page[-1].id + 1
        return False

    def _take(
        self, page: list[Tick], cursor: int, period: Period, last: int | None
    ) -> tuple[list[Tick], bool]:
        """The trades of a page asked from `cursor` that belong to `period`, up to id `last`
        and the live edge; and True if one of the next period was met. An id REST skips
        never existed (a hole in Binance's own history): noted, never reported missing."""
        rows, previous = [], cursor - 1
        for tick in page:
            if tick.timestamp >= period.end_ms:
                return rows, True
            if (last is not None and tick.id > last) or (
                self._target is not None and tick.id > self._target
            ):
                break
            if tick.id > previous + 1:
                self.absent.append((previous + 1, tick.id - 1))
            rows.append(tick)
            previous = tick.id
        return rows, False

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
            for piece in subtract((low, high), self.absent):
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
