"""Parts `realistic` and `hub`: 100 symbols at 2,000 ticks/s, the store and its peers, TLS too.

Each subject gets a fresh exchange process (`exchange.py`, paced mode: Poisson arrivals,
2,000 trades/s in all over 100 symbols, seed fixed, so every subject sees the same sequence)
and a fresh database whose tables are the store's DDL. One after the other:

  store       `python -m tickd`, 100 raw-stream connections;
  naive       `naive_recorder.py`: asyncio + websockets, one commit per tick, 100 connections;
  cryptofeed  `cryptofeed_recorder.py`: cryptofeed 2.4.1's BinanceFutures feed, one combined
              stream, a trade callback making one commit per tick;
  lean        `lean_recorder.py`: the card's stack at its leanest (gevent Pool, websocket-client
              with skip_utf8_validation, a Semaphore, sqlite3), 100 connections.

Each recorder runs twice, right after each other: over plain `ws://` and `http://`, then as
`NAME/tls` over `wss://` and `https://` (`exchange.py --tls`: a certificate for 127.0.0.1 signed
by a CA the exchange makes at start). A TLS recorder trusts that CA through its environment
(`Exchange.trust_env`: SSL_CERT_FILE, and REQUESTS_CA_BUNDLE for cryptofeed's REST calls), and
verification stays on: before any load, each TLS recorder is started once against a TLS
exchange with that environment pointing at another CA, and must break off the handshake
(the exchange records OpenSSL's reason, `TLSV1_ALERT_UNKNOWN_CA`) and subscribe nothing, once per
variable it reads. A recorder that connects anyway is not measured.

After all streams are up and 5 s of load, a window (2 min, 1 with --quick) gives the subject's
CPU share of a core and µs of CPU per stored tick (utime + stime of its process, all threads,
from /proc), RSS and the -wal file's size sampled every second. Then the load stops, and every
table is checked against what the exchange made.

For the store only, after the window and under the same load: /status requested every 50 ms
(its latency: part `hub`), and, when part `profile` is on, a py-spy record (see hotspots.py).
Part `hub` also runs tests/bench/hub.py (another program holding the write lock) at this load.

`run.py realistic --also-tree DIR=NAME` adds the subjects `store@NAME` and `store@NAME/tls`
right after `store` and `store/tls`: the store of another source tree (`git archive COMMIT |
tar -x -C DIR`), measured the same way, /status included, for a before/after in one run.
"""

import re
import sqlite3
import statistics
import time
from pathlib import Path

import peers
import trustme
import where
from common import (
    BENCH,
    PYTHON,
    Child,
    Exchange,
    Store,
    completeness,
    create_prices,
    figure,
    file_size,
    get_seconds,
    sample_while,
    say,
    stored,
    summary_ms,
    symbol_names,
    tree_state,
    workdir,
)

SYMBOLS = 100
RATE = 2000.0
RECORDERS = ("store", "naive", "cryptofeed", "lean")
# What each recorder reads to know which CAs to trust: the trust check breaks each in turn.
TRUST_READ = {
    "store": ("SSL_CERT_FILE",),  # tickd.rest.tls_context(): ssl.create_default_context()
    "naive": ("SSL_CERT_FILE",),  # websockets: ssl.create_default_context()
    "lean": ("SSL_CERT_FILE",),  # websocket-client: SSLContext.load_default_certs()
    # websockets for the stream; requests (certifi unless told) for exchangeInfo
    "cryptofeed": ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"),
}
TLS = "/tls"
STATUS_UNDER_LOAD: list[float] = []  # seconds per /status request, filled by the store's run
PROFILES: list[str] = []  # py-spy records of the store's run, when asked for


def recorder(subject: str) -> str:
    """`store/tls` -> `store`; `store@NAME` -> `store@NAME`; `naive/tls` -> `naive`."""
    return subject.removesuffix(TLS)


def is_tls(subject: str) -> bool:
    return subject.endswith(TLS)


def is_store(subject: str) -> bool:
    """`store`, or `store@NAME`: the store of another source tree (either over TLS)."""
    return recorder(subject).partition("@")[0] == "store"


def create_tables(db_path: Path, symbols) -> None:
    """The store's tables (its DDL strings), in WAL mode, for a peer to write into."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for symbol in symbols:
            create_prices(conn, symbol)
    finally:
        conn.close()


def subject_process(
    subject: str, folder: Path, exchange: Exchange, symbols, patches=(), *, tree=None, trust=None
):
    """The recorder `subject` as a Child (not started), and its database path. It trusts
    what `trust` says (an environment; default: the exchange's CA if it has TLS)."""
    trust = exchange.trust_env() if trust is None else trust
    if is_store(subject):
        urls = {"BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url}
        store = Store(folder, {**urls, **trust}, patches=patches, tree=tree)
        return store, store.db_path
    db_path = folder / "ticks.db"
    create_tables(db_path, symbols)
    env = {"PYTHONPATH": "", **trust}
    name = recorder(subject)
    script = peers.recorder(f"{name}_recorder", folder)
    if name == "cryptofeed":
        ws_base = exchange.ws_url.removesuffix("/ws")  # ws(s)://host:port/market
        argv = [peers.python(name), script, db_path, ws_base, exchange.rest_url, *symbols]
    else:
        argv = [peers.python(name), script, db_path, exchange.ws_url, *symbols]
    log = folder / f"{name}.log"
    return Child(argv, log, env=env, cwd=folder), db_path


def refuses_other_ca(subject: str, tree: Path | None = None) -> list[str]:
    """Start the TLS recorder `subject` against a TLS exchange, once per variable it reads to
    trust CAs (TRUST_READ), with that one pointing at another CA (made here, never used to
    sign anything); each time it must break off a handshake within 30 s and subscribe nothing.
    Returns OpenSSL's reason for each refusal, as the exchange recorded it; raises if the
    recorder got through (or never tried)."""
    symbols = symbol_names(SYMBOLS)
    reasons = []
    with workdir(f"trust-{recorder(subject)}") as folder, Exchange(folder, SYMBOLS, tls=True) as x:
        other = folder / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        for broken in TRUST_READ[recorder(subject).partition("@")[0]]:
            trust = {**x.trust_env(), broken: str(other)}
            before = len(x.call("tls_refusals"))
            (folder / broken).mkdir()
            proc, _ = subject_process(subject, folder / broken, x, symbols, trust=trust, tree=tree)
            with proc:
                if is_store(subject):
                    proc.enable(symbols)
                deadline = time.monotonic() + 30
                while len(refused := x.call("tls_refusals")) == before:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{subject} with {broken} untrusted: no handshake")
                    time.sleep(0.2)
                subscribed = x.call("state")["subscribed"]
            if subscribed:
                raise RuntimeError(f"{subject} with {broken} untrusted: {subscribed} streams")
            reasons.append(f"{broken}: {refused[before]}")
    return reasons


def measure(
    subject: str,
    window: float,
    *,
    patches=(),
    status_seconds: float = 0.0,
    profile_seconds: float = 0.0,
    where_seconds: float = 0.0,
    rate: float = RATE,
    tree=None,
) -> dict:
    """One subject under the paced load; its figures as a dict. `tree`: a store's source."""
    symbols = symbol_names(SYMBOLS)
    label = subject + (f" +{'+'.join(patches)}" if patches else "")
    with (
        workdir(f"load-{subject.replace('/', '-')}") as folder,
        Exchange(folder, SYMBOLS, tls=is_tls(subject)) as exchange,
    ):
        proc, db_path = subject_process(subject, folder, exchange, symbols, patches, tree=tree)
        with proc:
            if is_store(subject):
                proc.enable(symbols)
            connect = exchange.wait_subscribed(SYMBOLS, 90, proc)
            exchange.call("paced", rate=rate)
            time.sleep(5.0)

            # Ticks per window: rows stored, or, for a variant that stores nothing, ticks made.
            def count():
                if "no_write" in patches:
                    return sum(c[2] for c in exchange.call("counts").values())
                return stored(db_path, symbols)

            rows0, cpu0, disk0, wall0 = count(), proc.cpu(), proc.disk(), time.monotonic()
            wal_path = Path(f"{db_path}-wal")
            samples = sample_while(window, 1.0, lambda: (proc.rss(), file_size(wal_path)))
            rows1, cpu1, disk1, wall1 = count(), proc.cpu(), proc.disk(), time.monotonic()
            if profile_seconds:
                PROFILES.append(peers.py_spy(proc.pid, profile_seconds, folder))
            found = None
            if where_seconds:  # after the window: perf's own cost stays out of its figures
                found = where.probe(proc.pid, where_seconds, folder)
            status = []
            if status_seconds:
                status = sample_while(status_seconds, 0.05, lambda: get_seconds(proc.url()))
                if subject == "store":
                    STATUS_UNDER_LOAD.extend(status)
            exchange.call("paced", rate=0)
            time.sleep(2.0)
            counts = exchange.call("counts")
            deadline = time.monotonic() + (0 if "no_write" in patches else 30)
            while stored(db_path, symbols) < sum(c[2] for c in counts.values()):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            made, kept, wrong = completeness(db_path, symbols, counts)
            refusals = len(exchange.call("tls_refusals"))  # 0: every handshake went through
            if "no_write" in patches:
                kept, wrong = made, 0  # it stores nothing by design: nothing to check
    ticks = rows1 - rows0
    wall = wall1 - wall0
    rss = [s[0] for s in samples]
    wal = [s[1] for s in samples]
    result = {
        "label": label,
        "ticks_per_s": ticks / wall,
        "cpu_share": (cpu1 - cpu0) / wall,
        "us_per_tick": (cpu1 - cpu0) / max(ticks, 1) * 1e6,
        "disk_per_tick": (disk1 - disk0) / max(ticks, 1),  # bytes sent to storage
        "rss_max": max(rss),
        "rss_end": rss[-1],
        "wal_max": max(wal),
        "wal_median": statistics.median(wal),
        "wal_end": wal[-1],
        "made": made,
        "kept": kept,
        "wrong": wrong,
        "connect": connect,
        "status": status,
        "tls_refusals": refusals,
    }
    if found is not None:
        ticks_watched = result["ticks_per_s"] * where_seconds  # the load is paced
        result["where"] = where.per_tick(found, ticks_watched, result["us_per_tick"])
    say(
        f"{label}: {result['ticks_per_s']:.0f} ticks/s, {result['us_per_tick']:.1f} µs/tick, "
        f"{result['cpu_share'] * 100:.1f}% CPU, "
        f"{result['disk_per_tick'] / 1e3:.1f} kB/tick to disk, RSS {result['rss_max']:.1f} MB, "
        f"WAL max {result['wal_max'] / 1e6:.1f} MB, {kept:,}/{made:,} stored, {wrong} tables off"
        + (f", {refusals} TLS handshakes refused" if refusals else "")
    )
    return result


def run(quick: bool, profile: bool = False, trees: dict | None = None, tls: bool = True) -> dict:
    """`trees`: {name: folder} of other source trees whose store runs too, as `store@name`.
    `tls`: each recorder also over TLS, right after its plain run."""
    window = 60.0 if quick else 120.0
    trees = {f"store@{name}": Path(folder) for name, folder in (trees or {}).items()}
    recorders = (RECORDERS[0], *trees, *RECORDERS[1:])
    subjects = tuple(s for r in recorders for s in (r, *((r + TLS,) if tls else ())))
    say(
        f"realistic: {SYMBOLS} symbols, {RATE:g} ticks/s, {window:g} s window per subject: "
        + ", ".join(subjects)
    )
    for subject, folder in trees.items():
        say(f"realistic: {subject} is {tree_state(folder)}")
    results = {}
    for name in ("naive", "cryptofeed", *(("pyspy",) if profile else ())):
        peers.venv(name)  # installed before any load runs
    trusted = {}
    for subject in (s for s in subjects if is_tls(s)):
        try:
            trusted[subject] = refuses_other_ca(subject, trees.get(recorder(subject)))
            say(f"realistic: {subject} refuses another CA ({'; '.join(trusted[subject])})")
        except Exception as exc:
            say(f"realistic: {subject} failed the trust check, not measured: {exc!r}")
    for subject in subjects:
        if is_tls(subject) and subject not in trusted:
            results[subject] = None
            continue
        try:
            results[subject] = measure(
                subject,
                window,
                status_seconds=(5.0 if quick else 20.0) if is_store(subject) else 0.0,
                profile_seconds=(8.0 if quick else 20.0) if subject == "store" and profile else 0,
                tree=trees.get(recorder(subject)),
            )
        except Exception as exc:  # a peer that cannot run is reported, the others still are
            say(f"realistic: {subject} failed: {exc!r}")
            results[subject] = None
    report(subjects, results, trusted)
    return results


def report(subjects, results: dict, trusted: dict) -> None:
    """The figures of the realistic part, and the ratios: each recorder over TLS against
    itself over plain, and each store against every other recorder on the same transport."""
    for subject in subjects:
        r = results[subject]
        if r is None:
            figure(f"realistic {subject}", "failed", "", "see the log above")
            continue
        figure(
            f"realistic {subject}: CPU per stored tick",
            round(r["us_per_tick"], 1),
            "µs",
            f"{r['ticks_per_s']:.0f} ticks/s",
        )
        figure(f"realistic {subject}: CPU share", round(r["cpu_share"] * 100, 1), "% of a core")
        figure(f"realistic {subject}: RSS (max)", round(r["rss_max"], 1), "MB")
        figure(
            f"realistic {subject}: written to disk per tick",
            round(r["disk_per_tick"] / 1e3, 2),
            "kB",
            f"{r['disk_per_tick'] * r['ticks_per_s'] * 86400 / 1e12:.2f} TB a day at this rate",
        )
        figure(
            f"realistic {subject}: WAL size",
            f"max {r['wal_max'] / 1e6:.1f} MB, median {r['wal_median'] / 1e6:.1f} MB",
            "",
            f"end {r['wal_end'] / 1e6:.1f} MB",
        )
        figure(
            f"realistic {subject}: completeness",
            f"{r['kept']:,} of {r['made']:,}",
            "",
            f"{r['wrong']} tables off",
        )
        if is_tls(subject):
            figure(
                f"realistic {subject}: refuses another CA",
                "yes",
                "",
                f"{'; '.join(trusted[subject])}; {r['tls_refusals']} refused under the load",
            )
        if r["status"] and subject != "store":
            figure(f"realistic {subject}: /status under the load", summary_ms(r["status"]))
    for subject in (s for s in subjects if is_tls(s)):
        plain, tls = results[recorder(subject)], results[subject]
        if plain and tls:
            figure(
                f"realistic {recorder(subject)}: CPU per tick, TLS / plain",
                round(tls["us_per_tick"] / plain["us_per_tick"], 2),
                "x",
                f"{tls['us_per_tick'] - plain['us_per_tick']:+.1f} µs per tick",
            )
    for store in (s for s in subjects if is_store(s) and results[s]):
        for peer in subjects:
            if peer == store or is_tls(peer) != is_tls(store) or not results[peer]:
                continue
            ratio = results[store]["us_per_tick"] / results[peer]["us_per_tick"]
            # Issue 20's targets, over TLS: at most 1.0 x cryptofeed and 0.75 x naive.
            goal = {"naive": 0.75, "cryptofeed": 1.0}.get(recorder(peer))
            target = f" (target <= {goal})" if goal and is_tls(peer) else ""
            figure(f"realistic: CPU per tick, {store} / {peer}{target}", round(ratio, 2), "x")
    if STATUS_UNDER_LOAD:
        figure("hub: /status under the realistic load", summary_ms(STATUS_UNDER_LOAD))


HUB_LINE = re.compile(r"variant=(\w+)\s+(.*)")


def hub(quick: bool) -> dict:
    """/status under the realistic load (the store's run of `realistic`, or one of its own),
    and, except with --quick, tests/bench/hub.py at that load (its lock measurement)."""
    if not STATUS_UNDER_LOAD:
        say("hub: /status every 50 ms under the realistic load")
        measure("store", 10.0, status_seconds=10.0 if quick else 20.0)
        figure("hub: /status under the realistic load", summary_ms(STATUS_UNDER_LOAD))
    out = {"status": list(STATUS_UNDER_LOAD)}
    if quick:
        say("hub: lock measurement (tests/bench/hub.py) skipped with --quick")
        return out
    say("hub: tests/bench/hub.py --symbols 100 --rate 2000 --lock 7 (both ways of waiting)")
    with workdir("hub") as folder:
        argv = [PYTHON, BENCH / "hub.py", "--symbols", "100", "--rate", "2000", "--lock", "7"]
        child = Child(argv, folder / "hub.log")
        with child:
            child.proc.wait(timeout=600)
        for line in child.log().splitlines():
            match = HUB_LINE.search(line)
            if not match:
                continue
            fields = dict(pair.split("=", 1) for pair in match[2].split())
            out[match[1]] = fields
            figure(
                f"hub: /status while locked, {match[1]}",
                f"p50 {float(fields['status_p50_ms']):.1f} ms, "
                f"p99 {float(fields['status_p99_ms']):.1f} ms, "
                f"max {float(fields['status_max_ms']):.1f} ms",
                "",
                f"{fields['status_requests']} requests, {fields['disconnects']} disconnections, "
                f"{fields['cpu_us_per_tick']} µs/tick",
            )
    return out
