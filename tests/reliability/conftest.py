"""Fixtures of the reliability scenarios: an exchange that never rate-limits, a store per test.

RELIABILITY_FULL=1 (make reliability) runs each scenario at full length; without it, `make test`
runs a short version of each.
"""

import os

import pytest

from conftest import wait_for
from tickd.fakebinance import FakeBinance

FULL = os.environ.get("RELIABILITY_FULL") == "1"


@pytest.fixture
def fake():
    # Binance's own per-IP limit is not what these tests exercise: the store's limiter is.
    with FakeBinance(ping_interval=1.0, weight_limit=10**9) as exchange:
        yield exchange


def enable(store, fake, symbols):
    """List `symbols` at the exchange and enable them in the store."""
    for symbol in symbols:
        fake.list_symbol(symbol)
    store.sql(
        "INSERT INTO symbol_settings (symbol) VALUES " + ",".join("(?)" for _ in symbols),
        tuple(symbols),
    )


def wait_connected(fake, symbols, timeout=60):
    wait_for(
        lambda: all(fake.connections(s) == 1 for s in symbols), timeout, "every stream to connect"
    )
