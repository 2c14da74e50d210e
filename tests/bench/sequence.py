"""Part `sequence`: what the order of sqlite_sequence's rows costs the whole market's inserts.

    PYTHONPATH=. .venv/bin/python tests/bench/run.py [--quick] sequence

Through the store's own `Database`, on a file of 600 prices_ tables whose sqlite_sequence rows
are in a shuffled order (as when symbols were added over time: their first ticks, not their
trade rates, set it), one commit per tick with the whole market's mix (`market.shares`: the
top symbol ~20 %), a checkpoint every 2,000 commits as the store's second would. CPU per insert
(the process's own time) with the rows as they are, then after `tickd.sequence` put them in
the order of the mix, alternating in rounds on the same file, so the machine's drift shows.
Also what one row of the scan costs: inserts into the table whose row is last, against the
table whose row is first.
"""

import random
import tempfile
import time
from collections import Counter

import market
from common import figure, say

from tickd.database import Database
from tickd.sequence import plan
from tickd.wire import Tick

SYMBOLS = 600
CHECKPOINT_EVERY = 2000


def mix(count: int, ticks: int, seed: int) -> list[str]:
    """`ticks` symbols drawn with the whole market's shares (the k-th name the k-th share)."""
    names = [f"S{k:04d}USDT" for k in range(count)]
    return random.Random(seed).choices(names, market.shares(count), k=ticks)


def timed(db: Database, draws: list[str], ids: dict[str, int]) -> float:
    """CPU seconds per insert of one tick for each draw, checkpoints included."""
    start = time.process_time()
    for n, symbol in enumerate(draws, 1):
        ids[symbol] += 1
        db.insert(symbol, Tick(ids[symbol], ids[symbol], 1.0))
        if n % CHECKPOINT_EVERY == 0:
            db.file.checkpoint()
    return (time.process_time() - start) / len(draws)


def run(quick: bool) -> dict:
    ticks, rounds = (20_000, 2) if quick else (60_000, 3)
    say(f"sequence: {SYMBOLS} tables, {ticks:,} inserts a window, {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="tickd-bench-sequence-") as folder:
        db = Database(f"{folder}/ticks.db")
        db.open()
        try:
            names = [f"S{k:04d}USDT" for k in range(SYMBOLS)]
            ids = dict.fromkeys(names, 0)
            for symbol in random.Random(1).sample(names, len(names)):  # the shuffled order
                ids[symbol] += 1
                db.ensure_table(symbol)
                db.insert(symbol, Tick(1, 1, 1.0))
            conn = db.file.conn
            shuffled = [
                name for (name,) in conn.execute("SELECT name FROM sqlite_sequence ORDER BY rowid")
            ]
            counts = {f"prices_{s}": n for s, n in Counter(mix(SYMBOLS, ticks, 2)).items()}
            ordered = [shuffled[i] for i in plan(shuffled, counts)]
            per_row = _per_row(db, shuffled, ids)
            results: dict[str, list[float]] = {"shuffled": [], "ordered": []}
            for r in range(rounds):
                for label, target in (("shuffled", shuffled), ("ordered", ordered)):
                    db.reorder_sequence(lambda names, target=target: _to(names, target))
                    results[label].append(timed(db, mix(SYMBOLS, ticks, 10 + r), ids))
                    say(f"sequence {label}: {results[label][-1] * 1e6:.1f} µs per insert")
        finally:
            db.close()
    shuffled_us = sum(results["shuffled"]) / rounds * 1e6
    ordered_us = sum(results["ordered"]) / rounds * 1e6
    figure("sequence: CPU per insert, rows shuffled", round(shuffled_us, 1), "µs")
    figure("sequence: CPU per insert, rows in order", round(ordered_us, 1), "µs")
    figure(
        "sequence: CPU per row of sqlite_sequence scanned",
        round(per_row * 1e9),
        "ns",
        "an insert into the last row's table against the first's, / the rows between",
    )
    figure(
        "sequence: in order / shuffled",
        round(ordered_us / shuffled_us, 2),
        "x",
        f"{rounds} alternating rounds of {ticks:,} inserts",
    )
    return {"shuffled": shuffled_us, "ordered": ordered_us}


def _per_row(db: Database, names: list[str], ids: dict[str, int]) -> float:
    """CPU seconds an insert spends per sqlite_sequence row before its table's: the last row's
    table against the first's, alternating, 5,000 inserts each, the better of three."""
    first, last = (name.removeprefix("prices_") for name in (names[0], names[-1]))
    best = {first: float("inf"), last: float("inf")}
    for _ in range(3):
        for symbol in (first, last):
            best[symbol] = min(best[symbol], timed(db, [symbol] * 5000, ids))
    return (best[last] - best[first]) / (len(names) - 1)


def _to(names: list, target: list[str]) -> list[int]:
    """The order that puts rows named `names` (in rowid order) as `target` lists them."""
    where = {name: i for i, name in enumerate(names)}
    return [where[name] for name in target]
