"""Plain-text logging to stdout, and a throttle for lines that could repeat per frame."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TextIO

from .text import iso_time


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's own second and millisecond of the record, as one time in ms.
        return iso_time(int(record.created) * 1000 + int(record.msecs))


def setup(level: int, stream: TextIO) -> logging.Handler:
    """Send the `tickd` loggers' records to `stream`, one line each; returns the handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("tickd")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler


def kv(**context: object) -> str:
    """`key=value` pairs for the end of a log line; values with spaces or quotes are repr'd,
    None values are left out."""
    parts = []
    for key, value in context.items():
        if value is None:
            continue
        text = str(value)
        if not text or not text.isprintable() or any(c in text for c in ' "='):
            text = ascii(text) if not text.isprintable() else repr(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def failure(exc: BaseException) -> str:
    """An unexpected exception on one line: its type, message and where it was raised."""
    where = ""
    tb = exc.__traceback__
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
    return f"{type(exc).__name__}: {exc}{where}"


class Throttle:
    """Lets one line per key through per `interval`; counts what it held back.

    `allow(key)` returns None to hold a line back, or the number of lines held back since
    the last one let through (to report as `suppressed=N`).
    """

    __slots__ = ("_clock", "_interval", "_state")

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._state: dict[object, tuple[float, int]] = {}

    def allow(self, key: object) -> int | None:
        now = self._clock()
        last, held = self._state.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._state[key] = (last, held + 1)
            return None
        self._state[key] = (now, 0)
        return held
