"""The settings watcher: symbol_settings, read every poll, decides which streams run."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import gevent
from gevent.pool import Pool

from . import symbols
from .database import Database
from .logs import failure, kv
from .stream import Stream

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0  # seconds a stopped stream gets to finish its close handshake
# Descriptors per stream (two sockets during a rotation), and those the rest of the process
# needs (database files, HTTP clients, REST calls, the event loop).
DESCRIPTORS_PER_STREAM = 2
DESCRIPTORS_RESERVED = 64


@dataclass(frozen=True, slots=True)
class Wanted:
    """What symbol_settings asks for: symbols in row order, and the names refused."""

    symbols: dict[str, bool]  # normalised symbol -> enabled, in insertion order
    invalid: tuple[str, ...]  # raw names that cannot be Binance symbols


def read_rows(rows: Iterable[tuple[object, object]]) -> Wanted:
    """Interpret symbol_settings rows. A symbol listed twice (`btcusdt`, `BTCUSDT `) is
    enabled if any of its rows enables it; `enabled` counts as on when it is a non-zero
    number, as the column's DEFAULT 1 intends."""
    wanted: dict[str, bool] = {}
    invalid: list[str] = []
    for raw, enabled in rows:
        try:
            symbol = symbols.normalise(raw)
        except symbols.InvalidSymbol:
            invalid.append(raw if isinstance(raw, str) else repr(raw))
            continue
        on = type(enabled) in (int, float) and enabled != 0
        wanted[symbol] = wanted.get(symbol, False) or on
    return Wanted(wanted, tuple(invalid))


def diff(running: Iterable[str], enabled: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to start, to stop): the enabled symbols not running, the running ones not enabled."""
    running, enabled = list(running), list(enabled)
    return [s for s in enabled if s not in running], [s for s in running if s not in enabled]


class Watcher:
    """Owns the streams: one greenlet per enabled symbol in a Pool, started and stopped so
    that the running set follows symbol_settings. Never two streams on one symbol."""

    def __init__(
        self,
        db: Database,
        make_stream: Callable[..., Stream],
        poll_interval: float,
        descriptor_limit: int | None = None,
    ):
        self.db = db
        self.wanted = Wanted({}, ())
        self._make_stream = make_stream
        self._poll_interval = poll_interval
        self._pool = Pool()
        self._streams: dict[str, tuple[Stream, gevent.Greenlet]] = {}
        self._reported_invalid: set[str] = set()
        self._descriptor_limit = descriptor_limit
        self._warned_descriptors = False

    def run(self) -> None:
        """Poll forever (the body of the watcher's greenlet)."""
        while True:
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 (a bug: logged, and the next poll runs)
                log.error("settings poll failed %s", kv(error=failure(exc)))
            gevent.sleep(self._poll_interval)

    def connected(self, symbol: str) -> bool:
        entry = self._streams.get(symbol)
        return entry is not None and entry[0].connected

    def streams(self) -> dict[str, Stream]:
        return {symbol: stream for symbol, (stream, _) in self._streams.items()}

    def sync(self) -> None:
        """Read symbol_settings once and start or stop streams to match."""
        try:
            wanted = read_rows(self.db.settings())
        except sqlite3.Error as exc:
            log.error("settings unreadable, streams unchanged %s", kv(error=exc))
            return
        self._report_invalid(wanted.invalid)
        previous, self.wanted = self.wanted, wanted
        enabled = [s for s, on in wanted.symbols.items() if on]
        # A greenlet that died of a bug is restarted like a newly enabled symbol.
        for symbol, (_, greenlet) in list(self._streams.items()):
            if greenlet.dead:
                log.error("stream ended unexpectedly, restarting %s", kv(symbol=symbol))
                del self._streams[symbol]
        self._check_descriptors(len(enabled))
        to_start, to_stop = diff(self._streams, enabled)
        for symbol in to_stop:
            log.info(
                "symbol %s %s",
                "disabled" if symbol in wanted.symbols else "removed",
                kv(symbol=symbol),
            )
        self.stop(to_stop)
        for symbol in to_start:
            # Disabled at the last poll and enabled now: a pause has ended (not a restart).
            paused = previous.symbols.get(symbol) is False
            self._start(symbol, new=not previous.symbols.get(symbol, False), after_pause=paused)

    def _check_descriptors(self, streams: int) -> None:
        limit = self._descriptor_limit
        if limit is None:
            return
        needed = streams * DESCRIPTORS_PER_STREAM + DESCRIPTORS_RESERVED
        if needed > limit and not self._warned_descriptors:
            log.warning(
                "descriptor limit close for the enabled symbols, raise nofile %s",
                kv(symbols=streams, needed=needed, limit=limit),
            )
        self._warned_descriptors = needed > limit

    def _start(self, symbol: str, new: bool, after_pause: bool = False) -> None:
        try:
            self.db.ensure_table(symbol)
        except sqlite3.Error as exc:
            log.error("cannot create table, retrying next poll %s", kv(symbol=symbol, error=exc))
            return
        if after_pause:
            log.info("symbol resumed, the paused period is not fetched %s", kv(symbol=symbol))
        elif new:
            log.info("symbol enabled %s", kv(symbol=symbol))
        stream = self._make_stream(symbol, after_pause=after_pause)
        self._streams[symbol] = (stream, self._pool.spawn(stream.run))

    def stop(self, to_stop: Iterable[str] | None = None) -> None:
        """Stop the given streams (all if None): close frames first, then wait, then kill.

        Returns once their greenlets are gone, so a symbol never has two streams."""
        names = list(self._streams if to_stop is None else to_stop)
        entries = [self._streams.pop(name) for name in names]
        for stream, _ in entries:
            stream.stop()
        greenlets = [greenlet for _, greenlet in entries]
        gevent.joinall(greenlets, timeout=STOP_TIMEOUT)
        gevent.killall([g for g in greenlets if not g.dead], timeout=STOP_TIMEOUT)

    def _report_invalid(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in self._reported_invalid:
                log.error("invalid symbol ignored %s", kv(symbol=symbols.display(name)))
        self._reported_invalid = set(names)
