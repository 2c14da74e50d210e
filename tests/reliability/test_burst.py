"""Burst: more trades than the store can write one commit at a time, and Binance's slow-consumer
rule. 30,000 trades/s over 5 symbols for 30 s (short: 5 s); the exchange closes a connection with
1008 once its unsent backlog passes a bound, and drops that backlog. The store reconnects and
repairs over REST: every id ends up stored, and /status answers throughout.

What bounds the catch-up is Binance's REST weight: a repair page of 1000 ids costs 20, so the
store's 2400 a minute (REST_WEIGHT_PER_MINUTE, all of Binance's per-IP budget) repair at most
120,000 ids a minute.
"""

import re
import sqlite3
import statistics
import time

import gevent
import pytest

from helpers import FULL, complete, enable, rows, wait_connected, wait_for
from tickd.fakebinance import FakeBinance

pytestmark = pytest.mark.slow

SYMBOLS = [f"U{i}USDT" for i in range(5)]
RATE = 30_000  # trades per second, in all
SECONDS = 30 if FULL else 5
MAX_BACKLOG = 2_000  # frames a connection may have unsent before the exchange closes it
SEND_BUFFER = 64 * 1024  # the exchange's socket send buffer: Binance's are not unbounded either
PROBE_EVERY = 0.15  # seconds between two /status requests
AFTER_RATE = 50  # trades per second in all once the burst is over: the market goes on


@pytest.fixture
def fake():
    with FakeBinance(
        ping_interval=1.0,
        weight_limit=10**9,  # the store's own limiter is what paces the repair
        max_backlog=MAX_BACKLOG,
        send_buffer=SEND_BUFFER,
    ) as exchange:
        yield exchange


class Probe:
    """GET /status every `every` seconds in its own greenlet: (start, seconds, status) of
    each request, and the error of each that failed."""

    def __init__(self, store, every):
        self.store = store
        self.every = every
        self.answers: list[tuple[float, float, int]] = []
        self.failures: list[tuple[float, str]] = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            start = time.monotonic()
            try:
                status, _ = self.store.get("/status", timeout=10)
            except OSError as exc:  # URLError and timeouts are OSErrors
                self.failures.append((start, repr(exc)))
            else:
                self.answers.append((start, time.monotonic() - start, status))
            gevent.sleep(max(0.0, start + self.every - time.monotonic()))

    def stop(self):
        self._greenlet.kill()

    def between(self, start, end):
        return [seconds for t, seconds, _ in self.answers if start <= t < end]

    def longest_wait(self, start, end):
        """The longest time from `start` to `end` without a request sent and answered."""
        moments = [start] + [t + seconds for t, seconds, _ in self.answers if start <= t < end]
        return max(b - a for a, b in zip(moments, [*moments[1:], end], strict=True))


def summary(latencies):
    """p50 / p99 / max in ms."""
    if not latencies:
        return "no requests"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms over {len(ordered)}"
    )


def table(symbol):
    return '"prices_' + symbol.replace('"', '""') + '"'


def in_thread(db_path, query):
    """query(connection) on a connection of its own, in a worker thread, so that the exchange
    and the probe (on this process's hub) keep running meanwhile."""

    def run():
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=5)
        try:
            return query(conn)
        finally:
            conn.close()

    return gevent.get_hub().threadpool.apply(run)


def missing_ids(db_path, ranges):
    """{symbol: how many of its ids first..last are not stored}."""

    def count(conn):
        missing = {}
        for symbol, (first, last) in ranges.items():
            sql = f"SELECT COUNT(*) FROM {table(symbol)} WHERE id BETWEEN ? AND ?"
            [(stored,)] = conn.execute(sql, (first, last)).fetchall()
            missing[symbol] = last - first + 1 - stored
        return missing

    return in_thread(db_path, count)


def holes(db_path, ranges):
    """{symbol: [(first, last) of each run of ids missing in first..last]}, for a report."""

    def find(conn):
        found = {}
        for symbol, (first, last) in ranges.items():
            sql = (
                "SELECT id, next FROM (SELECT id, LEAD(id) OVER (ORDER BY id) AS next "
                f"FROM {table(symbol)} WHERE id BETWEEN ? AND ?) WHERE next > id + 1"
            )
            stored = conn.execute(
                f"SELECT MIN(id), MAX(id) FROM {table(symbol)} WHERE id BETWEEN ? AND ?",
                (first, last),
            ).fetchone()
            if stored[0] is None:
                found[symbol] = [(first, last)]
                continue
            runs = [(a + 1, b - 1) for a, b in conn.execute(sql, (first, last))]
            edges = [(first, stored[0] - 1)] if stored[0] > first else []
            tail = [(stored[1] + 1, last)] if stored[1] < last else []
            found[symbol] = edges + runs + tail
        return found

    return in_thread(db_path, find)


def test_a_burst_beyond_the_store_is_repaired_and_status_answers(fake, make_store):
    # Repair pages of 1000 ids cost 20 weight: 2400 a minute is 120 pages, 120,000 ids.
    store = make_store(REST_WEIGHT_PER_MINUTE="2400").start()
    enable(store, *SYMBOLS, fake=fake)
    wait_connected(fake, *SYMBOLS)
    for symbol in SYMBOLS:  # a first stored id each: the store starts from its first trade
        fake.trade(symbol)
    wait_for(lambda: all(rows(store, s) for s in SYMBOLS), 10, "a first trade of each")

    probe = Probe(store, PROBE_EVERY)
    try:
        started = time.monotonic()
        made = fake.burst(SYMBOLS, RATE, SECONDS).get(timeout=SECONDS + 60)
        ended = time.monotonic()
        fake.run_market(SYMBOLS, AFTER_RATE)  # so that every reconnect shows its gap at once
        deadline = ended + (1200 if FULL else 30)  # short: within pytest's 60 s
        left = missing_ids(store.db_path, made.ids)
        missing_at_end = sum(left.values())
        while any(left.values()):
            if time.monotonic() > deadline:
                log = "\n".join(store.lines[-200:])
                missing = holes(store.db_path, made.ids)
                raise AssertionError(f"ids still missing: {missing}\nstore log (end):\n{log}")
            gevent.sleep(0.5)
            left = missing_ids(store.db_path, made.ids)
        caught_up = time.monotonic()
    finally:
        probe.stop()
    fake.stop_market()
    for symbol in SYMBOLS:
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in SYMBOLS), 60, "every id")

    closes = fake.slow_consumers()
    disconnects = re.findall(r"stream disconnected symbol=\S+ code=(\d+)", store.log())
    by_code = {code: disconnects.count(code) for code in sorted(set(disconnects))}
    filled = sum(int(n) for n in re.findall(r"gap filled symbol=\S+ ids=(\d+)", store.log()))
    stored = sum(len(rows(store, s)) for s in SYMBOLS)
    print(
        f"\nburst: {made.trades} trades over {len(SYMBOLS)} symbols in {made.seconds:.2f} s "
        f"= {made.rate:,.0f}/s (asked {RATE:,}/s)"
    )
    print(
        f"slow-consumer closes (1008): {len(closes)}, frames dropped with them "
        f"{sum(dropped for _, _, dropped in closes)}; store disconnects by code {by_code}"
    )
    print(
        f"missing when the burst ended {missing_at_end}; caught up {caught_up - ended:.1f} s "
        f"after it ended; REST calls {len(fake.rest_calls())}; ids repaired {filled}; "
        f"ids stored {stored}"
    )
    print(f"/status during the burst: {summary(probe.between(started, ended))}")
    print(f"/status during the catch-up: {summary(probe.between(ended, caught_up))}")
    longest = probe.longest_wait(started, caught_up)
    print(f"/status: longest time without an answer {longest * 1000:.0f} ms")

    assert made.trades > 0.9 * RATE * SECONDS  # the exchange made (about) what was asked
    assert closes, "the store kept up: no connection passed the backlog bound"
    assert probe.failures == []
    assert {status for _, _, status in probe.answers} == {200}
    assert longest < 2.0  # answered throughout, not only eventually
