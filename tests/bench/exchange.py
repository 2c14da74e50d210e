"""The bench's exchange: tickd's fake Binance with a tape that keeps nothing, driven over HTTP.

    PYTHONPATH=. .venv/bin/python tests/bench/exchange.py --count 100 [--weight-limit 2400]
        [--tls --ca-file PATH]

A `tickd.fakebinance.FakeBinance` (its websocket handshakes, raw and combined streams, pings,
close handshake, firehose and REST weight accounting) in its own process, so that it and the
recorder under test each get a core. What the bench gives it:

- `Counter`, its tape: trades made from counters, not recorded. A trade's price is a function of
  its id, so REST can serve any id that exists without keeping history (`GET
  /fapi/v1/aggTrades`);
- firehose mode (`FakeBinance.firehose`): each raw-stream connection's writer makes trades for
  its symbol as fast as the socket takes them (TCP back-pressure paces it), 32 frames per
  `sendall`;
- paced mode: Poisson arrivals at `rate` trades/s in all, each on a symbol drawn at random
  (`skew`, `shift`: the k-th symbol with weight (k + shift) ** -skew, as `market.py` does);
- a control API under `/bench/` (`FakeBinance(routes=...)`): `state`, `counts` (first id, last
  id and count per symbol), `firehose?on=1|0`, `paced?rate=R[&skew=S&shift=Q]` (0 stops),
  `probes?symbols=A,B` and `sent` (the send time of every frame of the probe symbols, for
  latency), `skip?symbol=S&n=N` (N ids that exist in history but are never streamed: a gap
  to repair), `rest_calls`, `tls_refusals` (OpenSSL's reason for every TLS handshake a
  client broke off).

With --tls, everything (streams, REST, the control API) is served over TLS, as the fake does it
(`FakeBinance(tls=True)`): a certificate for 127.0.0.1 signed by a CA made at start, whose
certificate is written to --ca-file for the clients to trust (SSL_CERT_FILE).

Frames are byte for byte the raw aggTrade format of Binance USD-M futures (the fields of
`shared/fixtures/ws_aggtrade_envelope.jsonl`): `T` is the wall-clock time the trade is made. The
combined-stream route `/market/stream?streams=a@aggTrade/b@aggTrade` (cryptofeed uses it) wraps
them in Binance's envelope `{"stream":..,"data":..}`.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from decimal import Decimal  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402

from tickd.fakebinance import FakeBinance, price_text  # noqa: E402

FIRST_ID = 6_512_345_679  # ids of this size take 5 bytes in a rowid varint, as Binance's do
SEND_BUFFER = 32 * 1024  # bytes

RAW = (
    '{"e":"aggTrade","E":%d,"a":%d,"s":"%s","p":"%s","q":"0.010","nq":"0.010",'
    '"f":%d,"l":%d,"T":%d,"m":%s,"st":1}'
)


def price_of(trade_id: int, base: int) -> str:
    """A price in steps of 0.10 around `base` cents, as a function of the id: `83091.70`."""
    cents = base + 10 * (((trade_id * 2654435761) >> 8) % 401 - 200)
    return f"{cents // 100}.{cents % 100:02d}"


class Counter:
    """One symbol's tape (`tickd.fakebinance.Tape`): ids first_id .. next_id - 1 exist, each
    priced around the listing price as a function of its id; nothing is kept."""

    __slots__ = ("base", "first_id", "next_id", "symbol", "t0")

    def __init__(self, symbol: str, first_id: int, listed_at: str, t0: int):
        self.symbol = symbol
        self.first_id = self.next_id = first_id
        self.base = round(Decimal(listed_at) * 100)  # in cents
        self.t0 = t0  # REST's time of the first id, in ms

    def add(self, rng: random.Random, time_ms: int, price: str | None) -> bytes:
        i = self.next_id
        self.next_id = i + 1
        maker = "true" if i & 1 else "false"
        frame = (time_ms + 3, i, self.symbol, price_of(i, self.base), 2 * i, 2 * i, time_ms, maker)
        return (RAW % frame).encode()

    def page(self, from_id: int | None, limit: int, oldest: int | None) -> bytes:
        if from_id is None:
            start = max(self.next_id - limit, self.first_id)
        else:
            start = max(from_id, self.first_id)
        rows = [
            {
                "a": i,
                "p": price_of(i, self.base),
                "q": "0.010",
                "nq": "0.010",
                "f": 2 * i,
                "l": 2 * i,
                "T": self.t0 + (i - self.first_id) * 37 // 10,
                "m": bool(i & 1),
            }
            for i in range(start, min(start + limit, self.next_id))
        ]
        return json.dumps(rows, separators=(",", ":")).encode()


class Bench:
    """The fake exchange with a `Counter` per symbol, its paced market and the control API."""

    def __init__(
        self, symbols, *, host="127.0.0.1", port=0, weight_limit=2400, tls=False, ca_file=None
    ):
        t0 = int(time.time() * 1000) - 3_600_000
        self.tapes: dict[str, Counter] = {}

        def tape(symbol: str, first_id: int, listed_at: str) -> Counter:
            self.tapes[symbol] = Counter(symbol, first_id, listed_at, t0)
            return self.tapes[symbol]

        actions = (
            "state",
            "counts",
            "firehose",
            "paced",
            "probes",
            "sent",
            "skip",
            "rest_calls",
            "tls_refusals",
        )
        self.fake = FakeBinance(
            host,
            port,
            weight_limit=weight_limit,
            # A fixed send buffer (autotuning would grow it to megabytes) keeps what the
            # firehose has queued ahead of the reader small, so the store catches up within
            # seconds.
            send_buffer=SEND_BUFFER,
            tape=tape,
            routes={f"/bench/{action}": getattr(self, action) for action in actions},
            tls=tls,
            ca_file=ca_file,
        )
        for i, symbol in enumerate(symbols):
            base = 8_309_170 + i * 1000
            self.fake.list_symbol(
                symbol, first_id=FIRST_ID + i * 100_000_000, price=price_text(base, 2)
            )
        self._paced = gevent.pool.Group()

    def start(self) -> None:
        self.fake.start()

    def stop(self) -> None:
        self._paced.kill()
        self.fake.stop()

    def run_paced(self, rate: float, skew: float = 0.0, shift: float = 0.0) -> None:
        """Trades at Poisson times, `rate` a second in all; symbol k (from 1, in the order
        given) drawn with weight (k + shift) ** -skew (skew 0: all alike)."""
        rng = random.Random(1)
        symbols = list(self.tapes)
        weights = list(
            itertools.accumulate((k + shift) ** -skew for k in range(1, len(symbols) + 1))
        )
        due = time.monotonic()
        for n in itertools.count():
            due += rng.expovariate(rate)
            delay = due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            elif n % 64 == 0:
                gevent.sleep(0)  # behind: still let the connections and REST run
            self.fake.trade(rng.choices(symbols, cum_weights=weights)[0])

    # -- the control API: each takes the query parameters and returns what is answered as JSON

    def state(self, query: dict) -> dict:
        subscribed = sum(1 for symbol in self.tapes if self.fake.connections(symbol))
        return {"conns": len(self.fake.subscriptions()), "subscribed": subscribed}

    def counts(self, query: dict) -> dict:
        return {
            s: [t.first_id, t.next_id - 1, t.next_id - t.first_id] for s, t in self.tapes.items()
        }

    def firehose(self, query: dict) -> dict:
        self.fake.firehose(query.get("on") == "1")
        return {"ok": True}

    def paced(self, query: dict) -> dict:
        self._paced.kill()
        rate = float(query.get("rate", "0"))
        skew, shift = float(query.get("skew", "0")), float(query.get("shift", "0"))
        if rate > 0:
            self._paced.spawn(self.run_paced, rate, skew, shift)
        return {"ok": True}

    def probes(self, query: dict) -> dict:
        self.fake.watch_sends(filter(None, query.get("symbols", "").split(",")))
        return {"ok": True}

    def sent(self, query: dict) -> list:
        return self.fake.sends()

    def skip(self, query: dict) -> dict:
        self.fake.skip_ids(query["symbol"], int(query["n"]))  # streamed never, served by REST
        return {"ok": True}

    def rest_calls(self, query: dict) -> int:
        return len(self.fake.rest_calls())

    def tls_refusals(self, query: dict) -> list:
        return [reason for _, reason in self.fake.tls_refusals()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100, help="symbols S0000USDT...")
    parser.add_argument("--symbols", default="", help="comma-separated names instead")
    parser.add_argument("--weight-limit", type=int, default=2400)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="serve wss:// and https:// only")
    parser.add_argument("--ca-file", help="with --tls: where to write the CA's certificate")
    args = parser.parse_args()
    symbols = [s for s in args.symbols.split(",") if s] or [
        f"S{i:04d}USDT" for i in range(args.count)
    ]
    stop = gevent.event.Event()
    bench = Bench(
        symbols, port=args.port, weight_limit=args.weight_limit, tls=args.tls, ca_file=args.ca_file
    )
    bench.start()
    try:
        trust = f" ca_file={bench.fake.ca_file}" if args.tls else ""
        print(f"listening port={bench.fake.port}{trust}", flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, stop.set)
        stop.wait()
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
