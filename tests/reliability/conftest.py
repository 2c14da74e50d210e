"""Fixtures of the reliability scenarios: an exchange that never rate-limits, a store per test.

RELIABILITY_FULL=1 (make reliability) runs each scenario at full length (`helpers.FULL`);
without it, `make test` runs a short version of each.
"""

import pytest

from tickd.fakebinance import FakeBinance


@pytest.fixture
def fake():
    # Binance's own per-IP limit is not what these tests exercise: the store's limiter is.
    with FakeBinance(ping_interval=1.0, weight_limit=10**9) as exchange:
        yield exchange
