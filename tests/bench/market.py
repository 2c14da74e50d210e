"""Part `market`: the whole of Binance USD-M as it trades, over TLS: about 600 symbols whose
rates follow a steep power law, 2,000 trades/s in all with minute-long spikes to 10,000.

    PYTHONPATH=. .venv/bin/python tests/bench/market.py [--quick] [--plain] [--peers]
        [--symbols 600] [--minutes 10] [--shuffle] [--also-tree DIR=NAME ...]

Shape. Symbol k (1 = the busiest) gets a share proportional to (k + 4.56) ** -2.24: the top
symbol 20 % of all trades (400/s at 2,000/s), the top ten 74 %, the median symbol (k = 300)
3 a minute, the last 0.7 a minute: hundreds of quiet streams beside a few busy ones, as on
Binance. The exchange (`exchange.py --tls`, paced mode with `skew`) draws each trade's symbol
with those weights, at Poisson arrival times.

What is measured, for the store (and with --peers, cryptofeed and the naive recorder on the
same load, one after the other):

connect         the time from enabling every symbol to every one having a stream, against
                Binance's limit of 300 connection attempts per 5 minutes per IP (the store
                keeps to it: 600 symbols cannot connect in less than 5 minutes)
CPU per tick    CPU seconds of the recorder / ticks stored, over the whole window (spikes in)
RSS             peak and end, sampled every second
/status         (the store) latency of a GET every second, 600 rows on the page
completeness    every id the exchange made, stored: count, lowest and highest id per table
                equal to the exchange's, after the load stops (repair given up to 3 minutes)

--also-tree DIR=NAME: also the store of another source tree (`git archive COMMIT | tar -x -C
DIR`), as `store@NAME`, right after the store: a before/after on the same load.

--shuffle: the store's tables are made before it starts, their rows in sqlite_sequence in a
random order, as on a store whose symbols were added over time. Without it, nothing trades
until every symbol is connected, so the busiest tables get the first ticks and the first rows
(which `tickd/sequence.py` is about).

--quick: 250 symbols (under the 300-attempt window: they connect in about 25 s), 2 minutes,
one 30 s spike. Every process is stopped and the temporary folder removed, also on failure.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path

import load
from common import (
    Exchange,
    add_also_tree,
    also_trees,
    completeness,
    create_prices,
    figure,
    get_seconds,
    percentile,
    say,
    steal_ticks,
    stored,
    symbol_names,
    tree_state,
    workdir,
)

from tickd.database import transaction

SKEW, SHIFT = 2.24, 4.56  # share of the k-th symbol ~ (k + SHIFT) ** -SKEW (see above)
RATE, SPIKE = 2000.0, 10000.0  # trades/s in all: usual, and during a spike
ATTEMPTS_PER_5_MIN = 300  # Binance's limit on connection attempts per IP


def shares(count: int) -> list[float]:
    weights = [(k + SHIFT) ** -SKEW for k in range(1, count + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def schedule(minutes: float, quick: bool) -> list[tuple[float, float]]:
    """(seconds from the start, rate) steps: the usual rate, with spikes of a minute (30 s
    with --quick) at 30 % and 70 % of the window (one at 50 % with --quick)."""
    length = minutes * 60
    if quick:
        return [(0, RATE), (length * 0.5, SPIKE), (length * 0.5 + 30, RATE)]
    steps = [(0.0, RATE)]
    for at in (0.3, 0.7):
        steps += [(length * at, SPIKE), (length * at + 60, RATE)]
    return steps


def measure(
    subject: str,
    symbols: list[str],
    minutes: float,
    quick: bool,
    tls: bool,
    *,
    tree=None,
    shuffle: bool = False,
) -> dict:
    with (
        workdir(f"market-{subject.replace('/', '-')}") as folder,
        Exchange(folder, len(symbols), tls=tls, weight_limit=2400) as exchange,
    ):
        proc, db_path = load.subject_process(subject, folder, exchange, symbols, tree=tree)
        with proc:
            started = time.monotonic()
            if load.is_store(subject):
                if shuffle:
                    made_in_order(db_path, random.Random(3).sample(symbols, len(symbols)))
                proc.enable(symbols)
            connect = exchange.wait_subscribed(len(symbols), 900, proc)
            say(f"market {subject}: {len(symbols)} symbols connected in {connect:.1f} s")
            rows0, cpu0, made0 = stored(db_path, symbols), proc.cpu(), made(exchange)
            wall0, steal0 = time.monotonic(), steal_ticks()
            status, samples, stop = [], [], threading.Event()
            poller = threading.Thread(
                target=poll, args=(proc, load.is_store(subject), status, samples, stop)
            )
            poller.start()
            try:
                for at, rate in schedule(minutes, quick):
                    time.sleep(max(0.0, wall0 + at - time.monotonic()))
                    exchange.call("paced", rate=rate, skew=SKEW, shift=SHIFT)
                time.sleep(max(0.0, wall0 + minutes * 60 - time.monotonic()))
                rows1, cpu1, wall1 = stored(db_path, symbols), proc.cpu(), time.monotonic()
                made1, steal1 = made(exchange), steal_ticks()
            finally:
                stop.set()
                poller.join()
                exchange.call("paced", rate=0)
            counts = exchange.call("counts")
            total = sum(c[2] for c in counts.values())
            settle = time.monotonic()
            while stored(db_path, symbols) < total and time.monotonic() - settle < 180:
                time.sleep(1.0)
            settled = time.monotonic() - settle
            generated, kept, wrong = completeness(db_path, symbols, counts)
    wall = wall1 - wall0
    ticks = rows1 - rows0
    rss = [s for s in samples if s]
    result = {
        "subject": subject,
        "connect": connect,
        "made_per_s": (made1 - made0) / wall,
        "ticks_per_s": ticks / wall,
        "us_per_tick": (cpu1 - cpu0) / max(ticks, 1) * 1e6,
        "cpu_share": (cpu1 - cpu0) / wall,
        "rss_max": max(rss),
        "rss_end": rss[-1],
        "status": status,
        "generated": generated,
        "kept": kept,
        "wrong": wrong,
        "settled": settled,
        "run_s": time.monotonic() - started,
        "steal": (steal1[0] - steal0[0]) / max(steal1[1] - steal0[1], 1),
    }
    say(
        f"market {subject}: {result['ticks_per_s']:.0f} ticks/s stored of "
        f"{result['made_per_s']:.0f} made, {result['us_per_tick']:.1f} µs/tick, "
        f"RSS max {result['rss_max']:.1f} MB, {kept:,}/{generated:,} stored "
        f"({wrong} tables off, {settled:.0f} s after the load), "
        f"{result['steal'] * 100:.1f} % of the CPUs' time stolen by the hypervisor"
    )
    return result


def made_in_order(db_path: Path, symbols: list[str]) -> None:
    """Create the symbols' tables, empty, their sqlite_sequence rows in this order (seq 0):
    a store whose tables got their first ticks in that order, ids still to come."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        with transaction(conn):
            for symbol in symbols:
                create_prices(conn, symbol)
            conn.executemany(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?, 0)",
                [(f"prices_{symbol}",) for symbol in symbols],
            )
    finally:
        conn.close()


def made(exchange: Exchange) -> int:
    return sum(c[2] for c in exchange.call("counts").values())


def poll(proc, is_store: bool, status: list, samples: list, stop: threading.Event) -> None:
    """Every second until `stop`: the recorder's RSS, and (the store) a /status latency."""
    while not stop.wait(1.0):
        samples.append(proc.rss())
        if is_store:
            try:
                status.append(get_seconds(proc.url(), timeout=30))
            except OSError as exc:
                say(f"market: /status failed: {exc}")
                status.append(float("inf"))


def run(
    quick: bool = False,
    *,
    count: int | None = None,
    minutes: float | None = None,
    tls: bool = True,
    peers: bool = False,
    trees: dict | None = None,
    shuffle: bool = False,
) -> dict:
    """`trees`: {name: folder} of other source trees whose store runs too, as `store@name`."""
    count = count or (250 if quick else 600)
    minutes = minutes or (2.0 if quick else 10.0)
    symbols = symbol_names(count)
    top = shares(count)
    say(
        f"market: {count} symbols, {minutes:g} min, {RATE:,.0f} trades/s with spikes to "
        f"{SPIKE:,.0f}; top symbol {top[0] * RATE:.0f}/s, median "
        f"{top[count // 2] * RATE * 60:.1f}/min, {'TLS' if tls else 'plain'}"
    )
    scheme = "/tls" if tls else ""
    folders = {f"store@{name}{scheme}": Path(folder) for name, folder in (trees or {}).items()}
    subjects = [f"store{scheme}", *folders]
    subjects += [f"cryptofeed{scheme}", f"naive{scheme}"] if peers else []
    for subject, folder in folders.items():
        say(f"market: {subject} is {tree_state(folder)}")
    results = {}
    for subject in subjects:
        results[subject] = measure(
            subject, symbols, minutes, quick, tls, tree=folders.get(subject), shuffle=shuffle
        )
    report(results, count)
    return results


def report(results: dict, count: int) -> None:
    floor = (count - 1) // ATTEMPTS_PER_5_MIN * 300
    for subject, r in results.items():
        name = f"market: {subject}"
        figure(
            f"{name} connect {count} symbols",
            r["connect"],
            "s",
            f"limit: {ATTEMPTS_PER_5_MIN} attempts / 5 min, so at least {floor} s",
        )
        figure(
            f"{name} CPU per stored tick",
            r["us_per_tick"],
            "µs",
            f"{r['ticks_per_s']:.0f} ticks/s stored of {r['made_per_s']:.0f} made",
        )
        figure(f"{name} RSS max / end", r["rss_max"], "MB", f"end {r['rss_end']:.1f} MB")
        if r["status"]:
            s = r["status"]
            figure(
                f"{name} /status ({count} rows)",
                percentile(s, 0.99) * 1000,
                "ms p99",
                f"p50 {statistics.median(s) * 1000:.1f} ms, max {max(s) * 1000:.1f} ms, "
                f"{len(s)} requests",
            )
        figure(f"{name} CPU time stolen", r["steal"] * 100, "%", "by the hypervisor, in the window")
        figure(
            f"{name} completeness",
            r["kept"],
            "ids stored",
            f"of {r['generated']:,}; {r['wrong']} tables off; {r['settled']:.0f} s to settle",
        )
    store = next((r for s, r in results.items() if s.startswith("store")), None)
    for subject, r in results.items():
        if store is not None and r is not store and not subject.startswith("store@"):
            figure(
                f"market: store / {subject} CPU per tick",
                store["us_per_tick"] / r["us_per_tick"],
                "x",
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="250 symbols, 2 minutes")
    parser.add_argument("--plain", action="store_true", help="ws:// and http://, not TLS")
    parser.add_argument("--peers", action="store_true", help="cryptofeed and naive too")
    parser.add_argument("--symbols", type=int, help="how many (default 600; --quick 250)")
    parser.add_argument("--minutes", type=float, help="the window (default 10; --quick 2)")
    parser.add_argument(
        "--shuffle", action="store_true", help="sqlite_sequence's rows in a random order"
    )
    add_also_tree(parser)
    args = parser.parse_args()
    trees = also_trees(parser, args.also_tree)
    run(
        args.quick,
        count=args.symbols,
        minutes=args.minutes,
        tls=not args.plain,
        peers=args.peers,
        trees=trees,
        shuffle=args.shuffle,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
