"""The one REST call the store makes, GET /fapi/v1/aggTrades, within the weight budget."""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import math
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlencode

import gevent
from gevent.lock import BoundedSemaphore

from .limits import WeightLimiter
from .logs import Throttle, kv
from .wire import BadFrame, Tick, tick_from

log = logging.getLogger(__name__)

WEIGHT = 20  # of every aggTrades call, errors included
PAGE = 1000  # the most rows one call returns
TIMEOUT = 10.0  # seconds per socket operation (connect, each read)
DEADLINE = 30.0  # seconds for a whole call: a body dripped byte by byte must not hold a slot
MAX_BODY = 4 << 20  # bytes; a page of 1000 trades is about 100 kB
MAX_ERROR_BODY = 4096  # bytes of an error answer worth reading
BAN_MINIMUM = 120.0  # seconds; a 418 ban lasts 2 minutes at least

INVALID_SYMBOL = -1121
OUT_OF_WINDOW = -4166
NOT_LISTED_EVERY = 3600.0  # seconds between "not listed" lines for one symbol

# X-MBX-USED-WEIGHT-1M: ASCII digits only (str.isdigit also takes "²", which int() refuses),
# and few of them (int() refuses more than 4300; a budget is a few thousand).
_WEIGHT_HEADER = re.compile(r"[0-9]{1,9}")
_CODE_LIMIT = 2**31  # Binance's error codes are small negative numbers


class RestError(Exception):
    """A call that returned no trades: HTTP status, Binance's error code (0 if none), message."""

    def __init__(self, status: int, code: int = 0, message: str = ""):
        super().__init__(f"HTTP {status} code {code}: {message}" if status else message)
        self.status = status
        self.code = code


def tls_context() -> ssl.SSLContext:
    """The client TLS context for Binance: system CAs, hostname checked. Loading the CAs
    takes milliseconds, so a process builds it once and hands it to every caller."""
    return ssl.create_default_context()


class NotListed:
    """Says that Binance does not list a symbol (REST -1121), at most once per `every`
    seconds, whichever of the symbol's workers met it."""

    __slots__ = ("_symbol", "_throttle")

    def __init__(self, symbol: str, clock: Callable[[], float] = time.monotonic):
        self._symbol = symbol
        self._throttle = Throttle(NOT_LISTED_EVERY, clock)

    def report(self) -> None:
        if self._throttle.allow(None) is not None:
            log.error("symbol not listed on Binance USD-M futures %s", kv(symbol=self._symbol))


class Rest:
    """Calls /fapi/v1/aggTrades on `base_url`, each after the weight limiter lets it.

    At most `concurrency` calls are in flight: a page is about 100 kB of JSON and ten times
    that once parsed, and after a restart every symbol wants one at the same moment.
    Each call has `timeout` seconds per socket operation and `deadline` seconds in all.
    HTTPS calls use `ssl_context` (None: Python's default, built anew per connection).
    Whatever a server answers, a call returns trades or raises RestError.
    """

    def __init__(
        self,
        base_url: str,
        weight: WeightLimiter,
        timeout: float = TIMEOUT,
        concurrency: int = 4,
        *,
        deadline: float = DEADLINE,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.base_url = base_url
        self.weight = weight
        self.timeout = timeout
        self.deadline = deadline
        self._ssl_context = ssl_context
        self._slots = BoundedSemaphore(concurrency)

    def agg_trades(self, symbol: str, from_id: int | None = None, limit: int = PAGE) -> list[Tick]:
        """Trades of `symbol` from id `from_id` (inclusive) on, oldest first; the latest
        `limit` if `from_id` is None. Raises RestError."""
        query = {"symbol": symbol, "limit": limit}
        if from_id is not None:
            query["fromId"] = from_id
        with self._slots:
            body = self._get("/fapi/v1/aggTrades?" + urlencode(query))
            try:
                rows = json.loads(body)
                if not isinstance(rows, list):
                    raise BadFrame("not a list")
                ticks = [tick_from(row) for row in rows]
            except (ValueError, TypeError, RecursionError) as exc:
                raise RestError(0, 0, f"unreadable answer: {exc}") from None
            # The repair takes the ids between two rows for a hole in Binance's history:
            # rows out of order would make it skip trades that exist.
            if any(b.id <= a.id for a, b in itertools.pairwise(ticks)):
                raise RestError(0, 0, "unreadable answer: trades not in id order")
            return ticks

    def _get(self, path: str) -> bytes:
        self.weight.acquire(WEIGHT)
        # base_url is http(s) only: config.load refuses anything else.
        request = urllib.request.Request(self.base_url + path, headers={"User-Agent": "tickd"})  # noqa: S310
        late = RestError(0, 0, f"no complete answer within {self.deadline:g}s")
        try:
            with gevent.Timeout(self.deadline, late):
                return self._fetch(request)
        # ValueError: a redirect to an unparsable URL, a malformed header or status.
        except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts are OSErrors
            raise RestError(0, 0, f"network: {exc}") from None

    def _fetch(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.timeout, context=self._ssl_context
            ) as response:
                self._observe(response.headers)
                body = response.read(MAX_BODY + 1)  # read no further than the limit
        except urllib.error.HTTPError as error:
            with error:
                self._observe(error.headers)
                body = error.read(MAX_ERROR_BODY)
            raise self._error(error.code, error.headers, body) from None
        if len(body) > MAX_BODY:
            raise RestError(0, 0, f"answer larger than {MAX_BODY} bytes")
        return body

    def _observe(self, headers) -> None:
        # An unreadable count is ignored: the trades of the answer are still good.
        used = headers.get("X-MBX-USED-WEIGHT-1M") if headers else None
        if used and _WEIGHT_HEADER.fullmatch(used):
            self.weight.observe(int(used))

    def _error(self, status: int, headers, body: bytes) -> RestError:
        retry_after = _seconds(headers.get("Retry-After") if headers else None)
        if status == 429:
            self.weight.block(retry_after or self.weight.seconds_to_next_minute())
        elif status == 418:
            self.weight.block(max(retry_after or 0.0, BAN_MINIMUM))
        code, message = _code_and_message(body)
        return RestError(status, code, message)


def _code_and_message(body: bytes) -> tuple[int, str]:
    """Binance's error code and message in an error answer; (0, the body's start) if it
    holds none that can be trusted (not JSON, not an object, a code that is not an integer)."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict):
        code = answer.get("code")
        # bool is an int in Python, never in Binance's JSON; 1e999 and "x" are no codes.
        if type(code) is int and -_CODE_LIMIT < code < _CODE_LIMIT:
            return code, str(answer.get("msg", ""))[:200]
    return 0, body[:200].decode("utf-8", "replace")


def _seconds(text: str | None) -> float | None:
    """A Retry-After in seconds; None if absent or not a finite, non-negative number
    ("inf", "nan", "-5", an HTTP date): the caller's default applies then."""
    try:
        seconds = float(text) if text else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
