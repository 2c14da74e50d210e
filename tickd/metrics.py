"""The /metrics exposition: Prometheus families read from the live store when scraped, and
the write-duration histogram the database records into.

It imports nothing of the store at run time (only for type checking): `database` imports
it, for `Latency`, `WRITE_BUCKETS` and `file_size`.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .coverage import Run
    from .database import Database
    from .limits import AttemptLimiter, WeightLimiter
    from .stream import Stream

WRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1, 5)


class Latency:
    """Counts of durations per bucket (seconds, upper bounds), for a Prometheus histogram.
    Observing is a bisection and two additions: cheap enough for every write."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1


def file_size(path: str) -> int:
    """Bytes in the file at `path`; 0 if it is missing (no WAL after a clean stop)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# Per-symbol series: (family, name, help, value of a Stream; None leaves the sample out).
PER_SYMBOL: tuple[tuple[type, str, str, Callable[[Stream], float | None]], ...] = (
    (
        CounterMetricFamily,
        "tickstore_ticks_received_total",
        "Trades received from the stream since the stream started.",
        lambda s: s.intake.trades,
    ),
    (
        GaugeMetricFamily,
        "tickstore_last_tick_timestamp_seconds",
        "Trade time of the newest trade received, seconds since the epoch.",
        lambda s: None if s.intake.last_timestamp is None else s.intake.last_timestamp / 1000,
    ),
    (
        GaugeMetricFamily,
        "tickstore_stream_connected",
        "1 while the symbol has an open stream connection, else 0.",
        lambda s: 1 if s.connected else 0,
    ),
    (
        CounterMetricFamily,
        "tickstore_reconnects_total",
        "Connections lost and redialled.",
        lambda s: s.reconnects,
    ),
    (
        CounterMetricFamily,
        "tickstore_gaps_found_total",
        "Ranges of missing ids found (stream jumps, audits, silence checks).",
        lambda s: s.stats.gaps_found,
    ),
    (
        CounterMetricFamily,
        "tickstore_gaps_filled_total",
        "Times the repair queue became empty again.",
        lambda s: s.stats.gaps_filled,
    ),
    (
        CounterMetricFamily,
        "tickstore_ids_repaired_total",
        "Queued ids stored or found absent from Binance's history by repair.",
        lambda s: s.stats.ids_repaired,
    ),
    (
        CounterMetricFamily,
        "tickstore_ids_unfillable_total",
        "Queued ids given up: older than Binance's REST window, or never served.",
        lambda s: s.stats.ids_unfillable,
    ),
    (
        GaugeMetricFamily,
        "tickstore_ids_queued",
        "Ids waiting for repair.",
        lambda s: s.repair.gaps.count(),
    ),
    (
        CounterMetricFamily,
        "tickstore_frames_unconfirmed_total",
        "Trades whose id jumped implausibly far, held back until REST confirmed it.",
        lambda s: s.checks.unconfirmed,
    ),
    (
        CounterMetricFamily,
        "tickstore_write_errors_total",
        "Writes that failed (their ids are queued for repair).",
        lambda s: s.stats.write_errors,
    ),
)


class StoreCollector:
    """Builds every tickstore_ family from the live objects when scraped; keeps no state."""

    def __init__(
        self,
        *,
        streams: Callable[[], Mapping[str, Stream]],
        weight: WeightLimiter,
        attempts: AttemptLimiter,
        db: Database,
        uptime: Callable[[], float],
        runs: Callable[[], Mapping[str, Run]] = dict,
        deferred: Callable[[], int] = lambda: 0,
    ):
        self._streams = streams
        self._deferred = deferred
        self._runs = runs
        self._weight = weight
        self._attempts = attempts
        self._db = db
        self._uptime = uptime

    def collect(self) -> Iterator[Metric]:
        streams = sorted(self._streams().items())
        for family, name, documentation, value in PER_SYMBOL:
            metric = family(name, documentation, labels=["symbol"])
            for symbol, stream in streams:
                number = value(stream)
                if number is not None:
                    metric.add_metric([symbol], number)
            yield metric
        yield from self._history()
        yield from self._process_wide()

    def _history(self) -> Iterator[Metric]:
        runs = sorted(self._runs().items())
        first = GaugeMetricFamily(
            "tickstore_complete_since_id",
            "First id of the continuous run of stored ids that reaches the newest tick: "
            "every id from it on is stored (looked up every minute).",
            labels=["symbol"],
        )
        since = GaugeMetricFamily(
            "tickstore_complete_since_timestamp_seconds",
            "Trade time of tickstore_complete_since_id, seconds since the epoch.",
            labels=["symbol"],
        )
        for symbol, run in runs:
            first.add_metric([symbol], run.first_id)
            since.add_metric([symbol], run.first_time / 1000)
        yield first
        yield since

    def _process_wide(self) -> Iterator[Metric]:
        weight = self._weight
        yield CounterMetricFamily(
            "tickstore_rest_weight_used_total", "REST weight spent since start.", weight.total
        )
        yield GaugeMetricFamily(
            "tickstore_rest_weight_minute",
            "REST weight counted in this UTC minute (Binance's count when it is higher).",
            weight.used_now(),
        )
        yield GaugeMetricFamily(
            "tickstore_rest_weight_budget",
            "REST weight this process may use per minute (REST_WEIGHT_PER_MINUTE).",
            weight.per_minute,
        )
        yield CounterMetricFamily(
            "tickstore_connection_attempts_total",
            "Stream connection attempts since start.",
            self._attempts.total,
        )
        yield CounterMetricFamily(
            "tickstore_reader_deferrals_total",
            "Frames a stream reader left for a later turn of the event loop, because the "
            "readers had used the turn's share: the store had more to do than one core.",
            self._deferred(),
        )
        yield histogram(
            "tickstore_write_duration_seconds",
            "Time of each write (one tick, or one repair page), lock waits included.",
            self._db.write_latency,
        )
        yield GaugeMetricFamily(
            "tickstore_db_bytes", "Size of the database file.", file_size(self._db.path)
        )
        yield GaugeMetricFamily(
            "tickstore_wal_bytes", "Size of the -wal file.", file_size(self._db.path + "-wal")
        )
        yield InfoMetricFamily(
            "tickstore_sqlite", "The SQLite library in use.", {"version": sqlite3.sqlite_version}
        )
        yield GaugeMetricFamily(
            "tickstore_uptime_seconds", "Seconds since the store started.", self._uptime()
        )


def histogram(name: str, documentation: str, latency: Latency) -> HistogramMetricFamily:
    """`latency`'s per-bucket counts as a histogram family, with cumulative buckets."""
    counts, total = list(latency.counts), latency.sum  # one consistent reading
    buckets, running = [], 0
    for bound, count in zip([*latency.bounds, float("inf")], counts, strict=True):
        running += count
        buckets.append((floatToGoString(bound), running))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def registry(collector: StoreCollector) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding `collector` and
    prometheus-client's process and platform collectors."""
    own = CollectorRegistry()
    own.register(collector)
    ProcessCollector(registry=own)
    PlatformCollector(registry=own)
    return own
