"""Soak: realistic load for RELIABILITY_SOAK seconds with random faults (make soak; not in CI).

100 symbols at 2,000 trades/s in all. Every 20-60 s one fault, drawn at random: a dropped
connection, a close frame 1001, a stall, another program holding the write lock for 8 s, a
SIGKILL and restart, a SIGTERM and restart. The store's memory and descriptors are sampled every
10 s. At the end: every id of every symbol stored once, and no growth.
"""

import json
import os
import random
import signal
import sqlite3
import time

import gevent
import pytest

from helpers import complete, enable, process_usage, wait_connected, wait_for

SECONDS = int(os.environ.get("RELIABILITY_SOAK", "0"))
pytestmark = pytest.mark.skipif(not SECONDS, reason="set RELIABILITY_SOAK=seconds (make soak)")


def test_soak(fake, make_store, tmp_path):
    symbols = [f"S{i:03d}USDT" for i in range(100)]
    store = make_store(
        STREAM_STALE_TIMEOUT="5s", REST_WEIGHT_PER_MINUTE="2400", SETTINGS_POLL_INTERVAL="1s"
    ).start()
    enable(store, *symbols, fake=fake)
    wait_connected(fake, *symbols)
    fake.run_market(symbols, 2000)
    rng = random.Random(20261130)
    samples, faults = [], []
    end = time.monotonic() + SECONDS
    next_fault = time.monotonic() + rng.uniform(20, 60)
    next_sample = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            rss, fds = process_usage(store.proc.pid)
            samples.append({"t": round(SECONDS - (end - now)), "rss": rss, "fds": fds})
            next_sample = now + 10
        if now >= next_fault:
            kind = rng.choice(["drop", "close", "stall", "lock", "kill", "term"])
            symbol = rng.choice(symbols)
            faults.append(kind)
            if kind == "drop":
                fake.drop(symbol)
            elif kind == "close":
                fake.close(symbol, 1001)
            elif kind == "stall":
                fake.stall(symbol)
            elif kind == "lock":
                other = sqlite3.connect(store.db_path, isolation_level=None)
                other.execute("BEGIN EXCLUSIVE")
                gevent.sleep(8)  # the fault's length, not a synchronisation
                other.execute("COMMIT")
                other.close()
            else:
                store.proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
                code = store.wait(15)
                assert code == (-signal.SIGKILL if kind == "kill" else 0)
                store.start()
            next_fault = time.monotonic() + rng.uniform(20, 60)
        gevent.sleep(0.5)
    fake.stop_market()
    for symbol in symbols:
        fake.stall(symbol, on=False)
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in symbols), 300, "every id")
    checked = sum(len(fake.history(s)) for s in symbols)
    report = {"seconds": SECONDS, "faults": faults, "ticks_checked": checked, "samples": samples}
    (tmp_path.parent / "soak-report.json").write_text(json.dumps(report))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    print("rss MiB first/last:", samples[1]["rss"] >> 20, samples[-1]["rss"] >> 20)
    # No growth: the last third's peak stays within 25 % of the first third's.
    third = max(len(samples) // 3, 1)
    assert max(s["rss"] for s in samples[-third:]) <= 1.25 * max(s["rss"] for s in samples[:third])
    assert max(s["fds"] for s in samples[-third:]) <= max(s["fds"] for s in samples[:third]) + 10
