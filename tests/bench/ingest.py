"""Part `ingest`: the store's top rate, end to end, against the limit measured in the same run.

1. The bare loop (part `limit`, INSERT OR IGNORE) for a few seconds.
2. The store and the exchange launcher, each in its own process (one core each), 100
   symbols on 100 raw-stream connections. Firehose: every connection's writer sends trades as
   fast as TCP takes them, so the store never waits for a frame. After 3 s of warm-up, rows
   and CPU over the window give stored ticks/s and µs of CPU per tick.
3. The firehose stops; once the store has caught up, every table's count, min and max id are
   compared with what the exchange made (completeness).
4. Latency at 2,000 ticks/s (paced, not firehose: under the firehose a tick waits behind the
   socket buffers, which measures the buffers), on the fresh store before the firehose and,
   except with --quick, for 10 s after it. 10 probe symbols: the exchange stamps each probe
   frame with time.time() just before `sendall`, and `visible.py` (another process, its own
   connection) notes when its id becomes visible. Includes the exchange's write, the kernel,
   the store's read, parse and commit, and up to one 0.5 ms poll.
5. The bare loop again. The ratio uses the mean of the two bare-loop rates.

While the firehose runs, /status is asked every 0.5 s (10 s timeout), and the -wal file's size
is read at the end of the window. Except with --quick, steps 2-4 are repeated with the store
patched (variant.py checkpoint_locked: another way to bound the WAL), between the two bare
loops.
"""

import json
import statistics
import threading
import time
from pathlib import Path

from common import (
    BENCH,
    PYTHON,
    Child,
    Exchange,
    Store,
    completeness,
    figure,
    file_size,
    get_seconds,
    percentile,
    say,
    stored,
    symbol_names,
    workdir,
)
from limit import bare_loop

SYMBOLS = 100
PROBES = 10
# variant.py: another way to bound the WAL (hold the Semaphore during each checkpoint), beside
# the store's own (TRUNCATE once a checkpoint has caught up and the WAL is over 64 MiB).
PROPOSAL = ("checkpoint_locked",)


def wait_drained(exchange: Exchange, store: Store, symbols, timeout: float) -> dict:
    """Wait until the store holds as many ticks as the exchange made; the exchange's counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = exchange.call("counts")
        made = sum(counts[s][2] for s in symbols)
        if stored(store.db_path, symbols) >= made or time.monotonic() > deadline:
            return counts
        time.sleep(1.0)


def latency(exchange: Exchange, store: Store, folder, seconds: float, rate: float) -> list[float]:
    """Seconds from send to visible of every probe tick sent during `seconds` at `rate`."""
    if not seconds:
        return []
    probes = symbol_names(SYMBOLS)[:PROBES]
    out = folder / "visible.json"
    argv = [PYTHON, BENCH / "visible.py", store.db_path, out, seconds + 3, *probes]
    with Child(argv, folder / "visible.log") as reader:
        exchange.call("probes", symbols=",".join(probes))
        time.sleep(1.0)
        exchange.call("sent")  # forget what was sent before the reader looked
        exchange.call("paced", rate=rate)
        time.sleep(seconds)
        exchange.call("paced", rate=0)
        time.sleep(1.0)
        sent = exchange.call("sent")
        reader.proc.wait(timeout=30)
    seen = json.loads(out.read_text())
    visible = {(s, i): t for s, pairs in seen.items() for i, t in pairs}
    lags = [visible[(s, i)] - t for s, i, t in sent if (s, i) in visible]
    missing = sum(1 for s, i, _ in sent if (s, i) not in visible)
    if missing:
        say(f"latency: {missing} of {len(sent)} probe ticks never seen")
    return lags


def status_probe(url: str, stop: threading.Event, out: list) -> None:
    """Ask /status again and again until `stop`; seconds per answer, None for a 10 s timeout."""
    while not stop.is_set():
        try:
            out.append(get_seconds(url, timeout=10.0))
        except OSError:
            out.append(None)
        stop.wait(0.5)


def firehose(folder, window: float, patches=(), latency_before=0.0, latency_after=0.0) -> dict:
    """One store (with `patches`, see variant.py) under the firehose; its figures."""
    symbols = symbol_names(SYMBOLS)
    with Exchange(folder, SYMBOLS, name=f"exchange{len(patches)}") as exchange:
        env = {"BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url}
        name = f"store{len(patches)}"
        with Store(folder, env, patches=patches, name=name, db_path=folder / f"{name}.db") as store:
            store.enable(symbols)
            exchange.wait_subscribed(SYMBOLS, 60, store)
            before = latency(exchange, store, folder, latency_before, 2000)
            exchange.call("firehose", on=1)
            time.sleep(3.0)
            rows0, cpu0, xcpu0 = stored(store.db_path, symbols), store.cpu(), exchange.cpu()
            wall0 = time.monotonic()
            stop, status = threading.Event(), []
            prober = threading.Thread(target=status_probe, args=(store.url(), stop, status))
            prober.start()
            time.sleep(window)
            rows1, cpu1, xcpu1 = stored(store.db_path, symbols), store.cpu(), exchange.cpu()
            wall = time.monotonic() - wall0
            wal = file_size(Path(f"{store.db_path}-wal"))
            stop.set()
            exchange.call("firehose", on=0)
            prober.join()
            drain0 = time.monotonic()
            counts = wait_drained(exchange, store, symbols, 180)
            drain = time.monotonic() - drain0
            made, kept, wrong = completeness(store.db_path, symbols, counts)
            after = latency(exchange, store, folder, latency_after, 2000)
            result = {
                "rate": (rows1 - rows0) / wall,
                "us": (cpu1 - cpu0) / max(rows1 - rows0, 1) * 1e6,
                "cpu_share": (cpu1 - cpu0) / wall,
                "exchange_share": (xcpu1 - xcpu0) / wall,
                "wal": wal,
                "status": status,
                "made": made,
                "kept": kept,
                "wrong": wrong,
                "drain": drain,
                "before": before,
                "after": after,
                "gaps": len(store.lines("gap found")),
                "failed": len(store.lines("write failed")),
                "dropped": len(store.lines("stream disconnected")),
            }
    label = "+".join(patches) or "store"
    answered = [s for s in status if s is not None]
    say(
        f"ingest {label}: {result['rate']:.0f} ticks/s, {result['us']:.1f} µs/tick, WAL "
        f"{wal / 1e6:.0f} MB, /status answered {len(answered)} of {len(status)} within 10 s"
    )
    return result


def run(quick: bool) -> dict:
    window = 8.0 if quick else 20.0
    limit_seconds = 3.0 if quick else 6.0
    variants = [()] if quick else [(), PROPOSAL]
    say(
        f"ingest: firehose, {SYMBOLS} symbols, {window:g} s window, bare loop before and after"
        + ("" if quick else f"; the store, then the store +{'+'.join(PROPOSAL)}")
    )
    with workdir("ingest") as folder:
        limit_before, limit_cpu_before = bare_loop(folder, limit_seconds)
        results = [
            firehose(
                folder,
                window,
                v,
                latency_before=0 if v else window,
                latency_after=0 if quick else 10.0,
            )
            for v in variants
        ]
        limit_after, limit_cpu_after = bare_loop(folder, limit_seconds)
    limit_rate = (limit_before + limit_after) / 2
    limit_cpu = (limit_cpu_before + limit_cpu_after) / 2
    figure(
        "ingest: bare loop, same run",
        round(limit_rate),
        "rows/s",
        f"{limit_before:.0f} before, {limit_after:.0f} after; {limit_cpu:.1f} µs CPU/row",
    )
    for patches, r in zip(variants, results, strict=True):
        who = "store" + (f" +{'+'.join(patches)}" if patches else "")
        answered = [s for s in r["status"] if s is not None]
        figure(f"ingest {who}: stored ticks/s (firehose)", round(r["rate"]), "ticks/s")
        figure(
            f"ingest {who}: ratio to the bare loop (target >= 0.5)",
            round(r["rate"] / limit_rate, 3),
            "x",
        )
        figure(
            f"ingest {who}: CPU per tick",
            round(r["us"], 1),
            "µs",
            f"{r['cpu_share'] * 100:.0f}% of a core; exchange {r['exchange_share'] * 100:.0f}%",
        )
        figure(
            f"ingest {who}: /status during the firehose",
            f"{len(answered)} of {len(r['status'])} answered within 10 s",
            "",
            f"slowest answered {max(answered) * 1000:.0f} ms" if answered else "none answered",
        )
        figure(f"ingest {who}: WAL at the end of the window", round(r["wal"] / 1e6, 1), "MB")
        figure(
            f"ingest {who}: completeness",
            f"{r['kept']:,} of {r['made']:,} stored",
            "",
            f"{r['wrong']} tables off; drained in {r['drain']:.1f} s; {r['gaps']} gaps, "
            f"{r['failed']} write failures, {r['dropped']} disconnections logged",
        )
        for when in ("before", "after"):
            lags = r[when]
            if lags:
                figure(
                    f"ingest {who}: latency at 2,000 ticks/s, {when} the firehose",
                    f"p50 {statistics.median(lags) * 1000:.2f} ms, "
                    f"p90 {percentile(lags, 0.9) * 1000:.2f} ms, "
                    f"p99 {percentile(lags, 0.99) * 1000:.2f} ms, max {max(lags) * 1000:.1f} ms",
                    "",
                    f"{len(lags)} probe ticks",
                )
    base = results[0]
    return {
        "rate": base["rate"],
        "limit": limit_rate,
        "ratio": base["rate"] / limit_rate,
        "us": base["us"],
        "complete": base["kept"] == base["made"] and base["wrong"] == 0,
        "variants": results,
    }
