"""The one REST call the store makes, GET /fapi/v1/aggTrades, within the weight budget."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from urllib.parse import urlencode

from gevent.lock import BoundedSemaphore

from .limits import WeightLimiter
from .wire import BadFrame, Tick, tick_from

log = logging.getLogger(__name__)

WEIGHT = 20  # of every aggTrades call, errors included
PAGE = 1000  # the most rows one call returns
TIMEOUT = 10.0
BAN_MINIMUM = 120.0  # seconds; a 418 ban lasts 2 minutes at least

INVALID_SYMBOL = -1121
OUT_OF_WINDOW = -4166


class RestError(Exception):
    """A call that returned no trades: HTTP status, Binance's error code (0 if none), message."""

    def __init__(self, status: int, code: int = 0, message: str = ""):
        super().__init__(f"HTTP {status} code {code}: {message}" if status else message)
        self.status = status
        self.code = code


class Rest:
    """Calls /fapi/v1/aggTrades on `base_url`, each after the weight limiter lets it.

    At most `concurrency` calls are in flight: a page is about 100 kB of JSON and ten times
    that once parsed, and after a restart every symbol wants one at the same moment.
    """

    def __init__(
        self, base_url: str, weight: WeightLimiter, timeout: float = TIMEOUT, concurrency: int = 4
    ):
        self.base_url = base_url
        self.weight = weight
        self.timeout = timeout
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
                return [tick_from(row) for row in rows]
            except (ValueError, TypeError, RecursionError) as exc:
                raise RestError(0, 0, f"unreadable answer: {exc}") from None

    def _get(self, path: str) -> bytes:
        self.weight.acquire(WEIGHT)
        # base_url is http(s) only: config.load refuses anything else.
        request = urllib.request.Request(self.base_url + path, headers={"User-Agent": "tickd"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                self._observe(response.headers)
                return response.read()
        except urllib.error.HTTPError as error:
            with error:
                self._observe(error.headers)
                body = error.read(4096)
            raise self._error(error.code, error.headers, body) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors
            raise RestError(0, 0, f"network: {exc}") from None

    def _observe(self, headers) -> None:
        used = headers.get("X-MBX-USED-WEIGHT-1M") if headers else None
        if used and used.isdigit():
            self.weight.observe(int(used))

    def _error(self, status: int, headers, body: bytes) -> RestError:
        retry_after = _seconds(headers.get("Retry-After") if headers else None)
        if status == 429:
            self.weight.block(retry_after or self.weight.seconds_to_next_minute())
        elif status == 418:
            self.weight.block(max(retry_after or 0.0, BAN_MINIMUM))
        try:
            answer = json.loads(body)
            return RestError(status, int(answer["code"]), str(answer.get("msg", ""))[:200])
        except (ValueError, TypeError, KeyError):
            return RestError(status, 0, body[:200].decode("utf-8", "replace"))


def _seconds(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
