"""Shared fixtures; the test process is monkey-patched like the store itself.

Helpers that are not fixtures live in helpers.py.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import os  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from helpers import FULL, stores_against, wait_for  # noqa: E402
from tickd.database import Database  # noqa: E402
from tickd.fakebinance import FakeBinance  # noqa: E402

# make reliability runs the property tests with many more examples.
settings.register_profile("full", max_examples=20_000, deadline=None)
if FULL:
    settings.load_profile("full")

# The hub's event loop and thread pool open descriptors once per process, on first use:
# open them now, so the leak check below sees only what a test itself leaves behind.
gevent.get_hub().threadpool.apply(int)
gevent.sleep(0)


def _live_greenlets():
    return {g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead}


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test ends with no greenlet of its own alive and no descriptor left open."""
    greenlets, fds = _live_greenlets(), _open_fds()
    yield
    wait_for(lambda: not (_live_greenlets() - greenlets), 3, "the test's greenlets to end")
    try:
        wait_for(lambda: not (_open_fds() - fds), 3, "the test's descriptors to close")
    except AssertionError:
        leaked = [os.readlink(f"/proc/self/fd/{fd}") for fd in _open_fds() - fds]
        raise AssertionError(f"descriptors left open: {leaked}") from None


@pytest.fixture
def db(tmp_path):
    """The store's Database on a new file, open; closed at the end."""
    database = Database(str(tmp_path / "ticks.db"), lock_wait=1.0)
    database.open()
    yield database
    database.close()


@pytest.fixture
def fake():
    with FakeBinance(ping_interval=1.0) as exchange:
        yield exchange


@pytest.fixture
def make_store(tmp_path, fake):
    """Builds Stores pointed at the fake exchange; kills whatever is left at the end."""
    with stores_against(tmp_path, fake) as make:
        yield make
