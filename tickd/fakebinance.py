"""A fake Binance USD-M futures exchange (aggTrade streams and REST) with faults on demand.

Each listed symbol's trades come from a tape (`Tape`): by default `History`, which records every
trade so that tests can compare what a client stored with what was made, and REST serves it back.
A load generator passes a tape that keeps nothing (`FakeBinance(tape=...)`), and its own control
endpoints (`routes=`), and uses the fake's ways of trading: one trade (`trade`), a Poisson market
(`run_market`), a burst at a set rate (`burst`), or as fast as each client reads (`firehose`).

A symbol may also have a history before its first live trade (`archive`): Binance's public
archive of aggTrades (data.binance.vision's daily and monthly zips with their CHECKSUMs, on
the same port, with faults of its own: `archive_fault`), and REST within `rest_window`.

With `tls=True` it serves `wss://` and `https://` instead, with a certificate for 127.0.0.1 and
localhost signed by a throwaway CA made at `start()`, whose certificate it writes to a file for
clients to trust (`SSL_CERT_FILE`); nobody has to turn verification off.
"""

import argparse
import bisect
import contextlib
import datetime
import functools
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from gevent import ssl as gevent_ssl
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

FIRST_ID = 3_477_868_433
WEIGHT_PER_CALL = 20  # GET /fapi/v1/aggTrades
WEIGHT_EXCHANGE_INFO = 1  # GET /fapi/v1/exchangeInfo
AGG_TRADES, EXCHANGE_INFO = "/fapi/v1/aggTrades", "/fapi/v1/exchangeInfo"
BAN_SECONDS = 120
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
CLOSE_WAIT = 2.0  # seconds we wait for the client's answer to our close frame
SLOW_CONSUMER = 1008  # close code for a connection whose backlog passed max_backlog
SLOW_CUT = 10.0  # seconds a slow consumer gets to read up to our close frame before the cut
WRITE_CHUNK = 64 * 1024  # bytes of queued frames a writer joins into one sendall
BURST_TICK = 0.01  # seconds a burst sleeps when it is ahead of its rate
BURST_BATCH = 2000  # most trades a burst makes per wake-up, so that others get the hub
FIREHOSE_BATCH = 32  # trades a firehose writer makes and writes per sendall
COMBINED = "/market/stream"  # combined streams: ?streams=a@aggTrade/b@aggTrade, in an envelope
QUOTES = ("USDT", "USDC", "BUSD", "BTC")  # quote assets, for exchangeInfo's base/quote split
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_DROP = -1  # outbox marker: cut the TCP connection without a close frame
_WAKE = -2  # outbox marker: nothing to send, look at the firehose again
_NOTED = -3  # outbox marker: a text frame whose write time is noted, (payload, symbol, id)
_REFUSED = "fakebinance.refused"  # environ key: answer this handshake with an HTTP error
_REST_ROW = '{"a":%d,"p":"%s","q":"%s","nq":"%s","f":%d,"l":%d,"T":%d,"m":%s}'
_BOOL = ("false", "true")
_TOO_OLD = b'{"code":-4166,"msg":"Search window is restricted to recent 2 days only."}'


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


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final websocket frame of `length` payload bytes (RFC 6455)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final websocket frame, as a server sends it."""
    return frame_header(opcode, len(payload)) + payload


def price_text(units: int, scale: int) -> str:
    """`units` * 10**-scale as Binance writes prices: 8309170, 2 -> `83091.70`."""
    if scale == 0:
        return str(units)
    digits = str(units).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"


def split_assets(symbol: str) -> tuple[str, str, str]:
    """(pair, base asset, quote asset) of a symbol: `BTCUSDT_261225` -> BTCUSDT, BTC, USDT."""
    pair = symbol.split("_", 1)[0]
    quote = next((q for q in QUOTES if pair.endswith(q) and pair != q), "")
    return pair, pair[: len(pair) - len(quote)], quote


def _wsgi_text(value: str) -> str:
    """Undo WSGI's latin-1 decoding of a path or query string that was UTF-8 on the wire."""
    return value.encode("latin-1").decode("utf-8", "replace")


def _join_arrays(rows: list[str], more: bytes) -> bytes:
    """A JSON array of the `rows` (JSON texts) and then of the elements of array `more`."""
    tail = more.strip()[1:-1].strip().decode()
    return ("[" + ",".join([*rows, tail] if tail else rows) + "]").encode()


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _envelope(stream: str, payload: bytes) -> bytes:
    """A combined stream's frame: `{"stream":"btcusdt@aggTrade","data":<the raw frame>}`."""
    return b'{"stream":' + _json(stream) + b',"data":' + payload + b"}"


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def tls_server_context(ca_file: str, names: Iterable[str]) -> gevent_ssl.SSLContext:
    """A server context whose certificate, for `names` (host names or IP addresses), is
    signed by a CA made here and now; that CA's certificate is written to `ca_file` (PEM).
    The CA's key lives only in this process, so nothing else can ever be signed by it."""
    import trustme  # noqa: PLC0415 (a test tool, in requirements-dev.txt: plain mode needs none)

    ca = trustme.CA(organization_name="tickd fake Binance")
    cert = ca.issue_cert(*dict.fromkeys(names))
    context = gevent_ssl.create_default_context(gevent_ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca.cert_pem.write_to_path(ca_file)
    return context


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class Tape(Protocol):
    """One listed symbol's trades: it makes each next one and serves them back over REST.

    `FakeBinance(tape=factory)` calls `factory(symbol, first_id, price)` when a symbol is listed
    (`price`: the listing's, as Binance writes prices). The fake queues what `add` returns to
    the symbol's streams, and answers GET /fapi/v1/aggTrades with what `page` returns.
    """

    next_id: int  # the id of the next trade; skip_ids() moves it on

    def add(self, rng: random.Random, time_ms: int, price: str | None) -> bytes:
        """Make trade `next_id`, traded at `time_ms` (at `price`, if given and the tape honours
        it), and advance `next_id`; return its raw aggTrade frame, field for field Binance's."""
        ...

    def page(self, from_id: int | None, limit: int, oldest: int | None) -> bytes:
        """The JSON array of GET /fapi/v1/aggTrades: up to `limit` trades, oldest first, from
        `from_id` on, or the latest `limit` if None; none older than id `oldest` (if given)."""
        ...


class History:
    """The default tape: one listed symbol's id counters, its price walk and every trade made.

    Trades are kept in columns (arrays of machine integers), not as dicts: a burst makes
    hundreds of thousands, and a dict per trade would take close to a kilobyte each.
    """

    __slots__ = (
        "delays",
        "fills",
        "ids",
        "makers",
        "next_fill",
        "next_id",
        "price",
        "prices",
        "qtys",
        "scale",
        "spans",
        "symbol",
        "template",
        "texts",
        "times",
    )

    def __init__(self, symbol: str, first_id: int, price: str) -> None:
        self.symbol = symbol
        self.next_id = first_id
        self.next_fill = 2 * first_id
        self.price, self.scale = _units(price)  # the walk, in units of 10**-scale
        # The raw frame with the symbol in place; the other fields are filled per trade.
        name = _json(symbol).decode().replace("%", "%%")
        self.template = (
            '{"e":"aggTrade","E":%d,"a":%d,"s":' + name + ',"p":"%s","q":"%s","nq":"%s",'
            '"f":%d,"l":%d,"T":%d,"m":%s,"st":1}'
        )
        self.ids = array("q")  # a, strictly increasing
        self.times = array("q")  # T
        self.delays = array("H")  # E - T
        self.prices: list[str] = []  # p, as sent
        self.texts: dict[tuple[int, int], str] = {}  # one string per price the walk visits
        self.qtys = array("B")  # q, in thousandths
        self.fills = array("q")  # f
        self.spans = array("B")  # l - f
        self.makers = array("B")  # m

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, rng: random.Random, time_ms: int, price: str | None) -> bytes:
        """Make the next trade at `time_ms` (on the walk, or at `price`); return its frame."""
        r = rng.getrandbits(32)  # one draw for every random field: bursts make many trades
        if price is None:
            self.price = units = max(self.price + r % 11 - 5, 1)  # a step of -5..+5 units
            price = self.texts.get((units, self.scale))
            if price is None:
                price = self.texts[units, self.scale] = price_text(units, self.scale)
        else:
            self.price, self.scale = _units(price)
        qty, fills = (r >> 4) % 50 + 1, (r >> 10) % 3 + 1
        delay, maker = (r >> 12) % 196 + 5, (r >> 20) & 1  # E - T: 5..200 ms
        trade_id, first_fill = self.next_id, self.next_fill
        self.next_id = trade_id + 1
        self.next_fill = first_fill + fills
        self.ids.append(trade_id)
        self.times.append(time_ms)
        self.delays.append(delay)
        self.prices.append(price)
        self.qtys.append(qty)
        self.fills.append(first_fill)
        self.spans.append(fills - 1)
        self.makers.append(maker)
        q = _QTY[qty]
        last_fill = first_fill + fills - 1
        frame = (time_ms + delay, trade_id, price, q, q, first_fill, last_fill, time_ms)
        return (self.template % (*frame, _BOOL[maker])).encode()

    def trade(self, i: int) -> dict:
        """The `i`-th trade as Binance's raw aggTrade frame, decoded."""
        t, q, f = self.times[i], _QTY[self.qtys[i]], self.fills[i]
        return {
            "e": "aggTrade",
            "E": t + self.delays[i],
            "a": self.ids[i],
            "s": self.symbol,
            "p": self.prices[i],
            "q": q,
            "nq": q,
            "f": f,
            "l": f + self.spans[i],
            "T": t,
            "m": bool(self.makers[i]),
            "st": 1,
        }

    def page(self, from_id: int | None, limit: int, oldest: int | None) -> bytes:
        if from_id is None:
            start = max(len(self.ids) - limit, bisect.bisect_left(self.ids, oldest or 0))
        else:
            start = bisect.bisect_left(self.ids, from_id)
        return self.rest_rows(start, min(start + limit, len(self)))

    def rest_rows(self, start: int, stop: int) -> bytes:
        """Trades start..stop-1 as the JSON array GET /fapi/v1/aggTrades answers."""
        ids, prices, qtys, fills, spans, times, makers = (
            self.ids,
            self.prices,
            self.qtys,
            self.fills,
            self.spans,
            self.times,
            self.makers,
        )
        rows = []
        for i in range(start, stop):
            q, f = _QTY[qtys[i]], fills[i]
            row = (ids[i], prices[i], q, q, f, f + spans[i], times[i], _BOOL[makers[i]])
            rows.append(_REST_ROW % row)
        return ("[" + ",".join(rows) + "]").encode()


def _units(price: str) -> tuple[int, int]:
    """`83091.70` -> (8309170, 2): a decimal price as an integer and its decimal places."""
    exponent = Decimal(price).as_tuple().exponent
    scale = max(-exponent, 0) if isinstance(exponent, int) else 0
    return int(Decimal(price).scaleb(scale)), scale


_QTY = [f"0.{n:03d}" for n in range(51)]  # trade quantities: 0.001 to 0.050


# -- Binance's public archive of aggTrades (data.binance.vision), the layout of DESIGN 8

ARCHIVE_PREFIX = "/data/"  # every path under it is an archive request (archive_requests())
ARCHIVE_COLUMNS = (
    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
)
HEADER_SINCE = datetime.date(2022, 8, 11)  # USD-M files carry the header row from this date on
ARCHIVE_FAULTS = ("missing", "corrupt", "no_header", "shuffled", "lagging", "replaced")
DAY_MS = 86_400_000
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
_CSV_ROW = "%d,%s,%s,%d,%d,%d,%s\n"
_ARCHIVE_PATH = re.compile(
    r"/data/futures/um/(daily|monthly)/aggTrades/([^/]+)/\2-aggTrades-"
    r"([0-9]{4}-[0-9]{2}(?:-[0-9]{2})?)\.zip(\.CHECKSUM)?"
)
_NO_SUCH_KEY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    "<Message>The specified key does not exist.</Message><Key>%s</Key></Error>"
)


def archive_path(symbol: str, period: str) -> str:
    """The path of an archive zip: `period` `YYYY-MM-DD` is a daily file, `YYYY-MM` a monthly
    one. Its checksum is at the same path plus `.CHECKSUM`."""
    frequency = "daily" if len(period) == 10 else "monthly"
    return f"/data/futures/um/{frequency}/aggTrades/{symbol}/{symbol}-aggTrades-{period}.zip"


def parse_archive_path(path: str) -> tuple[str, str, bool] | None:
    """(symbol, period, is the CHECKSUM) of an archive path, or None if it names no file."""
    match = _ARCHIVE_PATH.fullmatch(path)
    if match is None or (match[1] == "daily") != (len(match[3]) == 10):
        return None
    try:
        period_days(match[3])
    except ValueError:  # 2026-13, 2026-02-30
        return None
    return match[2], match[3], match[4] is not None


def period_days(period: str) -> tuple[datetime.date, datetime.date]:
    """(first day, last day) of `YYYY-MM-DD` (one day) or `YYYY-MM` (a calendar month);
    ValueError for anything else."""
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", period):
        day = datetime.date.fromisoformat(period)
        return day, day
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}", period):
        first = datetime.date.fromisoformat(period + "-01")
        following = (first + datetime.timedelta(days=31)).replace(day=1)
        return first, following - datetime.timedelta(days=1)
    raise ValueError(f"an archive period is YYYY-MM-DD or YYYY-MM, not {period!r}")


def checksum_text(data: bytes, name: str) -> bytes:
    """What `sha256sum <name>` prints for a file holding `data`."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def zip_one(name: str, data: bytes, when: datetime.datetime) -> bytes:
    """A zip holding one deflated member `name` with `data`, stamped `when`: the same
    arguments give the same bytes."""
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, data, compresslevel=1)  # fast: a million rows in a second
    return buffer.getvalue()


def damaged(data: bytes) -> bytes:
    """A zip made by `zip_one` with one byte of its compressed member flipped: the same
    length, another sha256, and a member that no longer inflates to its CRC."""
    (size,) = struct.unpack_from("<I", data, 18)  # the local header's compressed size
    name_length, extra_length = struct.unpack_from("<HH", data, 26)
    at = 30 + name_length + extra_length + size // 2
    return data[:at] + bytes((data[at] ^ 0xFF,)) + data[at + 1 :]


def _walk_step(units: int, step: int) -> int:
    return max(units + step, 1)


class _Archive:
    """One symbol's archived history: `per_day` trades on each of `days` UTC days from
    `start`, ids `first_id` .. `end_id` - 1 without a hole.

    Nothing is kept per trade. A trade's time is a function of its id (spread over its day,
    never decreasing); a day's prices, quantities and sides come from one draw per trade of a
    generator seeded with the symbol and the day, made when the day is asked for (the last
    two days asked are cached). Prices walk from the listing price each day.
    """

    __slots__ = ("base", "cached", "days", "first_id", "per_day", "scale", "start", "symbol")

    def __init__(
        self,
        symbol: str,
        start: datetime.date,
        days: int,
        per_day: int,
        *,
        first_id: int,
        price: str,
    ) -> None:
        self.symbol, self.start, self.days, self.per_day = symbol, start, days, per_day
        self.first_id = first_id
        self.base, self.scale = _units(price)
        self.cached: dict[int, tuple[array, array]] = {}  # day index -> (prices, draws)

    @property
    def end_id(self) -> int:
        """The id after the last archived one: the symbol's first live id."""
        return self.first_id + self.days * self.per_day

    def span(self, first: datetime.date, last: datetime.date) -> tuple[int, int]:
        """The ids (from, to exclusive) of the archived trades from day `first` to `last`;
        from >= to if there are none."""
        k0 = max((first - self.start).days, 0)
        k1 = min((last - self.start).days + 1, self.days)
        return self.first_id + k0 * self.per_day, self.first_id + max(k1, k0) * self.per_day

    def time_of(self, trade_id: int) -> int:
        """T of an archived trade, in ms: within its day's share of the index, jittered."""
        k, i = divmod(trade_id - self.first_id, self.per_day)
        day_ms = (self.start.toordinal() + k - _EPOCH_DAY) * DAY_MS
        jitter = trade_id * 2_654_435_761 % DAY_MS  # Knuth's multiplicative hash
        return day_ms + (i * DAY_MS + jitter) // self.per_day

    def first_since(self, time_ms: int) -> int:
        """The first archived id traded at `time_ms` or later (end_id if none)."""
        ids = range(self.first_id, self.end_id)
        return self.first_id + bisect.bisect_left(ids, time_ms, key=self.time_of)

    def rows(self, lo: int, hi: int) -> Iterator[tuple[int, str, str, int, int, int, str]]:
        """(a, p, q, f, l, T, m as `true`/`false`) of the archived trades lo .. hi - 1."""
        lo, hi = max(lo, self.first_id), min(hi, self.end_id)
        texts: dict[int, str] = {}
        while lo < hi:
            k, i = divmod(lo - self.first_id, self.per_day)
            stop = min(i + hi - lo, self.per_day)
            prices, draws = self._day(k)
            for j in range(i, stop):
                a, r, units = lo + j - i, draws[j], prices[j]
                price = texts.get(units) or texts.setdefault(units, price_text(units, self.scale))
                qty, maker = _QTY[(r >> 4) % 50 + 1], _BOOL[(r >> 20) & 1]
                f = 2 * a  # History's first fill is 2 * its first id: the fills never overlap
                yield a, price, qty, f, f + (r >> 10) % 2, self.time_of(a), maker
            lo += stop - i

    def rest_rows(self, lo: int, hi: int) -> list[str]:
        """The archived trades lo .. hi - 1 as rows of GET /fapi/v1/aggTrades (JSON texts)."""
        return [
            _REST_ROW % (a, p, q, q, f, last, t, m) for a, p, q, f, last, t, m in self.rows(lo, hi)
        ]

    def _day(self, k: int) -> tuple[array, array]:
        """Day `k`'s prices (in units) and draws, one per trade."""
        made = self.cached.get(k)
        if made is None:
            day = self.start + datetime.timedelta(days=k)
            rng = random.Random(f"{self.symbol}/{day.isoformat()}")  # noqa: S311 - reproducible
            draws = array("I", rng.randbytes(4 * self.per_day))
            walk = itertools.accumulate((r % 11 - 5 for r in draws), _walk_step, initial=self.base)
            prices = array("q", walk)
            del prices[0]  # the listing price itself: the first step is the first trade's
            if len(self.cached) >= 2:
                del self.cached[next(iter(self.cached))]
            made = self.cached[k] = (prices, draws)
        return made


@dataclass(frozen=True, slots=True)
class Burst:
    """What a burst made: per symbol its first and last id; `trades` in all in `seconds`."""

    ids: dict[str, tuple[int, int]]
    trades: int
    seconds: float

    @property
    def rate(self) -> float:
        """Trades per second it reached."""
        return self.trades / self.seconds if self.seconds > 0 else 0.0


class _Conn:
    """One open websocket; only its writer greenlet writes to the socket."""

    __slots__ = (
        "closing",
        "combined",
        "ended",
        "outbox",
        "path",
        "peer_closed",
        "sock",
        "stalled",
        "streams",
    )

    def __init__(
        self, path: str, streams: tuple[str, ...], combined: bool, sock: socket.socket
    ) -> None:
        self.path = path
        self.streams = streams  # none on a dead route: such a socket never gets anything
        self.combined = combined  # each frame in an envelope naming its stream
        self.sock = sock
        self.outbox: gevent.queue.Queue = gevent.queue.Queue()  # frames not yet sent
        self.stalled = False
        self.closing = False  # a close frame or a drop is on its way
        self.peer_closed = gevent.event.Event()
        self.ended = gevent.event.Event()  # the connection is gone


class _Weight:
    """Binance's request weight per clock minute: 429 over the limit, a 418 ban for ignoring it."""

    __slots__ = ("banned_until", "limit", "minute", "used", "warned_minute")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.minute = self.warned_minute = -1
        self.used = 0
        self.banned_until = 0.0

    def charge(self, now: float, weight: int = WEIGHT_PER_CALL) -> int:
        """Count one call of `weight` at `now`; return the weight used in this minute."""
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0
        self.used += weight
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
        max_backlog: int | None = None,
        send_buffer: int | None = None,
        clock: Callable[[], float] = time.time,
        tape: Callable[[str, int, str], Tape] = History,
        routes: Mapping[str, Callable[[dict[str, str]], Any]] | None = None,
        archive_lag_days: int = 1,
        rest_window: float = 2 * 86400.0,
        tls: bool = False,
        ca_file: str | None = None,
    ) -> None:
        """`max_backlog`: frames a websocket may have queued, unsent, before it is closed with
        1008 as a slow consumer (None: no bound). `send_buffer`: SO_SNDBUF of each websocket
        in bytes (None: the system's, which grows to megabytes on loopback). `tape`: makes
        each listed symbol's `Tape` (default `History`, which `history()` needs). `routes`:
        more GET paths, each answered 200 with the JSON of `handler(query parameters)`, before
        the exchange's own routes and without weight.

        The archive (`archive()`): a day's file is published `archive_lag_days` days after it
        (1: the next day, by `clock`, in UTC). REST refuses a `fromId` among the archived
        trades older than `rest_window` seconds with -4166, as Binance does past two days.

        `tls`: serve `wss://` and `https://` (`ws_url`, `rest_url`) with a certificate for
        127.0.0.1, ::1, localhost and `host`, signed by a CA made at each `start()`. Its
        certificate is written to `ca_file` (None: into a temporary folder that `stop()`
        removes); clients trust it by that path (`SSL_CERT_FILE`, `ca_file`)."""
        self._address = (host, port)
        self._tls = tls
        self._ca_file = ca_file
        self._ca_folder: str | None = None  # the temporary folder of ca_file, if we made it
        self._tls_refusals: list[tuple[float, str]] = []
        self._ping_interval = ping_interval
        self._retention = retention  # how many of the most recent ids REST still serves
        self._max_backlog = max_backlog
        self._send_buffer = send_buffer
        self._clock = clock
        self._rng = random.Random(0)  # noqa: S311 - a reproducible market, not cryptography
        self._server: WSGIServer | None = None
        self._workers = gevent.pool.Group()  # one writer per websocket
        self._market = gevent.pool.Group()  # trade generators of run_market() and burst()
        self._tape = tape
        self._routes = dict(routes or {})
        self._markets: dict[str, Tape] = {}
        self._names: dict[str, str] = {}  # listed symbol -> its stream
        self._listed: dict[str, str] = {}  # stream of a listed symbol -> the symbol
        self._ticks: dict[str, str] = {}  # listed symbol -> tickSize in exchangeInfo
        self._conns: list[_Conn] = []
        self._subscribers: dict[str, list[_Conn]] = {}  # stream name -> its open websockets
        self._firehose = False
        self._watched: set[str] = set()  # symbols whose trade frames' write times are noted
        self._sends: list[tuple[str, int, float]] = []
        self._pongs: dict[str, int] = {}  # stream name -> pongs received
        self._handshakes: list[tuple[float, str]] = []
        self._refusals: list[int] = []
        self._weight = _Weight(weight_limit)
        self._rest_faults: dict[str, list[tuple[int, int | None]]] = {}
        self._rest_calls: list[tuple[float, dict[str, str]]] = []
        self._info_calls: list[float] = []
        self._slow_consumers: list[tuple[float, str, int]] = []
        self._listings: dict[str, tuple[int, str]] = {}  # listed symbol -> first id, price
        self._archives: dict[str, _Archive] = {}
        self._archive_lag = datetime.timedelta(days=archive_lag_days)
        self._rest_window = rest_window
        self._archive_faults: dict[tuple[str, str], dict[str, int]] = {}
        self._archive_requests: list[str] = []
        self._last_zip: tuple[tuple, bytes] = ((), b"")  # what a CHECKSUM and its zip share

    # -- life cycle

    def start(self) -> None:
        """Bind (port 0 picks a free port) and serve in the background; returns once listening.
        With `tls`, first make the CA and write its certificate (`ca_file`)."""
        server = WSGIServer(
            self._address,
            self._app,
            handler_class=WebSocketHandler,
            spawn=gevent.pool.Pool(),
            log=None,
        )
        server.pre_start_hook = self._before_upgrade
        if self._tls:
            if self._ca_file is None:
                self._ca_folder = tempfile.mkdtemp(prefix="fakebinance-ca-")
                self._ca_file = os.path.join(self._ca_folder, "ca.pem")
            host = self._address[0]
            names = ["127.0.0.1", "::1", "localhost"]
            names += [host] if host not in ("", "0.0.0.0", "::") else []  # noqa: S104
            context = tls_server_context(self._ca_file, names)
            server.handle = functools.partial(self._handle_tls, context, server.handle)
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
        if self._ca_folder is not None:
            shutil.rmtree(self._ca_folder, ignore_errors=True)
            self._ca_folder = self._ca_file = None

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
        scheme = "wss" if self._tls else "ws"
        return f"{scheme}://{self._address[0]}:{self.port}/market/ws"

    @property
    def rest_url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._address[0]}:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """With `tls`, once started: the path of the CA certificate (PEM) that clients trust
        (`SSL_CERT_FILE=...`); None in plain mode."""
        return self._ca_file if self._tls and self._server is not None else None

    @property
    def archive_url(self) -> str:
        """Base of the archive, as `https://data.binance.vision` is Binance's: a client
        appends `archive_path(symbol, period)` (and `.CHECKSUM`). The same server as REST."""
        return self.rest_url

    # -- the market

    def list_symbol(
        self, symbol: str, *, first_id: int | None = None, price: str = "100.00"
    ) -> None:
        """Make `symbol` exist, stored exactly as given; listing it again changes nothing."""
        if symbol in self._markets:
            return
        if first_id is None:
            first_id = FIRST_ID + 1_000_000 * len(self._markets)
        self._markets[symbol] = self._tape(symbol, first_id, price)
        self._listings[symbol] = (first_id, price)
        self._names[symbol] = stream = stream_name(symbol)
        self._listed[stream] = symbol
        scale = _units(price)[1]
        self._ticks[symbol] = f"0.{'0' * (scale - 1)}1" if scale else "1"

    def trade(self, symbol: str, *, price: str | None = None, time_ms: int | None = None) -> dict:
        """Make the symbol's next aggregate trade and queue it to its streams; return it, as
        its frame decoded. `History` also records it (`history()`)."""
        return json.loads(self._trade(symbol, price, time_ms))

    def skip_ids(self, symbol: str, n: int) -> None:
        """Skip `n` ids in the symbol's stream. `History` never makes them: a hole in its
        history, as Binance's own has; a tape that serves every id below `next_id` over REST
        makes them a gap for a client to repair."""
        self.list_symbol(symbol)
        self._markets[symbol].next_id += n

    def history(self, symbol: str) -> list[dict]:
        """Every trade made for the symbol, oldest first (new dicts, made on each call).
        Raises TypeError if its tape is not a `History`."""
        market = self._markets.get(symbol)
        if market is None:
            return []
        if not isinstance(market, History):
            raise TypeError(f"the tape of {symbol} keeps no history: {type(market).__name__}")
        return [market.trade(i) for i in range(len(market))]

    def firehose(self, on: bool = True) -> None:
        """While on, the writer of every raw stream of a listed symbol makes trades for it as
        fast as its socket takes them (TCP back-pressure paces it), FIREHOSE_BATCH a write;
        what is queued (a close, a pong) goes first. No pings meanwhile."""
        self._firehose = on
        for conn in self._conns:
            conn.outbox.put((_WAKE, b""))

    def watch_sends(self, symbols: Iterable[str]) -> None:
        """From now on note when each trade frame of `symbols` made by trade() or run_market()
        is written to a socket (`sends()`); an empty list stops it."""
        self._watched = set(symbols)

    def sends(self) -> list[tuple[str, int, float]]:
        """(symbol, id, clock time just before the write) of each noted trade frame since the
        last call, which forgets them."""
        sends, self._sends = self._sends, []
        return sends

    def _trade(self, symbol: str, price: str | None = None, time_ms: int | None = None) -> bytes:
        """Make the symbol's next trade and queue it to its streams; its frame."""
        self.list_symbol(symbol)
        market = self._markets[symbol]
        t = int(self._clock() * 1000) if time_ms is None else time_ms
        payload = market.add(self._rng, t, price)
        noted = symbol in self._watched
        wrapped = None
        for conn in self._conns_of(symbol):
            if conn.stalled:
                continue
            data = payload
            if conn.combined:
                data = wrapped = wrapped or _envelope(self._names[symbol], payload)
            if noted:
                self._queue(conn, _NOTED, (data, symbol, market.next_id - 1))
            else:
                self._queue(conn, TEXT, data)
        return payload

    def run_market(self, symbols: Iterable[str], rate: float) -> None:
        """Trade the symbols at `rate` trades per second in all (Poisson), until stop_market()."""
        symbols = list(symbols)
        for symbol in symbols:
            self.list_symbol(symbol)
            self._market.spawn(self._trade_forever, symbol, rate / len(symbols))

    def burst(self, symbols: Iterable[str], rate: float, seconds: float) -> gevent.Greenlet:
        """Trade the symbols in turn at `rate` trades per second in all, for `seconds`.

        Returns at once; the returned greenlet (owned by the fake: stop_market() kills it)
        makes the trades in batches, one per wake-up, and ends with a `Burst` as its value.
        If the fake cannot keep up, it makes fewer: `Burst.rate` says how many it reached.
        """
        symbols = list(symbols)
        if not symbols or rate <= 0 or seconds <= 0:
            raise ValueError("a burst needs symbols, a positive rate and a positive length")
        for symbol in symbols:
            self.list_symbol(symbol)
        return self._market.spawn(self._burst, symbols, rate, seconds)

    def stop_market(self) -> None:
        """Kill the trade generators of run_market() and burst()."""
        self._market.kill(timeout=1)

    def _trade_forever(self, symbol: str, rate: float) -> None:
        while True:
            self._trade(symbol)
            gevent.sleep(self._rng.expovariate(rate))

    def _burst(self, symbols: list[str], rate: float, seconds: float) -> Burst:
        markets = [self._markets[symbol] for symbol in symbols]
        first_ids = [market.next_id for market in markets]
        rng, n, made = self._rng, len(markets), 0
        start = time.monotonic()
        end, total = start + seconds, round(seconds * rate)
        while True:
            now = time.monotonic()
            reached = total if now >= end else int((now - start) * rate)  # not 9.999 for 10
            due = min(reached - made, BURST_BATCH)
            if due > 0:
                t = int(self._clock() * 1000)
                # Frames per symbol first, then to each connection: one lookup per batch.
                batches: list[list[bytes]] = [[] for _ in markets]
                for k in range(made, made + due):
                    batches[k % n].append(markets[k % n].add(rng, t, None))
                made += due
                for symbol, payloads in zip(symbols, batches, strict=True):
                    for conn in self._conns_of(symbol):
                        if conn.stalled:
                            continue
                        frames = payloads
                        if conn.combined:
                            frames = [_envelope(self._names[symbol], p) for p in payloads]
                        for payload in frames:
                            if not self._queue(conn, TEXT, payload):
                                break
            if now >= end:
                break
            # A full batch means the fake is behind its rate: only yield, then catch up.
            gevent.sleep(0 if due == BURST_BATCH else BURST_TICK)
        took = time.monotonic() - start
        ids = {
            symbol: (first, market.next_id - 1)
            for symbol, first, market in zip(symbols, first_ids, markets, strict=True)
        }
        return Burst(ids=ids, trades=made, seconds=took)

    # -- the archive (data.binance.vision)

    def archive(
        self, symbol: str, start: datetime.date, end: datetime.date, per_day: int = 100
    ) -> None:
        """Give `symbol` a history of `per_day` aggTrades on each UTC day from `start` to `end`
        inclusive, served as the archive's files and over REST (within `rest_window`).

        Its ids are consecutive and end one before the symbol's first live id, so the stream
        goes on from the archive without a hole; trade times are spread over each day, prices
        walk from the listing price. The same arguments give the same trades (seeded by
        symbol and day), and nothing is made before it is asked for: a million trades cost
        nothing until served; a file is built in memory, on the hub, when asked for (about
        three seconds per million rows). Live trades are never archived.

        Files (by `clock`, in UTC; `today - archive_lag_days` is the last day published):
        a daily file for each archived day up to that day; a monthly file for each calendar
        month whose last day is up to that day and which has archived days, holding those
        days only (a month the archive covers in part is a short file, as Binance's is for
        a symbol listed mid-month).

        Lists the symbol if needed. ValueError if `start` is after `end`, `per_day` < 1, the
        symbol has traded (or skipped ids) or has an archive already, or ids would go below 0.
        """
        days = (end - start).days + 1
        if days < 1 or per_day < 1:
            raise ValueError("an archive needs start <= end and per_day >= 1")
        self.list_symbol(symbol)
        first_live, price = self._listings[symbol]
        if symbol in self._archives:
            raise ValueError(f"{symbol} already has an archive")
        if self._markets[symbol].next_id != first_live:
            raise ValueError(f"an archive must come before any live trade of {symbol}")
        if first_live < days * per_day:
            raise ValueError(f"{symbol} lists at id {first_live}: no room for the archive")
        first_id = first_live - days * per_day
        self._archives[symbol] = _Archive(
            symbol, start, days, per_day, first_id=first_id, price=price
        )

    def archived(self, symbol: str) -> list[tuple[int, int, str]]:
        """(agg_trade_id, transact_time, price) of every archived trade of `symbol`, oldest
        first ([] without an archive); made on each call."""
        archive = self._archives.get(symbol)
        if archive is None:
            return []
        return [(a, t, p) for a, p, _, _, _, t, _ in archive.rows(archive.first_id, archive.end_id)]

    def archive_fault(self, kind: str, symbol: str, period: str, count: int = 1) -> None:
        """Make the archive file of `symbol` for `period` (`YYYY-MM-DD` daily, `YYYY-MM`
        monthly) misbehave; faults of different kinds add up. `kind`:

        - `missing`: the zip and its CHECKSUM answer 404, for good;
        - `corrupt`: the next `count` downloads of the zip have a byte flipped (same length;
          the CHECKSUM stays that of the good file, so the sha256 check fails);
        - `no_header`: the CSV has no header row, whatever its date;
        - `shuffled`: the CSV's rows are in a seeded random order (the header stays first);
        - `lagging`: not published yet: the next `count` requests of the zip or its CHECKSUM
          that would have found it answer 404;
        - `replaced`: published again, `count` times: the zip is rebuilt with a later
          timestamp, so its bytes and its CHECKSUM change; its rows stay the same.

        ValueError for another kind or a malformed period.
        """
        if kind not in ARCHIVE_FAULTS:
            raise ValueError(f"unknown archive fault {kind!r}: one of {', '.join(ARCHIVE_FAULTS)}")
        period_days(period)
        faults = self._archive_faults.setdefault((symbol, period), {})
        once = kind in ("missing", "no_header", "shuffled")
        faults[kind] = 1 if once else faults.get(kind, 0) + count

    def archive_requests(self) -> list[str]:
        """The decoded path of every request under /data/ (zip, CHECKSUM or unknown,
        answered or not), oldest first."""
        return list(self._archive_requests)

    def _archive_file(self, path: str) -> tuple[int, str, bytes]:
        """(status, Content-Type, body) of an archive request."""
        self._archive_requests.append(path)
        missing = 404, "application/xml", (_NO_SUCH_KEY % path.lstrip("/")).encode()
        parsed = parse_archive_path(path)
        archive = self._archives.get(parsed[0]) if parsed else None
        if parsed is None or archive is None:
            return missing
        symbol, period, checksum = parsed
        faults = self._archive_faults.get((symbol, period), {})
        first, last = period_days(period)
        today = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).date()
        lo, hi = archive.span(first, last)
        if lo >= hi or last > today - self._archive_lag or faults.get("missing"):
            return missing
        if faults.get("lagging"):
            faults["lagging"] -= 1
            return missing
        name = f"{symbol}-aggTrades-{period}"
        data = self._archive_zip(archive, name, (first, last), faults)
        if checksum:
            return 200, "text/plain", checksum_text(data, name + ".zip")
        if faults.get("corrupt"):
            faults["corrupt"] -= 1
            data = damaged(data)
        return 200, "application/zip", data

    def _archive_zip(
        self,
        archive: _Archive,
        name: str,
        days: tuple[datetime.date, datetime.date],
        faults: Mapping[str, int],
    ) -> bytes:
        """The zip `name`.zip of the archived trades from day to day, as `faults` make it;
        the last one built is kept, for the download that follows its CHECKSUM."""
        header = days[0] >= HEADER_SINCE and not faults.get("no_header")
        shuffled, version = bool(faults.get("shuffled")), faults.get("replaced", 0)
        key = (name, header, shuffled, version)
        if self._last_zip[0] != key:
            lines = [_CSV_ROW % row for row in archive.rows(*archive.span(*days))]
            if shuffled:
                random.Random(f"{name}/shuffled").shuffle(lines)  # noqa: S311 - reproducible
            if header:
                lines.insert(0, ARCHIVE_COLUMNS + "\n")
            # Stamped at midnight after its last day, a minute later for each replacement.
            built = datetime.datetime.combine(days[1], datetime.time()) + datetime.timedelta(
                days=1, minutes=version
            )
            self._last_zip = key, zip_one(name + ".csv", "".join(lines).encode(), built)
        return self._last_zip[1]

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
        """(clock time, query parameters) of every aggTrades call, answered or not."""
        return list(self._rest_calls)

    def exchange_info_calls(self) -> list[float]:
        """Clock time of every exchangeInfo call, answered or not."""
        return list(self._info_calls)

    def tls_refusals(self) -> list[tuple[float, str]]:
        """(clock time, OpenSSL's reason) of every TLS handshake that failed, such as
        `TLSV1_ALERT_UNKNOWN_CA`: a client that does not trust the CA hung up."""
        return list(self._tls_refusals)

    def slow_consumers(self) -> list[tuple[float, str, int]]:
        """(clock time, path, frames dropped) of every websocket closed with 1008 because its
        unsent backlog passed `max_backlog`, oldest first."""
        return list(self._slow_consumers)

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
            if self._firehose:
                conn.outbox.put((_WAKE, b""))  # its writer takes up the firehose at once

    def send_raw(self, symbol: str, data: str | bytes, *, binary: bool = False) -> None:
        """Send a text (or binary) frame of any payload, even invalid UTF-8; stalled or not."""
        payload = data.encode() if isinstance(data, str) else data
        for conn in self._conns_of(symbol):
            self._queue(conn, BINARY if binary else TEXT, payload)

    def refuse_handshakes(self, count: int, status: int = 503) -> None:
        """Answer the next `count` websocket handshakes with HTTP `status` instead of an upgrade."""
        self._refusals.extend([status] * count)

    def rest_fault(
        self, status: int, count: int = 1, retry_after: int | None = None, *, path: str = AGG_TRADES
    ) -> None:
        """Answer the next `count` REST calls to `path` (aggTrades unless told) with HTTP
        `status`, and Retry-After if given."""
        self._rest_faults.setdefault(path, []).extend([(status, retry_after)] * count)

    def _conns_of(self, symbol: str) -> list[_Conn]:
        stream = self._names.get(symbol) or stream_name(symbol)
        return [c for c in self._subscribers.get(stream, ()) if not c.closing]

    def _queue(self, conn: _Conn, opcode: int, payload: bytes) -> bool:
        """Queue a data frame to `conn`, unless that passes `max_backlog`: then close it as a
        slow consumer. Returns whether the frame was queued."""
        if conn.closing:
            return False
        if self._max_backlog is not None and conn.outbox.qsize() >= self._max_backlog:
            self._close_slow_consumer(conn)
            return False
        conn.outbox.put((opcode, payload))
        return True

    def _close_slow_consumer(self, conn: _Conn) -> None:
        """Drop what `conn` has not been sent, send 1008 next, and cut the TCP connection if
        the client has not read that far within SLOW_CUT seconds."""
        conn.closing = True
        dropped = 0
        with contextlib.suppress(gevent.queue.Empty):
            while True:
                conn.outbox.get_nowait()
                dropped += 1
        conn.outbox.put((CLOSE, SLOW_CONSUMER.to_bytes(2, "big")))
        self._slow_consumers.append((self._clock(), conn.path, dropped))
        self._workers.spawn(self._cut_after, conn, SLOW_CUT)

    @staticmethod
    def _cut_after(conn: _Conn, seconds: float) -> None:
        if not conn.ended.wait(seconds):
            _shutdown(conn.sock)

    def _post_last(self, symbol: str, opcode: int, payload: bytes) -> None:
        for conn in self._conns_of(symbol):
            conn.closing = True
            conn.outbox.put((opcode, payload))

    # -- HTTP and websocket serving

    def _handle_tls(
        self, context: gevent_ssl.SSLContext, handle: Callable, sock: socket.socket, address: Any
    ) -> None:
        """The server's handler of a connection with `tls`: the TLS handshake, then `handle`
        (HTTP and websockets). A refused handshake is recorded (`tls_refusals`), not printed
        as gevent's own TLS serving does, and the socket closed."""
        try:
            tls_sock = context.wrap_socket(sock, server_side=True)
        except OSError as exc:  # ssl.SSLError, or the client hung up
            self._tls_refusals.append((self._clock(), getattr(exc, "reason", None) or str(exc)))
            sock.close()
            return
        with contextlib.closing(tls_sock):
            handle(tls_sock, address)

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
        return split_ws_path(path) is None and path != COMBINED

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = _wsgi_text(environ.get("PATH_INFO", ""))
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            self._serve(ws, path)
            return []
        headers: list[tuple[str, str]] = []
        route = self._routes.get(path)
        content_type = "application/json"
        if _REFUSED in environ:
            status, body = environ[_REFUSED], b""
        elif route is not None:
            query = dict(parse_qsl(_wsgi_text(environ.get("QUERY_STRING", ""))))
            status, body = 200, _json(route(query))
        elif path in (AGG_TRADES, EXCHANGE_INFO):
            query = _wsgi_text(environ.get("QUERY_STRING", ""))
            status, headers, body = self._rest(path, query)
        elif path.startswith(ARCHIVE_PREFIX):
            status, content_type, body = self._archive_file(path)
        else:
            status, body = 404, b""
        headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response(_status_line(status), headers)
        return [body]

    def _serve(self, ws: WebSocket, path: str) -> None:
        if path == COMBINED:
            query = dict(parse_qsl(_wsgi_text(ws.environ.get("QUERY_STRING", ""))))
            named = (s for s in query.get("streams", "").split("/") if s)
            conn = _Conn(path, tuple(dict.fromkeys(named)), True, ws.handler.socket)
        else:
            route, stream = split_ws_path(path) or ("", "")
            streams = (stream,) if route == "/market/ws/" else ()
            conn = _Conn(path, streams, False, ws.handler.socket)
        if self._send_buffer is not None:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._conns.append(conn)
        for stream in conn.streams:
            self._subscribers.setdefault(stream, []).append(conn)
        writer = self._workers.spawn(self._write_loop, conn)
        try:
            self._read_loop(ws, conn)
        finally:
            self._conns.remove(conn)
            for stream in conn.streams:
                self._subscribers[stream].remove(conn)
            writer.kill()
            _shutdown(conn.sock)  # also makes gevent-websocket's own closing frame fail quietly
            conn.ended.set()

    def _read_loop(self, ws: WebSocket, conn: _Conn) -> None:
        """Read control frames until the client is gone; client messages are ignored."""
        while True:
            try:
                header, payload = ws.read_frame()
            # OSError: EOF, reset or a protocol error (WebSocketError is an OSError).
            # ValueError: a TLS socket that _shutdown() cut meanwhile.
            except (OSError, ValueError):
                return
            if header.opcode == PONG:
                for stream in conn.streams:
                    self._pongs[stream] = self._pongs.get(stream, 0) + 1
            elif header.opcode == PING and not conn.stalled:
                conn.outbox.put((PONG, payload))
            elif header.opcode == CLOSE:
                if not conn.closing:
                    conn.closing = True
                    conn.outbox.put((CLOSE, payload[:2]))  # echo the client's code
                conn.peer_closed.set()

    def _ping(self, conn: _Conn) -> None:
        """A ping like Binance's (payload: the time in ms), unless the socket is silent."""
        if not conn.stalled and any(stream in self._listed for stream in conn.streams):
            conn.sock.sendall(encode_frame(PING, str(int(self._clock() * 1000)).encode()))

    def _write_loop(self, conn: _Conn) -> None:
        """Send what the outbox holds, and a ping every ping_interval; hang up at the end.
        With the firehose on and nothing queued, send the next firehose batch.

        Frames queued meanwhile go out together, up to WRITE_CHUNK bytes per sendall: while a
        slow client keeps that sendall waiting, the outbox (the backlog) grows."""
        next_ping = time.monotonic() + self._ping_interval
        outbox, sendall = conn.outbox, conn.sock.sendall
        try:
            while True:
                if self._firehose and outbox.empty():
                    batch = self._firehose_batch(conn)
                    if batch:
                        sendall(batch)
                        continue
                wait = max(0.0, next_ping - time.monotonic())
                try:
                    opcode, payload = outbox.get(timeout=wait)
                except gevent.queue.Empty:
                    next_ping = time.monotonic() + self._ping_interval
                    self._ping(conn)
                    continue
                data, opcode = self._join_queued(outbox, opcode, payload)
                if data:
                    sendall(data)
                if opcode == _DROP:
                    return
                if opcode == CLOSE:
                    conn.peer_closed.wait(timeout=CLOSE_WAIT)
                    return
        except OSError:
            return
        finally:
            _shutdown(conn.sock)

    def _join_queued(
        self, outbox: gevent.queue.Queue, opcode: int, payload: Any
    ) -> tuple[bytes, int]:
        """The frames of `opcode, payload` and of what is queued after it, up to WRITE_CHUNK
        bytes, a close or a drop, as one write; and the last opcode taken."""
        chunk: list[bytes] = []
        size = 0
        while True:
            if opcode == _NOTED:
                payload, symbol, trade_id = payload
                self._sends.append((symbol, trade_id, self._clock()))
                opcode = TEXT
            if opcode == _DROP:
                break
            if opcode != _WAKE:
                chunk += (frame_header(opcode, len(payload)), payload)
                size += len(payload)
            if opcode == CLOSE or size >= WRITE_CHUNK or outbox.empty():
                break
            opcode, payload = outbox.get_nowait()
        return b"".join(chunk), opcode

    def _firehose_batch(self, conn: _Conn) -> bytes:
        """The next FIREHOSE_BATCH trades of the connection's symbol as frames, or b"" if the
        connection takes no firehose (a combined or dead stream, stalled or closing)."""
        if conn.combined or conn.stalled or conn.closing or len(conn.streams) != 1:
            return b""
        symbol = self._listed.get(conn.streams[0])
        if symbol is None:
            return b""
        market, rng, t = self._markets[symbol], self._rng, int(self._clock() * 1000)
        frames: list[bytes] = []
        for _ in range(FIREHOSE_BATCH):
            payload = market.add(rng, t, None)
            frames += (frame_header(TEXT, len(payload)), payload)
        return b"".join(frames)

    def _rest(self, path: str, query_string: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Charge the call's weight, then answer it, or refuse it (429, 418, a fault)."""
        now = self._clock()
        query = dict(parse_qsl(query_string))
        if path == EXCHANGE_INFO:
            self._info_calls.append(now)
            used = self._weight.charge(now, WEIGHT_EXCHANGE_INFO)
        else:
            self._rest_calls.append((now, query))
            used = self._weight.charge(now)
        faults = self._rest_faults.get(path)
        if faults:
            status, retry_after = faults.pop(0)
        else:
            status, retry_after = self._weight.verdict(now)
        headers = [("X-MBX-USED-WEIGHT-1M", str(used))]
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        if status == 200 and path == EXCHANGE_INFO:
            status, body = self._exchange_info()
        elif status == 200:
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

    def _exchange_info(self) -> tuple[int, bytes]:
        """GET /fapi/v1/exchangeInfo: the listed symbols, in the order they were listed."""
        listed = []
        for symbol in self._markets:
            pair, base, quote = split_assets(symbol)
            listed.append(
                {
                    "symbol": symbol,
                    "pair": pair,
                    "contractType": "PERPETUAL" if pair == symbol else "CURRENT_QUARTER",
                    "status": "TRADING",
                    "baseAsset": base,
                    "quoteAsset": quote,
                    "filters": [{"filterType": "PRICE_FILTER", "tickSize": self._ticks[symbol]}],
                }
            )
        server_time = int(self._clock() * 1000)
        return 200, _json({"timezone": "UTC", "serverTime": server_time, "symbols": listed})

    def _agg_trades(self, query: dict[str, str]) -> tuple[int, bytes]:
        """GET /fapi/v1/aggTrades: oldest first from `fromId` inclusive, else the latest `limit`."""
        wanted = lower_ascii(query.get("symbol", ""))
        symbol = next((s for s in self._markets if lower_ascii(s) == wanted), None)
        if symbol is None:
            return 400, _json({"code": -1121, "msg": "Invalid symbol."})
        market = self._markets[symbol]
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            from_id = int(query["fromId"]) if "fromId" in query else None
        except ValueError:
            return 400, _json({"code": -1100, "msg": "Illegal characters found in a parameter."})
        if not 1 <= limit <= MAX_LIMIT:
            msg = "Data sent for parameter 'limit' is not valid."
            return 400, _json({"code": -1130, "msg": msg})
        oldest = market.next_id - self._retention if self._retention is not None else None
        if from_id is not None and oldest is not None and from_id < oldest:
            return 400, _TOO_OLD
        archive = self._archives.get(symbol)
        if archive is None or (from_id is not None and from_id >= archive.end_id):
            return 200, market.page(from_id, limit, oldest)
        return self._archived_trades(archive, market, from_id, limit, oldest)

    def _archived_trades(
        self, archive: _Archive, market: Tape, from_id: int | None, limit: int, oldest: int | None
    ) -> tuple[int, bytes]:
        """GET /fapi/v1/aggTrades over the archived trades, then the live tape's: -4166 for
        a `fromId` older than `rest_window`; such trades are not among the latest either."""
        cutoff = int((self._clock() - self._rest_window) * 1000)
        recent = max(archive.first_since(cutoff), oldest or 0)
        if from_id is None:
            live = market.page(None, limit, oldest)
            lo = max(archive.end_id - limit + len(json.loads(live)), recent)
            return 200, _join_arrays(archive.rest_rows(lo, archive.end_id), live)
        lo = max(from_id, archive.first_id)
        if lo < recent:
            return 400, _TOO_OLD
        hi = min(lo + limit, archive.end_id)
        live = market.page(archive.end_id, limit - (hi - lo), oldest) if hi - lo < limit else b"[]"
        return 200, _join_arrays(archive.rest_rows(lo, hi), live)


def main(argv: list[str] | None = None) -> int:
    """Serve a fake exchange with a random market until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tickd.fakebinance", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="trades per second in all")
    parser.add_argument(
        "--archive-days", type=int, default=10, help="days before today in the archive, per symbol"
    )
    parser.add_argument(
        "--archive-per-day", type=int, default=1000, help="archived trades a day, per symbol"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve wss:// and https://, with a certificate signed by a CA made at start",
    )
    parser.add_argument(
        "--ca-file",
        help="with --tls: where to write the CA certificate (default: a temporary file, "
        "removed at exit); clients trust it with SSL_CERT_FILE",
    )
    args = parser.parse_args(argv)
    if args.ca_file and not args.tls:
        parser.error("--ca-file needs --tls")
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    stopping = gevent.event.Event()
    with FakeBinance(args.host, args.port, tls=args.tls, ca_file=args.ca_file) as fake:
        today = datetime.datetime.now(datetime.UTC).date()
        if args.archive_days > 0:
            start = today - datetime.timedelta(days=args.archive_days)
            for symbol in symbols:
                fake.archive(
                    symbol, start, today - datetime.timedelta(days=1), args.archive_per_day
                )
        fake.run_market(symbols, args.rate)
        trust = f" SSL_CERT_FILE={fake.ca_file}" if fake.ca_file else ""
        print(f"BINANCE_WS_URL={fake.ws_url} BINANCE_REST_URL={fake.rest_url}{trust}", flush=True)
        if args.archive_days > 0:
            print(f"BINANCE_ARCHIVE_URL={fake.archive_url}", flush=True)
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
