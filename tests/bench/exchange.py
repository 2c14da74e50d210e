"""The bench's exchange: tickd's fake Binance, made cheap per trade and driven over HTTP.

    PYTHONPATH=. .venv/bin/python tests/bench/exchange.py --count 100 [--weight-limit 2400]

A subclass of `tickd.fakebinance.FakeBinance` (its websocket handshakes, routes, pings, close
handshake and REST weight accounting are reused) that runs in its own process, so that it and
the recorder under test each get a core. What it adds:

- trades made from counters, not recorded: a trade's price is a function of its id, so REST
  can serve any id that exists without keeping history (`GET /fapi/v1/aggTrades`);
- firehose mode: each raw-stream connection's writer makes trades for its symbol as fast as the
  socket takes them (TCP back-pressure paces it), 32 frames per `sendall`;
- paced mode: Poisson arrivals at `rate` trades/s in all, each on a symbol drawn at random;
- the combined-stream route `/market/stream?streams=a@aggTrade/b@aggTrade` with Binance's
  envelope `{"stream":..,"data":..}` (cryptofeed uses it), and `/fapi/v1/exchangeInfo`;
- a control API under `/bench/`: `state`, `counts` (first id, last id and count per symbol),
  `firehose?on=1|0`, `paced?rate=R` (0 stops), `probes?symbols=A,B` and `sent` (the send time
  of every frame of the probe symbols, for latency), `skip?symbol=S&n=N` (N ids that exist in
  history but are never streamed: a gap to repair).

Frames are byte for byte the raw aggTrade format of Binance USD-M futures (the fields of
`shared/fixtures/ws_aggtrade_envelope.jsonl`): `T` is the wall-clock time the trade is made.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import parse_qsl  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.queue  # noqa: E402

from tickd.fakebinance import (  # noqa: E402
    _DROP,
    CLOSE,
    FakeBinance,
    _Conn,
    _json,
    _shutdown,
    _status_line,
    _wsgi_text,
    encode_frame,
    lower_ascii,
    split_ws_path,
    stream_name,
)

FIRST_ID = 6_512_345_679  # ids of this size take 5 bytes in a rowid varint, as Binance's do
COMBINED = "/market/stream"
BURST = 32  # frames per sendall in firehose mode
SEND_BUFFER = 32 * 1024  # bytes
_FRAME = 100  # outbox item: a whole encoded frame, and the probe it carries (or None)
_WAKE = 101  # outbox item: look at the mode again

RAW = (
    '{"e":"aggTrade","E":%d,"a":%d,"s":"%s","p":"%s","q":"0.010","nq":"0.010",'
    '"f":%d,"l":%d,"T":%d,"m":%s,"st":1}'
)
ENVELOPE = '{"stream":"%s","data":%s}'


def header(length: int) -> bytes:
    """A server's header of one final text frame of `length` bytes."""
    if length < 126:
        return bytes((0x81, length))
    return b"\x81\x7e" + length.to_bytes(2, "big")


def price(trade_id: int, base: int) -> str:
    """A price in steps of 0.10 around `base` cents, as a function of the id: `83091.70`."""
    cents = base + 10 * (((trade_id * 2654435761) >> 8) % 401 - 200)
    return f"{cents // 100}.{cents % 100:02d}"


class Book:
    """One symbol's trade counter: ids first_id .. next_id - 1 exist."""

    __slots__ = ("base", "first_id", "next_id", "stream", "symbol")

    def __init__(self, symbol: str, first_id: int, base: int):
        self.symbol = symbol
        self.stream = stream_name(symbol)
        self.first_id = first_id
        self.next_id = first_id
        self.base = base


class _BenchConn(_Conn):
    __slots__ = ("envelope", "symbols")


class BenchExchange(FakeBinance):
    def __init__(self, symbols, *, host="127.0.0.1", port=0, weight_limit=2400):
        super().__init__(host, port, weight_limit=weight_limit)
        self.books: dict[str, Book] = {}
        self._by_stream: dict[str, str] = {}
        for i, symbol in enumerate(symbols):
            self.list_symbol(symbol)  # the parent's ping loop serves listed streams only
            self.books[symbol] = Book(symbol, FIRST_ID + i * 100_000_000, 8_309_170 + i * 1000)
            self._by_stream[stream_name(symbol)] = symbol
        self._subs: dict[str, list[_BenchConn]] = {s: [] for s in self.books}
        self.firehose = False
        self._paced = gevent.pool.Group()
        self.probes: set[str] = set()
        self.sent: list[tuple[str, int, float]] = []
        self._t0 = int(time.time() * 1000) - 3_600_000

    # -- making trades

    def _payload(self, book: Book, now_ms: int) -> str:
        i = book.next_id
        book.next_id = i + 1
        return RAW % (
            now_ms + 3,
            i,
            book.symbol,
            price(i, book.base),
            2 * i,
            2 * i,
            now_ms,
            "true" if i & 1 else "false",
        )

    def _burst(self, book: Book) -> bytes:
        now_ms = int(time.time() * 1000)
        parts = []
        for _ in range(BURST):
            payload = self._payload(book, now_ms).encode()
            parts.append(header(len(payload)))
            parts.append(payload)
        return b"".join(parts)

    def emit(self, symbol: str) -> None:
        """Make one trade of `symbol` and queue it to every connection that streams it."""
        book = self.books[symbol]
        trade_id = book.next_id
        raw = self._payload(book, int(time.time() * 1000))
        probe = (symbol, trade_id) if symbol in self.probes else None
        for conn in self._subs[symbol]:
            if conn.closing:
                continue
            text = (ENVELOPE % (book.stream, raw) if conn.envelope else raw).encode()
            conn.outbox.put((_FRAME, (header(len(text)) + text, probe)))

    def run_paced(self, rate: float) -> None:
        rng = random.Random(1)
        symbols = list(self.books)
        due = time.monotonic()
        while True:
            due += rng.expovariate(rate)
            delay = due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            self.emit(symbols[rng.randrange(len(symbols))])

    def set_firehose(self, on: bool) -> None:
        self.firehose = on
        for conns in self._subs.values():
            for conn in conns:
                conn.outbox.put((_WAKE, None))

    # -- serving

    def _before_upgrade(self, handler) -> bool:
        environ = handler.environ
        upgrade = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if upgrade and _wsgi_text(environ.get("PATH_INFO", "")) == COMBINED:
            return False
        return super()._before_upgrade(handler)

    def _serve(self, ws, path: str) -> None:
        if path == COMBINED:
            query = dict(parse_qsl(_wsgi_text(ws.environ.get("QUERY_STRING", ""))))
            wanted = query.get("streams", "").split("/")
            symbols = [self._by_stream[s] for s in wanted if s in self._by_stream]
            conn = _BenchConn(path, None, ws.handler.socket)
            conn.envelope = True
        else:
            route, stream = split_ws_path(path) or ("", "")
            symbol = self._by_stream.get(stream) if route == "/market/ws/" else None
            symbols = [symbol] if symbol else []
            conn = _BenchConn(path, stream if symbol else None, ws.handler.socket)
            conn.envelope = False
        conn.symbols = symbols
        # A fixed send buffer (autotuning would grow it to megabytes) keeps what the firehose
        # has queued ahead of the reader small, so the store catches up within seconds.
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._conns.append(conn)
        for symbol in symbols:
            self._subs[symbol].append(conn)
        writer = self._workers.spawn(self._write_loop, conn)
        try:
            self._read_loop(ws, conn)
        finally:
            self._conns.remove(conn)
            for symbol in symbols:
                self._subs[symbol].remove(conn)
            writer.kill()
            _shutdown(conn.sock)

    def _write_loop(self, conn: _BenchConn) -> None:
        next_ping = time.monotonic() + self._ping_interval
        single = self.books[conn.symbols[0]] if len(conn.symbols) == 1 else None
        try:
            while True:
                if self.firehose and single is not None and not conn.envelope:
                    conn.sock.sendall(self._burst(single))
                    continue
                wait = max(0.0, next_ping - time.monotonic())
                try:
                    opcode, payload = conn.outbox.get(timeout=wait)
                except gevent.queue.Empty:
                    next_ping = time.monotonic() + self._ping_interval
                    self._ping(conn)
                    continue
                if opcode == _WAKE:
                    continue
                if opcode == _FRAME:
                    data, probe = payload
                    if probe is not None:
                        self.sent.append((*probe, time.time()))
                    conn.sock.sendall(data)
                    continue
                if opcode == _DROP:
                    return
                conn.sock.sendall(encode_frame(opcode, payload))
                if opcode == CLOSE:
                    conn.peer_closed.wait(timeout=2.0)
                    return
        except OSError:
            return
        finally:
            _shutdown(conn.sock)

    def _app(self, environ, start_response):
        path = _wsgi_text(environ.get("PATH_INFO", ""))
        if environ.get("wsgi.websocket") is None:
            query = dict(parse_qsl(_wsgi_text(environ.get("QUERY_STRING", ""))))
            body = None
            if path.startswith("/bench/"):
                body = _json(self._control(path[len("/bench/") :], query))
            elif path == "/fapi/v1/exchangeInfo":
                body = _json({"symbols": [_info(s) for s in self.books]})
            if body is not None:
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                start_response(_status_line(200), headers)
                return [body]
        return super()._app(environ, start_response)

    def _control(self, action: str, query: dict):
        if action == "state":
            subscribed = sum(1 for conns in self._subs.values() if conns)
            return {"conns": len(self._conns), "subscribed": subscribed}
        if action == "counts":
            return {
                s: [b.first_id, b.next_id - 1, b.next_id - b.first_id]
                for s, b in self.books.items()
            }
        if action == "firehose":
            self.set_firehose(query.get("on") == "1")
        elif action == "paced":
            self._paced.kill()
            rate = float(query.get("rate", "0"))
            if rate > 0:
                self._paced.spawn(self.run_paced, rate)
        elif action == "probes":
            self.probes = set(filter(None, query.get("symbols", "").split(",")))
        elif action == "sent":
            sent, self.sent = self.sent, []
            return sent
        elif action == "skip":
            self.books[query["symbol"]].next_id += int(query["n"])
        elif action == "rest_calls":
            return len(self._rest_calls)
        return {"ok": True}

    def _agg_trades(self, query: dict[str, str]) -> tuple[int, bytes]:
        wanted = lower_ascii(query.get("symbol", ""))
        book = next((b for s, b in self.books.items() if lower_ascii(s) == wanted), None)
        if book is None:
            return 400, _json({"code": -1121, "msg": "Invalid symbol."})
        limit = int(query.get("limit", 500))
        if "fromId" in query:
            start = max(int(query["fromId"]), book.first_id)
        else:
            start = max(book.next_id - limit, book.first_id)
        stop = min(start + limit, book.next_id)
        rows = [
            {
                "a": i,
                "p": price(i, book.base),
                "q": "0.010",
                "nq": "0.010",
                "f": 2 * i,
                "l": 2 * i,
                "T": self._t0 + (i - book.first_id) * 37 // 10,
                "m": bool(i & 1),
            }
            for i in range(start, stop)
        ]
        return 200, _json(rows)


def _info(symbol: str) -> dict:
    return {
        "symbol": symbol,
        "pair": symbol,
        "contractType": "PERPETUAL",
        "status": "TRADING",
        "baseAsset": symbol.removesuffix("USDT"),
        "quoteAsset": "USDT",
        "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.10"}],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100, help="symbols S0000USDT...")
    parser.add_argument("--symbols", default="", help="comma-separated names instead")
    parser.add_argument("--weight-limit", type=int, default=2400)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    symbols = [s for s in args.symbols.split(",") if s] or [
        f"S{i:04d}USDT" for i in range(args.count)
    ]
    stop = gevent.event.Event()
    exchange = BenchExchange(symbols, port=args.port, weight_limit=args.weight_limit)
    exchange.start()
    try:
        print(f"listening port={exchange.port}", flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, stop.set)
        stop.wait()
    finally:
        exchange._paced.kill()
        exchange.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
