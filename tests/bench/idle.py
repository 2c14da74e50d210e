"""Part `idle`: the store's memory with many connected symbols that never trade.

The exchange lists the symbols and never trades (it pings every 3 minutes, as Binance does);
the store runs with its defaults (silence checks included) and SETTINGS_POLL_INTERVAL=1s.
Symbols are enabled in steps; after each step, once the exchange sees every stream open and
5 s have passed, the store's RSS (from /proc) is read. The store admits 10 connection
attempts per 1.1 s and 300 per 302 s (tickd/limits.py), so 300 symbols take about 30 s and
1,000 about 16 minutes: the 1,000 step is in the full run only. Memory per symbol is the slope
between the first and the last step.
"""

import time

from common import Exchange, Store, figure, say, symbol_names, threads, workdir


def run(quick: bool) -> dict:
    steps = (100, 300) if quick else (100, 300, 1000)
    say(f"idle: RSS at {', '.join(map(str, steps))} connected idle symbols")
    symbols = symbol_names(steps[-1])
    points = []
    with workdir("idle") as folder, Exchange(folder, steps[-1]) as exchange:
        env = {"BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url}
        with Store(folder, env) as store:
            time.sleep(3.0)
            start_cpu, start = store.cpu(), time.monotonic()
            points.append((0, store.rss(), 0.0))
            enabled = 0
            for step in steps:
                store.enable(symbols[enabled:step])
                enabled = step
                took = exchange.wait_subscribed(step, 1500, store)
                time.sleep(5.0)
                points.append((step, store.rss(), took))
                say(f"idle: {step} connected after {took:.0f} s, RSS {points[-1][1]:.1f} MB")
            cpu_share = (store.cpu() - start_cpu) / (time.monotonic() - start)
            thread_count = threads(store.pid)
    for step, rss, took in points:
        figure(
            f"idle: RSS with {step} symbols connected",
            round(rss, 1),
            "MB",
            f"all connected {took:.0f} s after enabling" if step else "none enabled",
        )
    (n0, rss0, _), (n1, rss1, _) = points[1], points[-1]
    per_symbol = (rss1 - rss0) / (n1 - n0) * 1000
    figure(f"idle: memory per symbol ({n0} -> {n1})", round(per_symbol, 1), "kB")
    figure(
        "idle: store CPU while connecting and idle",
        round(cpu_share * 100, 2),
        "% of a core",
        f"{thread_count} threads",
    )
    return {"points": points, "kb_per_symbol": per_symbol}
