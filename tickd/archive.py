"""Binance's public archive of USD-M aggTrades (data.binance.vision, DESIGN 8): its periods
and file names, the plan of files for a span of days, and the files themselves: fetched with
their CHECKSUM, and read (unzipped, parsed, checked) as a stream in a child process.

Nothing here touches the database: the history import (tickd.history) stores what it reads.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import datetime
import fcntl
import hashlib
import http.client
import io
import itertools
import math
import operator
import os
import re
import signal
import struct
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO
from urllib.error import HTTPError, URLError
from urllib.parse import quote as url_quote
from urllib.request import Request, urlopen

DAY_MS = 86_400_000
COLUMNS = ("agg_trade_id", "price", "transact_time")
HEADERLESS = (0, 1, 5)  # where COLUMNS are in a file without a header row (before 2022-08-11)
TIMEOUT = 30.0  # seconds per socket operation of a download
CHUNK = 1 << 20  # bytes read and hashed at a time
CHECKSUM_LIMIT = 4096  # bytes of a CHECKSUM file worth reading
DOWNLOAD_TRIES = 4  # per file, for network errors and 5xx (a 404 is an answer)
INF = math.inf
BLOCK = 1 << 18  # characters of CSV split into lines at a time
_SPLIT = operator.methodcaller("split", ",")
Columns = tuple[array, array, array]  # ids, times (int64), prices (float64) of a block of rows
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
SORT_ROWS = 1 << 17  # rows of a file out of order sorted together (3 MiB of columns)
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


def in_order(blocks: Iterable[Columns], stats: Stats, rows: int = SORT_ROWS) -> Iterator[Columns]:
    """`blocks` as they come while the file is in id order; once a row out of order is seen,
    gathered `rows` at a time and sorted by id. A file in random order then costs SQLite a
    few neighbouring pages per transaction instead of a page per row: 1,000,000 shuffled rows
    went from 31,700 to 138,000 a second (tests/bench/importer.py --shuffled)."""
    held: Columns = (array("q"), array("q"), array("d"))
    for block in blocks:
        if not stats.disorder and not held[0]:
            yield block
            continue
        for column, more in zip(held, block, strict=True):
            column.extend(more)
        if len(held[0]) >= rows:
            yield _sorted(held)
            held = (array("q"), array("q"), array("d"))
    if held[0]:
        yield _sorted(held)


def _sorted(columns: Columns) -> Columns:
    ids = columns[0]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return tuple(array(column.typecode, map(column.__getitem__, order)) for column in columns)


def _read_into(path: str, member: str, period: Period, fd: int) -> int:
    """The child of Reader: the file's trades into the pipe `fd`, then E and the stats, or
    X and why the file cannot be read. Exit status 0 when all was said."""
    stats = Stats()
    with open(fd, "wb", buffering=1 << 20) as out:
        try:
            for columns in in_order(read_file(path, member, period, stats), stats):
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


def download(
    url: str,
    sink: io.RawIOBase | None,
    *,
    sleep: Callable[[float], object],
    timeout: float = TIMEOUT,
) -> tuple[bytes, str]:
    """fetch(), tried again after 1, 4 and 16 s (`sleep`) for network errors and server
    errors, `sink` emptied before each try. Raises NotFound at once, DownloadError with the
    last reason once the tries are spent."""
    delay = 1.0
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            return fetch(url, sink, timeout)
        except NotFound:
            raise
        except (DownloadError, *_NETWORK) as exc:
            if attempt == DOWNLOAD_TRIES:
                raise DownloadError(_reason(exc)) from None
        sleep(delay)
        delay *= 4
    raise AssertionError("unreachable")
