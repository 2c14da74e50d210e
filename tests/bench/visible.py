"""When does each tick become visible to another connection? A reader process for the latency.

    python tests/bench/visible.py DB_PATH OUT_JSON SECONDS SYMBOL [SYMBOL ...]

Polls `MAX(id)` of the symbols' tables every 0.5 ms, in one statement, through its own
connection, for SECONDS. The store commits each symbol's ticks in id order, so when MAX(id)
moves from a to b, ids a+1..b all became visible between the previous poll and this one:
each is given this poll's wall-clock time (time.time(), the clock the exchange stamps its sends
with). Writes {"symbol": [[id, seconds], ...]} to OUT_JSON. Nothing but the standard library.
"""

import json
import sqlite3
import sys
import time

POLL = 0.0005


def main() -> int:
    db_path, out_path, seconds, *symbols = sys.argv[1:]
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    query = "SELECT " + ", ".join(f'(SELECT MAX(id) FROM "prices_{s}")' for s in symbols)
    last = list(conn.execute(query).fetchone())
    seen: dict[str, list] = {s: [] for s in symbols}
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        row = conn.execute(query).fetchone()
        now = time.time()
        for k, top in enumerate(row):
            if top is not None and (last[k] is None or top > last[k]):
                start = top if last[k] is None else last[k] + 1
                seen[symbols[k]].extend([i, now] for i in range(start, top + 1))
                last[k] = top
        time.sleep(POLL)
    conn.close()
    with open(out_path, "w") as out:
        json.dump(seen, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
