"""The HTTP side: the plain-text status page, the health check, and the Bottle app serving them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import bottle
from prometheus_client import CONTENT_TYPE_LATEST

from . import symbols
from .database import Database
from .logs import kv
from .text import format_time, name_column, quoted, symbol_line

log = logging.getLogger(__name__)

TITLE = "Binance Tick Store"
NO_DATA = "(no data yet)"
INVALID = "(invalid symbol, ignored)"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the page: a name, on/off, and the first/last tick times in ms (or None)."""

    name: str
    on: bool
    span: tuple[int, int] | None = None
    invalid: bool = False


def format_uptime(seconds: float) -> str:
    """`2d 14h 32m`, leading zero units left out (`5m`, `3h 0m`)."""
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def render(uptime: float, rows: Iterable[Row]) -> str:
    """The status page of a running store."""
    rows = list(rows)
    names = [quoted(row.name) if row.invalid else row.name for row in rows]
    column = name_column(names)
    lines = [TITLE, "", "Status:     running", f"Uptime:     {format_uptime(uptime)}", ""]
    for row, name in zip(rows, names, strict=True):
        if row.invalid:
            detail = INVALID
        elif row.span is None:
            detail = NO_DATA
        else:
            detail = f"{format_time(row.span[0])}  ->  {format_time(row.span[1])}"
        lines.append(symbol_line(name, "on" if row.on else "off", detail, column))
    return "\n".join(lines) + "\n"


def render_stopped(reason: str = "connection refused") -> str:
    """What `make status` prints when nothing answers."""
    return f"{TITLE}\n\nStatus:     stopped ({reason})\n"


def collect(
    db: Database,
    enabled: dict[str, bool],
    invalid: Iterable[str],
    connected: Callable[[str], bool],
) -> list[Row]:
    """The page's rows: symbol_settings' symbols in row order, refused names, then symbols
    that still have ticks in their table but no settings row (off). An empty table without a
    settings row (a symbol removed before it traded, a typo) is left out: it says nothing."""
    db.refresh(wait=False)  # never behind a checkpoint: what is kept is at most a page old
    rows = []
    for symbol, on in enabled.items():
        rows.append(Row(symbol, on and connected(symbol), db.first_last(symbol)))
    rows.extend(Row(name, False, invalid=True) for name in invalid)
    listed = set(enabled)
    for table in db.price_tables():
        if table in listed:
            continue
        try:
            symbol = symbols.normalise(table)
        except symbols.InvalidSymbol:
            continue
        if symbol != table:
            continue
        span = db.first_last(symbol)
        if span is not None:
            rows.append(Row(symbol, False, span))
    return rows


def make_app(
    page: Callable[[], str], healthy: Callable[[], bool], metrics: Callable[[], bytes]
) -> bottle.Bottle:
    """A Bottle app with GET /status (the page), GET /healthz and GET /metrics (Prometheus
    text exposition); everything else 404/405."""
    app = bottle.Bottle(catchall=True, autojson=False)

    @app.get("/status")
    def status() -> str:
        bottle.response.content_type = "text/plain; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-store")
        return page()

    @app.get("/healthz")
    def healthz() -> str:
        bottle.response.content_type = "text/plain; charset=utf-8"
        if healthy():
            return "ok\n"
        bottle.response.status = 503
        return "database unavailable\n"

    @app.get("/metrics")
    def metrics_page() -> bytes:
        bottle.response.content_type = CONTENT_TYPE_LATEST
        bottle.response.set_header("Cache-Control", "no-store")
        return metrics()

    def plain_error(error: bottle.HTTPError) -> str:
        error.content_type = "text/plain; charset=utf-8"
        if error.status_code >= 500:
            log.error("http handler failed %s", kv(error=error.exception or error.body))
        return f"{error.status_line}\n"

    app.default_error_handler = plain_error
    return app
