"""Part `repair`: how fast the store fills a gap from REST, with and without the weight budget.

One symbol, BTCUSDT. Its table already holds one tick, id F (a store that stopped); the
exchange's history then holds `gap` more ids that are never streamed. The store starts, the
stream connects and trades flow at 20 ticks/s: the first one, F + gap + 1, reveals the gap
(`gap found ... by=stream`), and the repair worker fetches pages of 1,000 from the exchange's
REST (`GET /fapi/v1/aggTrades?fromId=`), one transaction per page, until `gap filled ...
seconds=S`. Rate = ids / S, S as the store logs it. Then every id is checked.

unthrottled     REST_WEIGHT_PER_MINUTE=2400 (Binance's whole limit, 120 pages a minute) and an
                exchange that never answers 429; the gap is under 120 pages, so the budget never
                binds: the rate is the store's own (REST call, parse, one transaction per page).
default budget  REST_WEIGHT_PER_MINUTE unset (1200: 60 pages a minute), 90 pages; the symbol is
                enabled as a UTC minute begins (the budget is per clock minute), so 60 pages
                go at once and the last 30 after the next minute starts. Full run only.
"""

import re
import sqlite3
import time
from datetime import datetime

from common import Exchange, Store, completeness, create_prices, figure, say, workdir

from tickd.database import SETTINGS_DDL

SYMBOL = "BTCUSDT"
LIVE_RATE = 20.0
FILLED = r"gap filled symbol=BTCUSDT ids=(\d+) seconds=([\d.]+)"


def stamp(line: str) -> float:
    """The time of a store log line (`2026-11-30T05:33:24.123Z ...`), in seconds."""
    return datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()


def seed_database(path, first_id: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SETTINGS_DDL)
        table = create_prices(conn, SYMBOL)
        before = int(time.time() * 1000) - 60_000
        conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", (first_id, before, 83091.7))
    finally:
        conn.close()


def case(name: str, gap: int, weight: int | None, exchange_limit: int, align: bool) -> dict:
    with (
        workdir(f"repair-{name}") as folder,
        Exchange(folder, 1, symbols=[SYMBOL], weight_limit=exchange_limit) as exchange,
    ):
        first = exchange.call("counts")[SYMBOL][0]
        exchange.call("skip", symbol=SYMBOL, n=1 + gap)  # id F stored, then the gap
        db_path = folder / "ticks.db"
        seed_database(db_path, first)
        env = {"BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url}
        if weight:
            env["REST_WEIGHT_PER_MINUTE"] = str(weight)
        with Store(folder, env, db_path=db_path) as store:
            if align:  # the budget is per UTC minute: find the gap as one begins
                time.sleep(60 - time.time() % 60)
            calls0, cpu0 = exchange.call("rest_calls"), store.cpu()
            # Trades flow as soon as the stream is up, so the first one reveals the gap (a
            # silent stream would have it found by the silence check 15 s after start).
            store.enable([SYMBOL])
            exchange.wait_subscribed(1, 30, store)
            exchange.call("paced", rate=LIVE_RATE)
            filled = store.wait_for_line(FILLED, 600)
            calls, cpu = exchange.call("rest_calls") - calls0, store.cpu() - cpu0
            exchange.call("paced", rate=0)
            time.sleep(1.0)
            made, kept, wrong = completeness(db_path, [SYMBOL], exchange.call("counts"))
            found = store.lines("gap found")
            store_log = store.log()
    # The store logs `seconds=` to 0.1 s; its log lines carry ms timestamps.
    ids = int(filled[1])
    filled_line = next(line for line in store_log.splitlines() if "gap filled" in line)
    seconds = (stamp(filled_line) - stamp(found[0])) if found else float(filled[2])
    count = re.search(r"count=(\d+)", found[0])[1] if found else "?"
    say(f"repair {name}: gap of {count} found, {ids} ids filled in {seconds:.2f} s, {calls} calls")
    return {
        "ids": ids,
        "seconds": seconds,
        "rate": ids / seconds,
        "calls": calls,
        "us_per_tick": cpu / ids * 1e6,
        "complete": (made, kept, wrong),
    }


def run(quick: bool) -> dict:
    out = {}
    gap = 50_000 if quick else 100_000
    say(f"repair: a gap of {gap:,} ids, REST_WEIGHT_PER_MINUTE=2400, no 429 from the exchange")
    r = out["unthrottled"] = case("unthrottled", gap, 2400, 10**9, align=time.time() % 60 > 50)
    made, kept, _ = r["complete"]
    figure(
        "repair: unthrottled rate",
        round(r["rate"]),
        "ticks/s",
        f"{r['ids']:,} ids in {r['seconds']:.2f} s, {r['calls']} REST calls; "
        f"{kept:,}/{made:,} stored",
    )
    figure("repair: store CPU per repaired tick", round(r["us_per_tick"], 1), "µs")
    if not quick:
        say("repair: a gap of 90,000 ids at the default budget (1200 weight a minute)")
        r = out["default"] = case("default", 90_000, None, 2400, align=True)
        made, kept, _ = r["complete"]
        figure(
            "repair: 90 pages at the default budget",
            round(r["seconds"], 1),
            "s",
            f"{r['rate']:.0f} ticks/s over this gap, {r['calls']} REST calls; "
            f"{kept:,}/{made:,} stored",
        )
    page_seconds = 1000 / out["unthrottled"]["rate"]
    for per_day in (2_000_000, 5_000_000):
        pages = -(-per_day // 24 // 1000)
        # 60 (or 120) pages in the minute the gap is found, as many at each new UTC minute:
        # the later in its minute the gap is found, the longer.
        at_1200 = (pages - 1) // 60
        at_2400 = (pages - 1) // 120
        figure(
            f"repair: 1-hour gap at {per_day / 1e6:g} M trades/day (estimate)",
            f"{pages} pages: {at_1200}-{at_1200 + 1} min at 1200/min, "
            f"{at_2400}-{at_2400 + 1} min at 2400/min",
            "",
            f"plus {pages * page_seconds:.1f} s of work at {page_seconds * 1000:.0f} ms a page",
        )
    return out
