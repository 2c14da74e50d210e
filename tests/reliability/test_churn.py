"""Churn: symbols enabled and disabled at random with a fast poll. Never two live streams on
one symbol; once everything is disabled, descriptors and memory come back to their baseline."""

import random
import time

import gevent
import pytest

from helpers import FULL, process_usage, wait_for

pytestmark = pytest.mark.slow

COUNT = 1000 if FULL else 100
SECONDS = 600 if FULL else 5


def test_flapping_symbols(fake, make_store):
    symbols = [f"C{i:04d}USDT" for i in range(COUNT)]
    for symbol in symbols:
        fake.list_symbol(symbol)
    store = make_store(SETTINGS_POLL_INTERVAL="100ms").start()
    store.sql(
        "INSERT INTO symbol_settings (symbol, enabled) VALUES "
        + ",".join("(?, 0)" for _ in symbols),
        tuple(symbols),
    )
    wait_for(lambda: store.find("http listening"), 5)
    gevent.sleep(0.5)  # let the first polls settle before the baseline
    rss_before, fds_before = process_usage(store.proc.pid)
    rng = random.Random(11)
    end, edits, most = time.monotonic() + SECONDS, 0, 0
    next_sample = time.monotonic()
    while time.monotonic() < end:
        chosen = rng.sample(symbols, k=max(1, COUNT // 10))
        store.sql(
            "UPDATE symbol_settings SET enabled = 1 - enabled WHERE symbol IN ("
            + ",".join("?" for _ in chosen)
            + ")",
            tuple(chosen),
        )
        edits += len(chosen)
        if time.monotonic() >= next_sample:
            most = max(most, *(fake.connections(s) for s in symbols))
            assert most <= 1, "two live streams on one symbol"
            next_sample = time.monotonic() + (0.5 if FULL else 0.05)
        gevent.sleep(rng.uniform(0.02, 0.3))  # the pace of the edits, not a synchronisation
    store.sql("UPDATE symbol_settings SET enabled = 0")
    wait_for(lambda: not any(fake.connections(s) for s in symbols), 30, "every stream to stop")
    wait_for(lambda: process_usage(store.proc.pid)[1] <= fds_before + 2, 15, "descriptors back")
    rss_after, fds_after = process_usage(store.proc.pid)
    attempts = len(fake.handshakes())
    print(
        f"{edits} edits over {COUNT} symbols in {SECONDS} s, {attempts} connections, "
        f"most live per symbol {most}; fds {fds_before} -> {fds_after}; "
        f"RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert rss_after <= rss_before + (40 << 20)
    assert store.proc.poll() is None
