"""The history import's archive files: each downloaded beside the database, its sha256
checked against its CHECKSUM, read in a child process and stored by the paced writer; and,
with --recheck, a file stored earlier checked against the archive's CHECKSUM again and
stored over its rows if Binance has replaced it."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from . import database
from .archive import (
    TIMEOUT,
    UNREADABLE,
    DownloadError,
    FileError,
    NotFound,
    Period,
    Reader,
    Stats,
    csv_member,
    download,
    parse_checksum,
)
from .progress import Progress
from .text import iso_time


class Unusable(Exception):
    """An archive file that could not be had or stored; the message names it and says why."""


class Downloads:
    """The archive files of `symbol` at `archive_url`, downloaded one at a time to `scratch`
    and stored in `prices_<symbol>` through `pacer`. A file that cannot be had is told
    through `fail(period, reason)` (the period is over) or, when re-checking a stored one,
    `problem(period, reason)`.

    Counts: `files` and `bytes` downloaded; `rechecked` files whose CHECKSUM was compared
    again, `replaced` files Binance had replaced and that were stored again, `changed` rows
    those added or corrected."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        symbol: str,
        archive_url: str,
        *,
        scratch: str,
        pacer: database.Pacer,
        progress: Progress,
        fail: Callable[[Period, str], None],
        problem: Callable[[Period, str], None],
        sleep: Callable[[float], object] = time.sleep,
        timeout: float = TIMEOUT,
    ):
        self.conn, self.symbol, self.archive_url = conn, symbol, archive_url
        self.scratch, self.pacer, self.progress = scratch, pacer, progress
        self.fail, self.problem = fail, problem
        self.sleep, self.timeout = sleep, timeout
        self.files = self.bytes = 0
        self.rechecked = self.replaced = self.changed = 0
        self._checked: dict[str, bool] = {}  # file name -> its CHECKSUM was compared

    def store(self, period: Period) -> bool | None:
        """Download, check and store the period's file. None if the archive has no such
        file (404); False if it failed (told); True if stored."""
        name = period.file(self.symbol)
        try:
            sha256 = self._download(period, name)
            started = time.monotonic()
            stats, _ = self._store(period, name, sha256, self.pacer)
        except NotFound:
            return None
        except Unusable as exc:
            self.fail(period, str(exc))
            return False
        if stats.count == 0:
            self.progress.done(period, "stored, no trades in the file", file=name)
            return True
        self.progress.done(
            period,
            "stored",
            file=name,
            rows=stats.count,
            ids=f"{stats.low}-{stats.high}",
            header="yes" if stats.header else "no",
            ordered="yes" if not stats.disorder else f"no({stats.disorder})",
            seconds=f"{time.monotonic() - started:.2f}",
        )
        return True

    def recheck(self, period: Period, file: Period, recorded: str) -> bool:
        """Fetch the CHECKSUM of `file` again: an archive file stored for `period` (itself,
        its month or one of its days) with the sha256 `recorded`. If it differs, Binance
        has replaced the file: the new one is downloaded, checked, and its rows written over
        the stored rows of their ids (a corrected time or price wins; nothing is deleted).
        False if the CHECKSUM could not be fetched: a warning, the stored rows stay as they
        are. Each file is re-checked once a run."""
        name = file.file(self.symbol)
        if name in self._checked:
            return self._checked[name]
        url = self.archive_url + file.path(self.symbol)
        try:
            current = self._checksum(url)
        except (NotFound, DownloadError, FileError) as exc:
            why = "not in the archive (404)" if isinstance(exc, NotFound) else str(exc)
            self.progress.line(
                period, "warning: CHECKSUM not fetched, stored trades kept", file=name, reason=why
            )
            self._checked[name] = False
            return False
        self._checked[name] = True
        self.rechecked += 1
        if current == recorded:
            return True
        self.progress.line(
            period,
            "replaced in the archive, storing it again:",
            file=name,
            old=recorded[:16],
            new=current[:16],
        )
        try:
            sha256 = self._download(file, name)
            pacer = database.Pacer(self.conn, self.symbol, sleep=self.sleep, correct=True)
            stats, changed = self._store(file, name, sha256, pacer)
        except NotFound:
            self.problem(period, f"{name}: replaced, then gone from the archive (404)")
            return True
        except Unusable as exc:
            self.problem(period, str(exc))
            return True
        self.replaced += 1
        self.changed += changed
        self.progress.line(period, "stored again", file=name, rows=stats.count, changed=changed)
        return True

    def _checksum(self, url: str) -> str:
        """The sha256 the archive's CHECKSUM file gives for the file at `url`."""
        body, _ = download(url + ".CHECKSUM", None, sleep=self.sleep, timeout=self.timeout)
        return parse_checksum(body)

    def _download(self, file: Period, name: str) -> str:
        """Download `file` (its name `name`) to the scratch file, and its CHECKSUM; both
        again once if they differ. Returns the sha256; NotFound if the archive has either
        not, Unusable if they cannot be had or still differ. Holds no transaction."""
        url = self.archive_url + file.path(self.symbol)
        for attempt in (1, 2):
            try:
                expected = self._checksum(url)
                with open(self.scratch, "wb") as sink:
                    _, sha256 = download(url, sink, sleep=self.sleep, timeout=self.timeout)
            except (DownloadError, FileError) as exc:
                raise Unusable(f"{name}: download failed: {exc}") from None
            self.files += 1
            self.bytes += os.path.getsize(self.scratch)
            if sha256 == expected:
                return sha256
            if attempt == 2:
                raise Unusable(
                    f"{name}: checksum mismatch twice (sha256 {sha256[:16]}..., "
                    f"its CHECKSUM says {expected[:16]}...)"
                )
            self.progress.line(file, "checksum mismatch, downloading again", file=name)
        raise AssertionError("unreachable")

    def _store(
        self, file: Period, name: str, sha256: str, pacer: database.Pacer
    ) -> tuple[Stats, int]:
        """Store the scratch file's trades through `pacer`, check that the ids from its
        lowest to its highest are all stored and that those trades are in `file`'s days,
        then record it in `history_import`. Returns the file's stats and the rows written
        (added, or changed by a correcting pacer); Unusable if the file cannot be read or
        fails a check (nothing is recorded then)."""
        stats = Stats()
        self.progress.writing(file)
        changes = self.conn.total_changes
        try:
            reader = Reader(self.scratch, csv_member(self.scratch, name), file)
            try:
                pacer.write(reader.ticks(stats), self.progress.wrote)
            finally:
                reader.close()
        except UNREADABLE as exc:
            raise Unusable(f"{name}: unreadable: {exc}") from None
        changed = self.conn.total_changes - changes
        if stats.count == 0:
            return stats, changed
        low, high = stats.low, stats.high
        missing = high - low + 1 - database.count_ids(self.conn, self.symbol, low, high)
        if missing:
            raise Unusable(
                f"{name} has a hole: {missing:,} of the ids {low}..{high} are in neither "
                f"the file ({stats.count:,} rows) nor the table"
            )
        first_time = database.tick_at(self.conn, self.symbol, low)[1]
        last_time = database.tick_at(self.conn, self.symbol, high)[1]
        if first_time < file.start_ms or last_time >= file.end_ms:
            raise Unusable(
                f"{name}: trades from {iso_time(first_time)} to {iso_time(last_time)}, "
                f"outside {file.name}"
            )
        database.record_import(
            self.conn, self.symbol, file.name, (low, high), source=name, sha256=sha256
        )
        return stats, changed
