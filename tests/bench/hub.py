"""Does a lock held by another program stall the store? Measures both ways of waiting for it.

    make bench-hub
    PYTHONPATH=. .venv/bin/python tests/bench/hub.py [--symbols 50] [--rate 500] [--lock 7]

For each variant, starts `python -m tickd` against an in-process fake exchange trading
`--symbols` symbols at `--rate` trades/s in all, then:
  1. CPU per stored tick over 10 s of normal load (utime + stime of the store's process);
  2. another connection holds BEGIN EXCLUSIVE for `--lock` seconds while /status is
     requested every 50 ms: its latency (p50, p99, max), and whether the streams survived
     (disconnections logged) and how many ticks were stored once the lock was gone.

Variants:
  cooperative  what the store does: busy timeout 0, retried with gevent.sleep (up to 5 s)
  blocking     SQLite's own busy handler (busy_timeout = 5000) waiting on the gevent hub
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from tickd.fakebinance import FakeBinance  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Runs the store with SQLite's busy handler on the hub instead of the cooperative wait.
BLOCKING = """
from gevent import monkey; monkey.patch_all()
import os, sys
from tickd import database
from tickd.app import run
File = getattr(database, "Handle", database.Database)  # holds the connection
setup = File._setup
def blocking_setup(conn):
    setup(conn)
    conn.execute("PRAGMA busy_timeout = 5000")
File._setup = staticmethod(blocking_setup)
sys.exit(run(os.environ))
"""


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_rows(db_path, symbols):
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        counts = [conn.execute(f'SELECT COUNT(*) FROM "prices_{s}"').fetchone()[0] for s in symbols]
        return sum(counts)
    finally:
        conn.close()


def get(url, timeout=20):
    """Seconds until /status answered (`timeout` if it did not)."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except TimeoutError:
        return timeout
    return time.perf_counter() - start


def measure(variant, symbols, rate, lock_seconds):
    with tempfile.TemporaryDirectory() as tmp, FakeBinance() as fake:
        db_path = os.path.join(tmp, "ticks.db")
        env = {
            **os.environ,
            "DB_PATH": db_path,
            "HTTP_PORT": "0",
            "BINANCE_WS_URL": fake.ws_url,
            "SETTINGS_POLL_INTERVAL": "1s",
        }
        argv = [sys.executable, "-m", "tickd"]
        if variant == "blocking":
            argv = [sys.executable, "-c", BLOCKING]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        reader = gevent.spawn(lambda: [lines.append(line) for line in proc.stdout])
        try:
            while not any("http listening" in line for line in lines):
                if proc.poll() is not None:
                    raise RuntimeError("the store did not start:\n" + "".join(lines))
                gevent.sleep(0.05)
            port = re.search(r"port=(\d+)", next(li for li in lines if "http listening" in li))[1]
            url = f"http://127.0.0.1:{port}/status"
            conn = sqlite3.connect(db_path, isolation_level=None)
            conn.executemany(
                "INSERT INTO symbol_settings (symbol) VALUES (?)", [(s,) for s in symbols]
            )
            while sum(fake.connections(s) for s in symbols) < len(symbols):
                gevent.sleep(0.05)
            fake.run_market(symbols, rate)
            gevent.sleep(3)  # warm up

            rows0, cpu0 = count_rows(db_path, symbols), cpu_seconds(proc.pid)
            gevent.sleep(10)
            rows1, cpu1 = count_rows(db_path, symbols), cpu_seconds(proc.pid)
            us_per_tick = (cpu1 - cpu0) / max(rows1 - rows0, 1) * 1e6

            disconnects_before = sum("stream disconnected" in li for li in lines)
            latencies = []
            conn.execute("BEGIN EXCLUSIVE")
            # Released on time by its own greenlet, whatever the requests below are doing.
            release = gevent.spawn_later(lock_seconds, conn.execute, "COMMIT")
            end = time.monotonic() + lock_seconds
            while time.monotonic() < end:
                latencies.append(get(url))
                gevent.sleep(0.05)
            release.join()
            conn.close()
            gevent.sleep(3)
            fake.stop_market()
            gevent.sleep(2)
            made = sum(len(fake.history(s)) for s in symbols)
            stored = count_rows(db_path, symbols)
            disconnects = sum("stream disconnected" in li for li in lines) - disconnects_before
            skipped = sum("write failed" in li for li in lines)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            reader.join(timeout=5)
    latencies.sort()
    return {
        "variant": variant,
        "cpu_us_per_tick": us_per_tick,
        "status_p50_ms": statistics.median(latencies) * 1000,
        "status_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "status_max_ms": latencies[-1] * 1000,
        "status_requests": len(latencies),
        "disconnects": disconnects,
        "write_failed_lines": skipped,
        "ticks_made": made,
        "ticks_stored": stored,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--lock", type=float, default=7)
    args = parser.parse_args()
    symbols = [f"S{i:03d}USDT" for i in range(args.symbols)]
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{args.symbols} symbols, {args.rate:g} trades/s, lock {args.lock:g} s"
    )
    for variant in ("cooperative", "blocking"):
        result = measure(variant, symbols, args.rate, args.lock)
        print(
            "  ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
