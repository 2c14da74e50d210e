"""A full disk: the store logs, keeps running and answering, and once space returns it stores
again and repairs what it skipped. The database lives on a 16 MiB tmpfs (needs root)."""

import contextlib
import os
import subprocess

import pytest

from helpers import FULL, complete, enable, wait_connected, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory):
    """Write a file until the filesystem is full; returns its path."""
    path = directory / "filler"
    with open(path, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return path


def test_a_full_disk_is_survived_and_repaired(fake, make_store, small_disk):
    symbols = ["AUSDT", "BUSDT"]
    store = make_store(DB_PATH=str(small_disk / "ticks.db"))
    store.db_path = str(small_disk / "ticks.db")
    store.start()
    enable(store, *symbols, fake=fake)
    wait_connected(fake, *symbols)
    fake.run_market(symbols, 200)
    wait_for(lambda: all(complete(store, fake, s) for s in symbols), 10)
    filler = fill(small_disk)
    wait_for(lambda: store.find("SQLITE_FULL"), 20, "a write to fail for lack of space")
    for _ in range(10 if not FULL else 100):
        code, page = store.get("/status")
        assert code == 200 and "AUSDT" in page
    assert store.proc.poll() is None
    os.remove(filler)
    fake.stop_market()
    for symbol in symbols:
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in symbols), 60, "every id")
    assert store.sql("PRAGMA integrity_check") == [("ok",)]
    # The skipped writes came back through repair; its log line may trail the rows a little.
    wait_for(lambda: store.find("gap filled"), 10, "the repair's report")
