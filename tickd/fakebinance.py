"""A fake Binance USD-M futures exchange (aggTrade raw streams and REST) with faults on demand."""

import argparse
import bisect
import contextlib
import json
import math
import random
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, WebSocket

FIRST_ID = 3_477_868_433
WEIGHT_PER_CALL = 20
BAN_SECONDS = 120
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
CLOSE_WAIT = 2.0  # seconds we wait for the client's answer to our close frame
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_DROP = -1  # outbox marker: cut the TCP connection without a close frame
_REFUSED = "fakebinance.refused"  # environ key: answer this handshake with an HTTP error
_REST_FIELDS = ("a", "p", "q", "nq", "f", "l", "T", "m")


def lower_ascii(text: str) -> str:
    """Lower-case the ASCII letters only, as Binance does for stream names."""
    return "".join(c.lower() if c.isascii() else c for c in text)


def stream_name(symbol: str) -> str:
    """The raw stream of a symbol's aggregate trades: `币安人生USDT` -> `币安人生usdt@aggTrade`."""
    return lower_ascii(symbol) + "@aggTrade"


def split_ws_path(path: str) -> tuple[str, str] | None:
    """Split a websocket path into (route, stream name), or None if it is no stream route."""
    for route in ("/market/ws/", "/ws/"):
        if path.startswith(route) and len(path) > len(route):
            return route, path[len(route) :]
    return None


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final websocket frame, as a server sends it."""
    return bytes(Header.encode_header(True, opcode, b"", len(payload), 0)) + payload


def _wsgi_text(value: str) -> str:
    """Undo WSGI's latin-1 decoding of a path or query string that was UTF-8 on the wire."""
    return value.encode("latin-1").decode("utf-8", "replace")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


@dataclass(slots=True)
class _Market:
    """One listed symbol: its id counters, its price walk and every trade made."""

    next_id: int
    price: Decimal
    next_fill: int
    ids: list[int] = field(default_factory=list)
    trades: list[dict] = field(default_factory=list)


class _Conn:
    """One open websocket; only its writer greenlet writes to the socket."""

    __slots__ = ("closing", "outbox", "path", "peer_closed", "sock", "stalled", "stream")

    def __init__(self, path: str, stream: str | None, sock: socket.socket) -> None:
        self.path = path
        self.stream = stream  # None on a dead route: such a socket never gets anything
        self.sock = sock
        self.outbox: gevent.queue.Queue = gevent.queue.Queue()
        self.stalled = False
        self.closing = False  # a close frame or a drop is on its way
        self.peer_closed = gevent.event.Event()


class _Weight:
    """Binance's request weight per clock minute: 429 over the limit, a 418 ban for ignoring it."""

    __slots__ = ("banned_until", "limit", "minute", "used", "warned_minute")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.minute = self.warned_minute = -1
        self.used = 0
        self.banned_until = 0.0

    def charge(self, now: float) -> int:
        """Count one call at `now`; return the weight used in this minute."""
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0
        self.used += WEIGHT_PER_CALL
        return self.used

    def verdict(self, now: float) -> tuple[int, int | None]:
        """(HTTP status, Retry-After seconds) for the call just charged."""
        if now < self.banned_until:
            return 418, math.ceil(self.banned_until - now)
        if self.used <= self.limit:
            return 200, None
        if self.warned_minute == self.minute:
            self.banned_until = now + BAN_SECONDS
            return 418, BAN_SECONDS
        self.warned_minute = self.minute
        return 429, math.ceil((self.minute + 1) * 60 - now)


class FakeBinance:
    """A fake exchange on a local port; everything runs in greenlets that `stop()` kills."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ping_interval: float = 180.0,
        retention: int | None = None,
        weight_limit: int = 2400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._address = (host, port)
        self._ping_interval = ping_interval
        self._retention = retention  # how many of the most recent ids REST still serves
        self._clock = clock
        self._rng = random.Random(0)  # noqa: S311 - a reproducible market, not cryptography
        self._server: WSGIServer | None = None
        self._workers = gevent.pool.Group()  # one writer per websocket
        self._market = gevent.pool.Group()  # trade generators of run_market()
        self._markets: dict[str, _Market] = {}
        self._streams: set[str] = set()  # streams of the listed symbols
        self._conns: list[_Conn] = []
        self._pongs: dict[str, int] = {}  # stream name -> pongs received
        self._handshakes: list[tuple[float, str]] = []
        self._refusals: list[int] = []
        self._weight = _Weight(weight_limit)
        self._rest_faults: list[tuple[int, int | None]] = []
        self._rest_calls: list[tuple[float, dict[str, str]]] = []

    # -- life cycle

    def start(self) -> None:
        """Bind (port 0 picks a free port) and serve in the background; returns once listening."""
        server = WSGIServer(
            self._address,
            self._app,
            handler_class=WebSocketHandler,
            spawn=gevent.pool.Pool(),
            log=None,
        )
        server.pre_start_hook = self._before_upgrade
        server.start()
        self._server = server

    def stop(self) -> None:
        """Cut every websocket, stop the server and kill every greenlet of the fake; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stop_market()
        for conn in list(self._conns):
            _shutdown(conn.sock)
        server.stop(timeout=1)
        self._workers.kill(timeout=1)

    def __enter__(self) -> "FakeBinance":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeBinance is not started")
        return self._server.server_port

    @property
    def ws_url(self) -> str:
        """Base of the raw streams; a client appends `/<stream>`."""
        return f"ws://{self._address[0]}:{self.port}/market/ws"

    @property
    def rest_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    # -- the market

    def list_symbol(
        self, symbol: str, *, first_id: int | None = None, price: str = "100.00"
    ) -> None:
        """Make `symbol` exist, stored exactly as given; listing it again changes nothing."""
        if symbol in self._markets:
            return
        if first_id is None:
            first_id = FIRST_ID + 1_000_000 * len(self._markets)
        self._markets[symbol] = _Market(first_id, Decimal(price), next_fill=2 * first_id)
        self._streams.add(stream_name(symbol))

    def trade(self, symbol: str, *, price: str | None = None, time_ms: int | None = None) -> dict:
        """Make the symbol's next aggregate trade, record it and queue it to its streams."""
        self.list_symbol(symbol)
        market, rng = self._markets[symbol], self._rng
        if price is None:
            unit = Decimal(1).scaleb(market.price.as_tuple().exponent)
            market.price = max(market.price + rng.randint(-5, 5) * unit, unit)
            price = format(market.price, "f")
        else:
            market.price = Decimal(price)
        t = int(self._clock() * 1000) if time_ms is None else time_ms
        qty = format(Decimal(rng.randint(1, 50)).scaleb(-3), "f")
        fills = rng.randint(1, 3)
        trade = {
            "e": "aggTrade",
            "E": t + rng.randint(5, 200),
            "a": market.next_id,
            "s": symbol,
            "p": price,
            "q": qty,
            "nq": qty,
            "f": market.next_fill,
            "l": market.next_fill + fills - 1,
            "T": t,
            "m": rng.random() < 0.5,
            "st": 1,
        }
        market.next_id += 1
        market.next_fill += fills
        market.ids.append(trade["a"])
        market.trades.append(trade)
        payload = _json(trade)
        for conn in self._conns_of(symbol):
            if not conn.stalled:
                conn.outbox.put((TEXT, payload))
        return dict(trade)

    def skip_ids(self, symbol: str, n: int) -> None:
        """Leave a hole of `n` ids in the symbol's history, as Binance's own history has."""
        self.list_symbol(symbol)
        self._markets[symbol].next_id += n

    def history(self, symbol: str) -> list[dict]:
        """Every trade made for the symbol, oldest first (the fake's own dicts: do not mutate)."""
        market = self._markets.get(symbol)
        return list(market.trades) if market else []

    def run_market(self, symbols: Iterable[str], rate: float) -> None:
        """Trade the symbols at `rate` trades per second in all (Poisson), until stop_market()."""
        symbols = list(symbols)
        for symbol in symbols:
            self.list_symbol(symbol)
            self._market.spawn(self._trade_forever, symbol, rate / len(symbols))

    def stop_market(self) -> None:
        self._market.kill(timeout=1)

    def _trade_forever(self, symbol: str, rate: float) -> None:
        while True:
            self.trade(symbol)
            gevent.sleep(self._rng.expovariate(rate))

    # -- observations

    def connections(self, symbol: str) -> int:
        """Open websockets on the symbol's stream, not counting those being closed or dropped."""
        return len(self._conns_of(symbol))

    def subscriptions(self) -> list[str]:
        """Paths of every open websocket, served or silent, oldest first."""
        return [conn.path for conn in self._conns]

    def handshakes(self) -> list[tuple[float, str]]:
        """(clock time, decoded path) of every websocket handshake, accepted or refused."""
        return list(self._handshakes)

    def pongs(self, symbol: str) -> int:
        """Pongs received on the symbol's connections, closed ones included."""
        return self._pongs.get(stream_name(symbol), 0)

    def rest_calls(self) -> list[tuple[float, dict[str, str]]]:
        """(clock time, query parameters) of every REST call, answered or not."""
        return list(self._rest_calls)

    # -- faults; each acts on every open connection of the symbol's stream

    def drop(self, symbol: str) -> None:
        """Cut the TCP connections without a close frame, after the frames already queued."""
        self._post_last(symbol, _DROP, b"")

    def close(self, symbol: str, code: int = 1001, reason: str = "") -> None:
        """Send a close frame with `code` after the frames already queued, then hang up."""
        self._post_last(symbol, CLOSE, code.to_bytes(2, "big") + reason.encode())

    def stall(self, symbol: str, on: bool = True) -> None:
        """Keep the sockets open but send no trade, ping or pong on them while on."""
        for conn in self._conns_of(symbol):
            conn.stalled = on

    def send_raw(self, symbol: str, data: str | bytes, *, binary: bool = False) -> None:
        """Send a text (or binary) frame of any payload, even invalid UTF-8; stalled or not."""
        payload = data.encode() if isinstance(data, str) else data
        for conn in self._conns_of(symbol):
            conn.outbox.put((BINARY if binary else TEXT, payload))

    def refuse_handshakes(self, count: int, status: int = 503) -> None:
        """Answer the next `count` websocket handshakes with HTTP `status` instead of an upgrade."""
        self._refusals.extend([status] * count)

    def rest_fault(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        """Answer the next `count` REST calls with HTTP `status` (and Retry-After if given)."""
        self._rest_faults.extend([(status, retry_after)] * count)

    def _conns_of(self, symbol: str) -> list[_Conn]:
        stream = stream_name(symbol)
        return [c for c in self._conns if c.stream == stream and not c.closing]

    def _post_last(self, symbol: str, opcode: int, payload: bytes) -> None:
        for conn in self._conns_of(symbol):
            conn.closing = True
            conn.outbox.put((opcode, payload))

    # -- HTTP and websocket serving

    def _before_upgrade(self, handler: WebSocketHandler) -> bool:
        """gevent-websocket's pre-start hook: True skips the upgrade and calls the WSGI app."""
        environ = handler.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return True
        path = _wsgi_text(environ.get("PATH_INFO", ""))
        self._handshakes.append((self._clock(), path))
        if self._refusals:
            environ[_REFUSED] = self._refusals.pop(0)
            return True
        return split_ws_path(path) is None

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = _wsgi_text(environ.get("PATH_INFO", ""))
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            self._serve(ws, path)
            return []
        headers: list[tuple[str, str]] = []
        if _REFUSED in environ:
            status, body = environ[_REFUSED], b""
        elif path == "/fapi/v1/aggTrades":
            status, headers, body = self._rest(_wsgi_text(environ.get("QUERY_STRING", "")))
        else:
            status, body = 404, b""
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(_status_line(status), headers)
        return [body]

    def _serve(self, ws: WebSocket, path: str) -> None:
        route, stream = split_ws_path(path) or ("", "")
        conn = _Conn(path, stream if route == "/market/ws/" else None, ws.handler.socket)
        self._conns.append(conn)
        writer = self._workers.spawn(self._write_loop, conn)
        try:
            self._read_loop(ws, conn)
        finally:
            self._conns.remove(conn)
            writer.kill()
            _shutdown(conn.sock)  # also makes gevent-websocket's own closing frame fail quietly

    def _read_loop(self, ws: WebSocket, conn: _Conn) -> None:
        """Read control frames until the client is gone; client messages are ignored."""
        while True:
            try:
                header, payload = ws.read_frame()
            except OSError:  # EOF, reset or a protocol error (WebSocketError is an OSError)
                return
            if header.opcode == PONG and conn.stream is not None:
                self._pongs[conn.stream] = self._pongs.get(conn.stream, 0) + 1
            elif header.opcode == PING and not conn.stalled:
                conn.outbox.put((PONG, payload))
            elif header.opcode == CLOSE:
                if not conn.closing:
                    conn.closing = True
                    conn.outbox.put((CLOSE, payload[:2]))  # echo the client's code
                conn.peer_closed.set()

    def _ping(self, conn: _Conn) -> None:
        """A ping like Binance's (payload: the time in ms), unless the socket is silent."""
        if conn.stream in self._streams and not conn.stalled:
            conn.sock.sendall(encode_frame(PING, str(int(self._clock() * 1000)).encode()))

    def _write_loop(self, conn: _Conn) -> None:
        """Send what the outbox holds, and a ping every ping_interval; hang up at the end."""
        next_ping = time.monotonic() + self._ping_interval
        try:
            while True:
                wait = max(0.0, next_ping - time.monotonic())
                try:
                    opcode, payload = conn.outbox.get(timeout=wait)
                except gevent.queue.Empty:
                    next_ping = time.monotonic() + self._ping_interval
                    self._ping(conn)
                    continue
                if opcode == _DROP:
                    return
                conn.sock.sendall(encode_frame(opcode, payload))
                if opcode == CLOSE:
                    conn.peer_closed.wait(timeout=CLOSE_WAIT)
                    return
        except OSError:
            return
        finally:
            _shutdown(conn.sock)

    def _rest(self, query_string: str) -> tuple[int, list[tuple[str, str]], bytes]:
        now = self._clock()
        query = dict(parse_qsl(query_string))
        self._rest_calls.append((now, query))
        used = self._weight.charge(now)
        if self._rest_faults:
            status, retry_after = self._rest_faults.pop(0)
        else:
            status, retry_after = self._weight.verdict(now)
        headers = [("X-MBX-USED-WEIGHT-1M", str(used))]
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        if status == 200:
            status, body = self._agg_trades(query)
        elif status == 429:
            msg = f"Too many requests; current limit is {self._weight.limit} weight per minute."
            body = _json({"code": -1003, "msg": msg})
        elif status == 418:
            until = int((now + (retry_after or BAN_SECONDS)) * 1000)
            body = _json({"code": -1003, "msg": f"Way too many requests; IP banned until {until}."})
        else:
            body = _json({"code": -1000, "msg": "An unknown error occurred."})
        return status, headers, body

    def _agg_trades(self, query: dict[str, str]) -> tuple[int, bytes]:
        """GET /fapi/v1/aggTrades: oldest first from `fromId` inclusive, else the latest `limit`."""
        wanted = lower_ascii(query.get("symbol", ""))
        market = next((m for s, m in self._markets.items() if lower_ascii(s) == wanted), None)
        if market is None:
            return 400, _json({"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            from_id = int(query["fromId"]) if "fromId" in query else None
        except ValueError:
            return 400, _json({"code": -1100, "msg": "Illegal characters found in a parameter."})
        if not 1 <= limit <= MAX_LIMIT:
            msg = "Data sent for parameter 'limit' is not valid."
            return 400, _json({"code": -1130, "msg": msg})
        oldest = market.next_id - self._retention if self._retention is not None else None
        if from_id is None:
            start = max(len(market.ids) - limit, bisect.bisect_left(market.ids, oldest or 0))
        elif oldest is not None and from_id < oldest:
            msg = "Search window is restricted to recent 2 days only."
            return 400, _json({"code": -4166, "msg": msg})
        else:
            start = bisect.bisect_left(market.ids, from_id)
        rows = [{k: t[k] for k in _REST_FIELDS} for t in market.trades[start : start + limit]]
        return 200, _json(rows)


def main(argv: list[str] | None = None) -> int:
    """Serve a fake exchange with a random market until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tickd.fakebinance", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="trades per second in all")
    args = parser.parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    stopping = gevent.event.Event()
    with FakeBinance(args.host, args.port) as fake:
        fake.run_market(symbols, args.rate)
        print(f"BINANCE_WS_URL={fake.ws_url} BINANCE_REST_URL={fake.rest_url}", flush=True)
        watchers = [gevent.signal_handler(s, stopping.set) for s in (signal.SIGINT, signal.SIGTERM)]
        stopping.wait()
        for watcher in watchers:
            watcher.cancel()
    return 0


if __name__ == "__main__":
    # The fake does all its I/O through gevent's own sockets, so patching this late (after the
    # imports above, none of which starts a thread or opens a socket) is only for consistency
    # with the store.
    from gevent import monkey

    monkey.patch_all()
    raise SystemExit(main())
