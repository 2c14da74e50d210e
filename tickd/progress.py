"""What a person sees of the history import while it runs: its progress on stderr, as one
line rewritten in place on a terminal, else as plain log lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from .archive import Period
from .logs import kv
from .text import iso_time


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
