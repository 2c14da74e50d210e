"""The history import, `python -m tickd.admin import` (tickd.history, tickd.archive and the
modules they use), against the fake exchange's archive and REST: each fault of the archive,
resuming, re-checking, the live edge."""

import datetime
import functools
import hashlib
import http.server
import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from array import array

import gevent
import pytest

from helpers import ROOT, enable, query, rows, wait_for
from tickd import admin, archive, history
from tickd.config import ConfigError, load
from tickd.database import SETTINGS_DDL, Database, quote
from tickd.fakebinance import FakeBinance, archive_path
from tickd.progress import Progress
from tickd.restdays import take
from tickd.text import iso_time
from tickd.wire import Tick

D = datetime.date
DAY = datetime.timedelta(days=1)


def utc_today():
    return datetime.datetime.now(datetime.UTC).date()


def make_db(path):
    """A database as the store leaves it when it has never recorded the symbol."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SETTINGS_DDL)
    finally:
        conn.close()
    return str(path)


def execute(path, sql, params=()):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def stored(path, symbol="BTCUSDT"):
    return query(path, f"SELECT id, timestamp, price FROM {quote('prices_' + symbol)} ORDER BY id")


def archived(fake, symbol="BTCUSDT"):
    """What the import should store: the archive's trades as the table holds them."""
    return [(a, t, float(p)) for a, t, p in fake.archived(symbol)]


def live(fake, symbol="BTCUSDT"):
    return [(t["a"], t["T"], float(t["p"])) for t in fake.history(symbol)]


def env_of(db, fake):
    return {
        "DB_PATH": str(db),
        "BINANCE_REST_URL": fake.rest_url,
        "BINANCE_ARCHIVE_URL": fake.archive_url,
    }


def run(db, fake, *argv):
    """(status, stdout, stderr) of `tickd.admin import ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    status = admin.main(["import", *argv], env_of(db, fake), out, err)
    return status, out.getvalue(), err.getvalue()


def requested(fake, since=0):
    """The archive paths asked for, from the `since`-th request on."""
    return fake.archive_requests()[since:]


def daily(symbol, day):
    return archive_path(symbol, day.isoformat())


def monthly(symbol, month):
    return archive_path(symbol, month)


# -- pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "today", "periods"),
    [
        (D(2024, 1, 1), D(2024, 1, 31), D(2024, 3, 1), ["2024-01"]),
        (D(2024, 1, 2), D(2024, 1, 31), D(2024, 3, 1), [f"2024-01-{d:02d}" for d in range(2, 32)]),
        (
            D(2023, 12, 30),
            D(2024, 3, 2),
            D(2024, 6, 1),
            ["2023-12-30", "2023-12-31", "2024-01", "2024-02", "2024-03-01", "2024-03-02"],
        ),
        (D(2024, 2, 1), D(2024, 2, 29), D(2024, 2, 29), [f"2024-02-{d:02d}" for d in range(1, 30)]),
        (D(2024, 2, 1), D(2024, 2, 29), D(2024, 3, 1), ["2024-02"]),
        (D(2024, 5, 5), D(2024, 5, 5), D(2024, 5, 5), ["2024-05-05"]),
    ],
    ids=["month", "month-but-a-day", "around-months", "month-not-over", "month-over", "today"],
)
def test_the_plan_takes_whole_months_that_are_over_as_monthly_files(first, last, today, periods):
    assert [p.name for p in archive.plan(first, last, today)] == periods


def test_a_period_knows_its_file_and_its_milliseconds():
    month = archive.Period(D(2024, 2, 1), D(2024, 2, 29))
    assert month.monthly and month.days == 29 and month.name == "2024-02"
    assert month.path("BTCUSDT") == archive_path("BTCUSDT", "2024-02")
    assert month.end_ms - month.start_ms == 29 * 86_400_000
    assert month.start_ms == admin.day_start_ms("2024-02-01")
    day = archive.Period(D(2024, 2, 3), D(2024, 2, 3))
    assert day.path("币安人生USDT") == (
        "/data/futures/um/daily/aggTrades/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT/"
        "%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT-aggTrades-2024-02-03.zip"
    )


def test_a_checksum_file_is_read_as_sha256sum_writes_it():
    digest = "0123456789abcdef" * 4
    assert archive.parse_checksum(f"{digest}  X-aggTrades-2024-01.zip\n".encode()) == digest
    assert archive.parse_checksum(digest.upper().encode()) == digest
    for body in (b"", b"<Error>NoSuchKey</Error>", b"abc  x.zip"):
        with pytest.raises(archive.FileError):
            archive.parse_checksum(body)


def read(text, day=None):
    day = day or D(2024, 1, 2)
    stats = archive.Stats()
    rows = list(archive.read_ticks(io.StringIO(text), archive.Period(day, day), stats))
    return rows, stats


JAN2 = 1704153600000  # 2024-01-02T00:00:00Z
ROWS = f"7,42000.10,0.002,70,71,{JAN2 + 5},true\n8,42000.2,0.001,72,72,{JAN2 + 9},false\n"


def test_the_header_row_is_detected_not_assumed():
    expected = [(7, JAN2 + 5, 42000.1), (8, JAN2 + 9, 42000.2)]
    assert read(ROWS) == (expected, archive.Stats(2, 7, 8, 0, False, last=8))
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
    assert read(header + "\n" + ROWS) == (expected, archive.Stats(2, 7, 8, 0, True, last=8))
    # Columns are found by name when there is a header.
    moved = f"transact_time,agg_trade_id,price\n{JAN2 + 5},7,42000.10\n"
    assert read(moved)[0] == [(7, JAN2 + 5, 42000.1)]
    assert read("") == ([], archive.Stats())


def test_rows_in_any_order_are_read_and_counted():
    text = "".join(f"{i},1.5,0.1,1,1,{JAN2 + i},true\n" for i in (5, 3, 4, 9, 9, 6))
    rows, stats = read(text)
    assert [row[0] for row in rows] == [5, 3, 4, 9, 9, 6]
    assert (stats.count, stats.low, stats.high, stats.disorder) == (6, 3, 9, 3)


def blocks_of(*id_lists):
    return [
        (array("q", ids), array("q", [JAN2 + i for i in ids]), array("d", [i / 2 for i in ids]))
        for ids in id_lists
    ]


def test_a_file_out_of_order_is_handed_on_in_sorted_chunks():
    stats = archive.Stats()
    ordered = blocks_of([1, 2, 3], [4, 5])
    assert list(archive.in_order(ordered, stats, rows=4)) == ordered  # as they come

    def disordered():
        yield from blocks_of([1, 2, 3])
        stats.disorder = 1  # the reader counts a row out of order in the next block
        yield from blocks_of([9, 7, 8], [4, 6, 5], [12, 10], [11])

    out = list(archive.in_order(disordered(), stats, rows=4))
    assert [list(ids) for ids, _, _ in out] == [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11, 12]]
    for ids, times, prices in out:  # each row's columns still together
        assert list(times) == [JAN2 + i for i in ids] and list(prices) == [i / 2 for i in ids]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agg_trade_id,price\n1,2\n", "line 1: a header without"),
        (f"7,abc,0.1,1,1,{JAN2},true\n", "line 1: not an aggTrade row"),
        (ROWS + "9,1.0\n", "line 3: not an aggTrade row"),
        (ROWS + f"9,-1.0,0.1,1,1,{JAN2},true\n", "line 3: not an aggTrade row"),
        (ROWS + f"9,nan,0.1,1,1,{JAN2},true\n", "line 3: not an aggTrade row"),
        (f"7,1.0,0.1,1,1,{JAN2 * 1000},true\n", "is not a time in ms in 2024-01-02"),
        (f"7,1.0,0.1,1,1,{JAN2 + 5 * 86_400_000},true\n", "is not a time in ms"),
    ],
    ids=["header", "price", "short", "negative", "nan", "microseconds", "other-day"],
)
def test_a_row_that_cannot_be_read_names_its_line(text, message):
    with pytest.raises(archive.FileError, match=message):
        read(text)


def test_quoted_fields_and_crlf_line_ends_are_read_too():
    text = ROWS.replace("\n", "\r\n").replace("42000.2", '"42000.2"')
    assert read(text)[0] == [(7, JAN2 + 5, 42000.1), (8, JAN2 + 9, 42000.2)]
    assert read(ROWS.rstrip("\n"))[0][-1] == (8, JAN2 + 9, 42000.2)  # no newline at the end


def test_a_file_is_read_in_a_child_process_with_its_errors(tmp_path):
    day = archive.Period(D(2024, 1, 2), D(2024, 1, 2))
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zipped:
        zipped.writestr(
            "X-aggTrades-2024-01-02.csv",
            ROWS * 1 + "".join(f"{i},1.5,0.1,1,1,{JAN2 + i},true\n" for i in range(9, 100_000)),
        )
    assert archive.csv_member(str(good), "X-aggTrades-2024-01-02.zip") == (
        "X-aggTrades-2024-01-02.csv"
    )
    reader, stats = archive.Reader(str(good), "X-aggTrades-2024-01-02.csv", day), archive.Stats()
    try:
        ticks = list(reader.ticks(stats))
    finally:
        reader.close()
    assert ticks[:2] == [(7, JAN2 + 5, 42000.1), (8, JAN2 + 9, 42000.2)]
    assert (len(ticks), stats.count, stats.low, stats.high) == (99_993, 99_993, 7, 99_999)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zipped:
        zipped.writestr("bad.csv", ROWS * 3 + "9,x\n")
    reader = archive.Reader(str(bad), "bad.csv", day)
    try:
        with pytest.raises(archive.FileError, match="line 7: not an aggTrade row"):
            list(reader.ticks(archive.Stats()))
    finally:
        reader.close()
    with pytest.raises(archive.FileError, match=r"no bad2\.csv among its 2 members"):
        with zipfile.ZipFile(tmp_path / "two.zip", "w") as zipped:
            zipped.writestr("a.csv", "")
            zipped.writestr("b.csv", "")
        archive.csv_member(str(tmp_path / "two.zip"), "bad2.zip")


def test_a_rest_page_is_taken_up_to_the_day_s_end_and_the_ids_it_skips_are_noted():
    page = [Tick(5, 10, 1.0), Tick(6, 11, 1.0), Tick(9, 12, 1.0), Tick(10, 99, 1.0)]
    assert take(page, 5, 50, None) == (page[:3], True, [(7, 8)])
    assert take(page, 3, 50, 6) == (page[:2], False, [(3, 4)])
    assert take(page, 5, 100, 9) == (page[:3], False, [(7, 8)])


def test_the_archive_url_is_configured_like_the_other_urls():
    assert load({}).archive_url == "https://data.binance.vision"
    assert load({"BINANCE_ARCHIVE_URL": "http://127.0.0.1:9/x/"}).archive_url == (
        "http://127.0.0.1:9/x"
    )
    with pytest.raises(ConfigError, match=r"invalid BINANCE_ARCHIVE_URL='data\.binance\.vision'"):
        load({"BINANCE_ARCHIVE_URL": "data.binance.vision"})


def test_progress_is_one_line_on_a_terminal_and_a_line_per_file_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    day = archive.Period(D(2024, 1, 2), D(2024, 1, 2))
    for stream in (Terminal(), io.StringIO()):
        ticks = iter(range(0, 100, 10))
        progress = Progress(stream, "BTCUSDT", 4, clock=ticks.__next__, wall=lambda: 0)
        progress.writing(day)
        progress.wrote(5000, (1, day.start_ms + 43_200_000, 1.0))  # half the day
        progress.done(day, "stored", rows=5000)
        progress.line(day, "problem:", reason="x")
        progress.close()
        if stream.isatty():
            assert stream.getvalue() == (
                # The clock moves 10 s at each reading: 5,000 rows in 20 s, half a day of 4.
                "\r\x1b[KBTCUSDT 0.5/4 days  5,000 rows  250 rows/s  ETA 2m 20s"
                "\r\x1b[KBTCUSDT 1.0/4 days  5,000 rows  125 rows/s  ETA 2m 0s"
                "\r\x1b[K1970-01-01T00:00:00.000Z BTCUSDT 2024-01-02 problem: reason=x\n"
                "\r\x1b[KBTCUSDT 1.0/4 days  5,000 rows  83 rows/s  ETA 3m 0s"
                "\r\x1b[K"
            )
        else:
            assert stream.getvalue() == (
                "1970-01-01T00:00:00.000Z BTCUSDT 2024-01-02 stored rows=5000\n"
                "1970-01-01T00:00:00.000Z BTCUSDT 2024-01-02 problem: reason=x\n"
            )


# -- imports against the fake archive ----------------------------------------------------


def test_days_and_months_are_imported_checked_and_a_rerun_downloads_nothing(tmp_path, fake):
    fake.archive("BTCUSDT", D(2023, 12, 30), D(2024, 2, 2), per_day=300)
    db = make_db(tmp_path / "ticks.db")
    start = time.monotonic()
    status, out, err = run(db, fake, "btcusdt", "2023-12-30", "2024-02-02")
    first_run = time.monotonic() - start
    assert status == 0, err
    trades = archived(fake)
    assert stored(db) == trades
    assert out.startswith(
        f"BTCUSDT 2023-12-30 .. 2024-02-02 complete: ids {trades[0][0]}..{trades[-1][0]} "
        "(10,500 trades, none missing); 5 files downloaded ("
    )
    # The elapsed time ends the line: 0s here, or 1s on a loaded machine.
    assert re.search(r" MB\), 0 periods already stored, 0 trades from REST; \d+s\n\Z", out), out
    assert requested(fake) == [
        path + suffix
        for path in (
            daily("BTCUSDT", D(2023, 12, 30)),
            daily("BTCUSDT", D(2023, 12, 31)),
            monthly("BTCUSDT", "2024-01"),
            daily("BTCUSDT", D(2024, 2, 1)),
            daily("BTCUSDT", D(2024, 2, 2)),
        )
        for suffix in (".CHECKSUM", "")
    ]
    lines = err.splitlines()
    assert len(lines) == 5 and all(" stored file=BTCUSDT-aggTrades-" in line for line in lines)
    assert "rows=9300 " in lines[2] and "header=yes ordered=yes" in lines[2]

    before = len(fake.archive_requests())
    start = time.monotonic()
    status, out, err = run(db, fake, "BTCUSDT", "2023-12-30", "2024-02-02")
    assert status == 0 and "5 periods already stored" in out
    assert requested(fake, before) == []  # nothing downloaded again
    assert time.monotonic() - start < first_run / 2
    assert err.count("already stored") == 5
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_files_before_2022_08_11_have_no_header_and_any_file_may_lack_it(tmp_path, fake):
    fake.archive("BTCUSDT", D(2022, 8, 9), D(2022, 8, 13), per_day=50)
    fake.archive_fault("no_header", "BTCUSDT", "2022-08-13")
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", "2022-08-09", "2022-08-13")
    assert status == 0, err
    assert stored(db) == archived(fake)
    headers = [line.split("header=")[1].split()[0] for line in err.splitlines()]
    assert headers == ["no", "no", "yes", "yes", "no"]


def test_a_shuffled_monthly_file_is_stored_whole(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 1, 1), D(2024, 1, 31), per_day=200)
    fake.archive_fault("shuffled", "BTCUSDT", "2024-01")
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", "2024-01-01", "2024-01-31")
    assert status == 0, err
    assert stored(db) == archived(fake)
    assert "ordered=no(" in err and "rows=6200" in err
    assert [p for p in requested(fake) if p.endswith(".zip")] == [monthly("BTCUSDT", "2024-01")]


def test_a_missing_monthly_file_is_taken_day_by_day(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 1, 30), D(2024, 3, 1), per_day=40)
    fake.archive_fault("missing", "BTCUSDT", "2024-02")
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", "2024-01-30", "2024-03-01")
    assert status == 0, err
    assert stored(db) == archived(fake)
    zips = [p for p in requested(fake) if p.endswith(".zip")]
    assert zips == [
        daily("BTCUSDT", D(2024, 1, 30)),
        daily("BTCUSDT", D(2024, 1, 31)),
        *(daily("BTCUSDT", D(2024, 2, day)) for day in range(1, 30)),
        daily("BTCUSDT", D(2024, 3, 1)),
    ]
    assert "2024-02 no monthly file, taking its days" in err


def test_an_old_missing_day_is_reported_with_its_ids_and_the_rest_is_stored(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 5), per_day=100)
    fake.archive_fault("missing", "BTCUSDT", "2024-03-03")
    db = make_db(tmp_path / "ticks.db")
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-05")
    trades = archived(fake)
    lost = trades[200:300]
    assert (status, out) == (1, "")
    assert stored(db) == trades[:200] + trades[300:]
    report = err[err.index("BTCUSDT: the import is incomplete") :]
    assert report.splitlines() == [
        "BTCUSDT: the import is incomplete",
        "  2024-03-03: not in the archive (404), and older than REST's 2-day window",
        f"    ids {lost[0][0]}..{lost[-1][0]} missing (100 trades), traded between "
        f"{iso_time(trades[199][1])} and {iso_time(trades[300][1])}",
        "Everything stored stays. Run the same command again to retry: what is stored is "
        "not downloaded again.",
    ]
    before = len(fake.archive_requests())
    assert run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-05")[0] == 1
    assert requested(fake, before) == [daily("BTCUSDT", D(2024, 3, 3)) + ".CHECKSUM"]


def test_a_missing_first_day_is_reported_even_without_a_hole_to_show_it(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 2), per_day=10)
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", "2024-02-27", "2024-03-02")
    assert status == 1
    assert stored(db) == archived(fake)
    assert (
        "  2024-02-27 .. 2024-02-29: not in the archive (404), and older than REST's 2-day "
        "window\n" in err
    )


@pytest.mark.parametrize("kind", ["missing", "lagging"])
def test_a_recent_missing_or_late_day_comes_from_rest(tmp_path, fake, kind):
    today = utc_today()
    fake.archive("BTCUSDT", today - 4 * DAY, today - DAY, per_day=1500)
    fake.archive_fault(kind, "BTCUSDT", (today - DAY).isoformat(), count=5)
    fake.trade("BTCUSDT")  # today's: REST shows that yesterday is over
    db = make_db(tmp_path / "ticks.db")
    status, out, err = run(db, fake, "BTCUSDT", (today - 4 * DAY).isoformat())
    assert status == 0, err
    assert stored(db) == archived(fake) + live(fake)
    assert "1,501 trades from REST" in out
    assert "not in the archive (yet), taking it from REST" in err
    # The day from REST is recorded: a rerun asks the archive for nothing.
    before = len(fake.archive_requests())
    status, out, _ = run(db, fake, "BTCUSDT", (today - 4 * DAY).isoformat())
    assert status == 0 and requested(fake, before) == []


def test_a_lagging_first_day_is_found_over_rest_from_its_first_trade(tmp_path, fake):
    today = utc_today()
    fake.archive("BTCUSDT", today - 3 * DAY, today - DAY, per_day=2000)
    fake.archive_fault("lagging", "BTCUSDT", (today - DAY).isoformat())
    for _ in range(3):
        fake.trade("BTCUSDT")  # today's, streamed by nobody
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", (today - DAY).isoformat())
    assert status == 0, err
    assert stored(db) == archived(fake)[-2000:] + live(fake)
    assert requested(fake) == [daily("BTCUSDT", today - DAY) + ".CHECKSUM"]


def test_a_corrupt_download_is_downloaded_again(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 2), per_day=100)
    fake.archive_fault("corrupt", "BTCUSDT", "2024-03-02")
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-02")
    assert status == 0, err
    assert stored(db) == archived(fake)
    assert "2024-03-02 checksum mismatch, downloading again" in err
    assert requested(fake).count(daily("BTCUSDT", D(2024, 3, 2))) == 2


def test_a_file_corrupt_twice_is_reported_and_not_stored(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 3), per_day=100)
    fake.archive_fault("corrupt", "BTCUSDT", "2024-03-02", count=2)
    db = make_db(tmp_path / "ticks.db")
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")
    assert (status, out) == (1, "")
    trades = archived(fake)
    assert stored(db) == trades[:100] + trades[200:]
    assert "  2024-03-02: BTCUSDT-aggTrades-2024-03-02.zip: checksum mismatch twice (" in err
    assert f"\n    ids {trades[100][0]}..{trades[199][0]} missing (100 trades), " in err
    # The archive has a good copy now: the rerun completes.
    status, _, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")
    assert status == 0, err
    assert stored(db) == trades


def test_ticks_deleted_after_an_import_are_imported_again(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 3), per_day=100)
    db = make_db(tmp_path / "ticks.db")
    assert run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")[0] == 0
    trades = archived(fake)
    execute(db, "DELETE FROM prices_BTCUSDT WHERE id = ?", (trades[150][0],))
    before = len(fake.archive_requests())
    status, _, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")
    assert status == 0, err
    assert stored(db) == trades
    assert [p for p in requested(fake, before) if p.endswith(".zip")] == [
        daily("BTCUSDT", D(2024, 3, 2))
    ]


def sha256s(db):
    return dict(query(db, "SELECT period, sha256 FROM history_import"))


def test_a_file_binance_replaced_is_stored_again_only_with_recheck(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 3), per_day=100)
    db = make_db(tmp_path / "ticks.db")
    assert run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")[0] == 0
    trades, old = archived(fake), sha256s(db)["2024-03-02"]
    # The fake's new file holds the same rows as the first: the stored copy of the day is
    # made to differ instead, as a first file with wrong prices and a wrong time leaves it.
    day = trades[100:200]
    execute(
        db,
        "UPDATE prices_BTCUSDT SET price = price + 1 WHERE id BETWEEN ? AND ?",
        (day[0][0], day[49][0]),
    )
    execute(db, "UPDATE prices_BTCUSDT SET timestamp = timestamp - 1 WHERE id = ?", (day[60][0],))
    stale = stored(db)
    fake.archive_fault("replaced", "BTCUSDT", "2024-03-02")

    before = len(fake.archive_requests())
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")
    assert status == 0, err
    assert ", 3 periods already stored (3 not re-checked), " in out
    assert requested(fake, before) == []
    assert stored(db) == stale

    before = len(fake.archive_requests())
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03", "--recheck")
    assert status == 0, err
    assert stored(db) == trades
    assert "; 1 files downloaded (" in out
    assert ", 3 periods already stored (3 files re-checked: 1 replaced, 51 rows changed), " in out
    new = sha256s(db)["2024-03-02"]
    assert new != old
    checksums = [daily("BTCUSDT", D(2024, 3, n)) + ".CHECKSUM" for n in (1, 2, 3)]
    assert requested(fake, before) == [
        checksums[0],
        checksums[1],
        checksums[1],  # fetched again with the new file, which is checked against it
        daily("BTCUSDT", D(2024, 3, 2)),
        checksums[2],
    ]
    name = "BTCUSDT-aggTrades-2024-03-02.zip"
    lines = [line.split(" ", 1)[1] for line in err.splitlines()]
    assert lines == [
        "BTCUSDT 2024-03-01 already stored, re-checked",
        f"BTCUSDT 2024-03-02 replaced in the archive, storing it again: file={name} "
        f"old={old[:16]} new={new[:16]}",
        f"BTCUSDT 2024-03-02 stored again file={name} rows=100 changed=51",
        "BTCUSDT 2024-03-02 already stored, re-checked",
        "BTCUSDT 2024-03-03 already stored, re-checked",
    ]

    # Nothing has been replaced since: only the CHECKSUMs are fetched.
    before = len(fake.archive_requests())
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03", "--recheck")
    assert status == 0, err
    assert "(3 files re-checked: 0 replaced, 0 rows changed)" in out
    assert requested(fake, before) == checksums
    assert stored(db) == trades
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_a_recheck_whose_checksum_is_gone_keeps_the_trades_and_warns(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 3), per_day=100)
    db = make_db(tmp_path / "ticks.db")
    assert run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03")[0] == 0
    recorded = sha256s(db)
    fake.archive_fault("missing", "BTCUSDT", "2024-03-02")
    status, out, err = run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-03", "--recheck")
    assert status == 0, err
    assert "(2 files re-checked: 0 replaced, 0 rows changed; 1 not re-checked)" in out
    assert (
        "BTCUSDT 2024-03-02 warning: CHECKSUM not fetched, stored trades kept "
        "file=BTCUSDT-aggTrades-2024-03-02.zip reason='not in the archive (404)'\n"
    ) in err
    assert "BTCUSDT 2024-03-02 already stored\n" in err
    assert stored(db) == archived(fake)
    assert sha256s(db) == recorded


def test_a_recheck_that_cannot_reach_the_archive_keeps_the_trades_and_warns(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 1), per_day=100)
    db = make_db(tmp_path / "ticks.db")
    assert run(db, fake, "BTCUSDT", "2024-03-01", "2024-03-01")[0] == 0
    stream = io.StringIO()
    conn = admin.connect(db)
    try:
        report = history.Importer(
            conn,
            "BTCUSDT",
            D(2024, 3, 1),
            D(2024, 3, 1),
            db_path=db,
            archive_url=closed_port_url(),
            rest=None,  # not needed: the day is stored
            progress=Progress(stream, "BTCUSDT", 0),
            sleep=lambda seconds: None,
            recheck=True,
        ).run()
    finally:
        conn.close()
    assert report.complete, report.failure()
    assert (report.skipped, report.unchecked, report.rechecked, report.replaced) == (1, 1, 0, 0)
    assert "2024-03-01 warning: CHECKSUM not fetched, stored trades kept " in stream.getvalue()
    assert "refused" in stream.getvalue()
    assert stored(db) == archived(fake)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["BTCUSDT", "2024-13-01"], "invalid FROM '2024-13-01': use YYYY-MM-DD (a UTC day)\n"),
        (["BTCUSDT", "2024-1-1"], "invalid FROM '2024-1-1': use YYYY-MM-DD (a UTC day)\n"),
        (["BTCUSDT", "2024-01-01", "x"], "invalid TO 'x': use YYYY-MM-DD (a UTC day)\n"),
        (["BTCUSDT", "2024-02-01", "2024-01-31"], "FROM 2024-02-01 is after TO 2024-01-31\n"),
        (["BTCUSDT", "2999-01-01"], "FROM 2999-01-01 is in the future (today is "),
        (["BTCUSDT", "2024-01-01", "2999-01-01"], "TO 2999-01-01 is in the future (today is "),
        (['x"; DROP TABLE symbol_settings;--', "2024-01-01"], "invalid symbol "),
        (["", "2024-01-01"], "invalid symbol '': symbol is empty\n"),
    ],
    ids=[
        "month-13",
        "not-padded",
        "to",
        "from-after-to",
        "future",
        "future-to",
        "hostile",
        "empty",
    ],
)
def test_bad_arguments_exit_2_with_a_message_and_change_nothing(tmp_path, fake, argv, message):
    db = make_db(tmp_path / "ticks.db")
    status, out, err = run(db, fake, *argv)
    assert (status, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1
    assert query(db, "SELECT name FROM sqlite_master WHERE type = 'table'") == [
        ("symbol_settings",)
    ]
    assert fake.archive_requests() == [] and fake.rest_calls() == []


def test_usage_errors_exit_2():
    out, err = io.StringIO(), io.StringIO()
    assert admin.main(["import", "BTCUSDT"], {}, out, err) == 2
    assert "FROM" in err.getvalue()


def test_trades_older_than_rest_s_window_are_reported_as_such(tmp_path):
    today = utc_today()
    # REST's window ends at noon yesterday: the morning of that day is out of its reach.
    window = time.time() - (archive.day_ms(today - DAY) / 1000 + 43_200)
    with FakeBinance(rest_window=window) as fake:
        fake.archive("BTCUSDT", today - 3 * DAY, today - DAY, per_day=480)
        fake.archive_fault("missing", "BTCUSDT", (today - DAY).isoformat())
        fake.trade("BTCUSDT")
        db = make_db(tmp_path / "ticks.db")
        status, out, err = run(db, fake, "BTCUSDT", (today - 3 * DAY).isoformat())
        trades = archived(fake)
    assert (status, out) == (1, "")
    morning = trades[960:1200]  # 480 a day, evenly spread: the first 240 of the last day
    assert stored(db) == trades[:960] + trades[1200:] + live(fake)
    reason = (
        f"{(today - DAY).isoformat()}: ids {morning[0][0]}..{morning[-1][0]} are older "
        "than REST's window (-4166) and not in the archive"
    )
    assert f"\n  {reason}\n" in err
    assert f"\n    ids {morning[0][0]}..{morning[-1][0]} missing (240 trades), traded " in err


def test_a_symbol_binance_does_not_list_is_reported(tmp_path, fake):
    db = make_db(tmp_path / "ticks.db")
    status, out, err = run(db, fake, "NOPEUSDT", utc_today().isoformat())
    assert (status, out) == (1, "")
    assert f"  {utc_today()}: Binance does not list NOPEUSDT (REST -1121)\n" in err


class Archive:
    """An archive of hand-made files (what the fake cannot make: holes, files that stop
    early), served over HTTP from a folder by the standard library's server."""

    def __init__(self, folder):
        self.folder = folder
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def put(self, symbol, day, ids, corrected=()):
        """The day's file of the trades `ids`; those in `corrected` have another price
        (0.25 higher) and time (1 ms later), as a file Binance corrects."""
        name = f"{symbol}-aggTrades-{day}"
        folder = self.folder / "data/futures/um/daily/aggTrades" / symbol
        folder.mkdir(parents=True, exist_ok=True)
        start = admin.day_start_ms(day)
        rows = "".join(
            f"{i},{100.5 + i % 7 + 0.25 * (i in corrected)},0.1,1,1,"
            f"{start + 1000 * (i % 80_000) + (i in corrected)},true\n"
            for i in ids
        )
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as zipped:
            zipped.writestr(f"{name}.csv", rows)
        digest = hashlib.sha256((folder / f"{name}.zip").read_bytes()).hexdigest()
        (folder / f"{name}.zip.CHECKSUM").write_text(f"{digest}  {name}.zip\n")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_file_with_a_hole_and_a_file_that_stops_early_are_reported(tmp_path):
    with Archive(tmp_path / "archive") as archive:
        archive.put("BTCUSDT", "2021-03-01", [*range(1, 51), *range(52, 101)])  # 51 is lost
        archive.put("BTCUSDT", "2021-03-02", range(101, 161))  # stops: 161..200 are lost
        archive.put("BTCUSDT", "2021-03-03", range(201, 301))
        db = make_db(tmp_path / "ticks.db")
        out, err = io.StringIO(), io.StringIO()
        env = {
            "DB_PATH": db,
            "BINANCE_ARCHIVE_URL": archive.url,
            "BINANCE_REST_URL": closed_port_url(),
        }
        status = admin.main(["import", "BTCUSDT", "2021-03-01", "2021-03-03"], env, out, err)
    assert (status, out.getvalue()) == (1, "")
    assert [row[0] for row in stored(db)] == [*range(1, 51), *range(52, 161), *range(201, 301)]
    lines = err.getvalue().split("BTCUSDT: the import is incomplete\n")[1].splitlines()
    assert lines[0] == (
        "  2021-03-01: BTCUSDT-aggTrades-2021-03-01.zip has a hole: 1 of the ids 1..100 are "
        "in neither the file (99 rows) nor the table"
    )
    assert lines[1].startswith("    ids 51..51 missing (1 trade), traded between 2021-03-01T")
    assert lines[2].startswith("  ids 161..200 missing (40 trades), traded between 2021-03-02T")
    assert lines[2].endswith(
        ": in no file (one stops early, or the next starts late) and out of REST's reach"
    )
    assert len(lines) == 4


def test_a_corrected_file_replaces_the_stored_prices_and_times_with_recheck(tmp_path):
    with Archive(tmp_path / "archive") as archive_server:
        archive_server.put("BTCUSDT", "2021-03-01", range(1, 101))
        db = make_db(tmp_path / "ticks.db")
        env = {
            "DB_PATH": db,
            "BINANCE_ARCHIVE_URL": archive_server.url,
            "BINANCE_REST_URL": closed_port_url(),
        }

        def imports(*flags):
            out, err = io.StringIO(), io.StringIO()
            argv = ["import", "BTCUSDT", "2021-03-01", "2021-03-01", *flags]
            return admin.main(argv, env, out, err), out.getvalue(), err.getvalue()

        assert imports()[0] == 0
        first = stored(db)
        archive_server.put("BTCUSDT", "2021-03-01", range(1, 101), corrected={7, 8, 50})
        status, out, err = imports()
        assert status == 0, err
        assert stored(db) == first
        assert ", 1 periods already stored (1 not re-checked), " in out

        status, out, err = imports("--recheck")
        assert status == 0, err
        assert "1 periods already stored (1 files re-checked: 1 replaced, 3 rows changed)" in out
        changed = {row[0]: row for row in first}
        for i in (7, 8, 50):
            changed[i] = (i, changed[i][1] + 1, changed[i][2] + 0.25)
        assert stored(db) == sorted(changed.values())

        checksum = archive_server.folder / (
            "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2021-03-01.zip.CHECKSUM"
        )
        checksum.write_text("<Error><Code>InternalError</Code></Error>")
        status, out, err = imports("--recheck")
    assert status == 0, err
    assert ", 1 periods already stored (1 not re-checked), " in out
    assert "warning: CHECKSUM not fetched, stored trades kept " in err
    assert "reason='the CHECKSUM file holds no sha256'" in err
    assert stored(db) == sorted(changed.values())


# -- beside a running store, killed, as a process ---------------------------------------


def cli(db, fake, *argv, **popen):
    env = {**os.environ, **env_of(db, fake)}
    return subprocess.Popen(
        [sys.executable, "-m", "tickd.admin", "import", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc, timeout=60):
    """(status, stdout, stderr) of a child, waited for cooperatively (the fake it talks to
    runs in this process)."""
    wait_for(lambda: proc.poll() is not None, timeout, "the import to end")
    out, err = proc.communicate()
    return proc.returncode, out, err


def records(db):
    try:
        return query(db, "SELECT period FROM history_import ORDER BY period")
    except sqlite3.OperationalError:
        return []


def test_an_import_killed_at_any_moment_completes_when_run_again(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 8), per_day=40_000)
    db = make_db(tmp_path / "ticks.db")
    proc = cli(db, fake, "BTCUSDT", "2024-03-01", "2024-03-08")
    try:
        wait_for(lambda: len(records(db)) >= 2, 60, "two days stored")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = [period for (period,) in records(db)]
    assert len(done) < 8  # killed before the end
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert any(name.startswith("ticks.db.import-") for name in os.listdir(tmp_path))

    before = len(fake.archive_requests())
    status, _, err = finish(cli(db, fake, "BTCUSDT", "2024-03-01", "2024-03-08"))
    assert status == 0, err
    assert stored(db) == archived(fake)
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    again = requested(fake, before)
    assert again and not any(
        f"-aggTrades-{period}.zip" in path for path in again for period in done
    )
    assert not [name for name in os.listdir(tmp_path) if ".import-" in name]


def test_the_store_keeps_writing_while_an_import_runs(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 6), per_day=50_000)
    db = make_db(tmp_path / "ticks.db")
    store = Database(db)  # the store's own writes: busy timeout 0, cooperative wait, 5 s
    store.open()
    store.ensure_table("ETHUSDT")
    latencies, failures = [], []

    def record():
        tick = 1
        while True:
            start = time.monotonic()
            if not store.insert("ETHUSDT", Tick(tick, tick, 1.0)):
                failures.append(tick)
            latencies.append(time.monotonic() - start)
            tick += 1
            gevent.sleep(0.005)

    writer = gevent.spawn(record)
    try:
        status, _, err = finish(cli(db, fake, "BTCUSDT", "2024-03-01", "2024-03-06"))
    finally:
        writer.kill()
        store.close()
    assert status == 0, err
    assert stored(db) == archived(fake)
    assert failures == []
    # Given way to: the writes went on (one per 5 ms at most), none waited long.
    assert len(latencies) > 100 and max(latencies) < 1.5  # the store gives up after 5 s


@pytest.mark.slow
def test_an_import_up_to_the_live_edge_joins_the_streamed_ticks(tmp_path, fake, make_store):
    today = utc_today()
    fake.archive("BTCUSDT", today - 3 * DAY, today - DAY, per_day=500)
    for _ in range(1200):  # traded today before the store started: only REST has them
        fake.trade("BTCUSDT")
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 10, "the store to connect")
    for _ in range(20):
        fake.trade("BTCUSDT")
    wait_for(lambda: len(rows(store, "BTCUSDT")) == 20, 10, "the streamed ticks")
    streamed = store.rows("BTCUSDT")

    status, out, err = finish(cli(store.db_path, fake, "BTCUSDT", (today - 3 * DAY).isoformat()))
    assert status == 0, err
    assert "1,200 trades from REST" in out
    for _ in range(5):
        fake.trade("BTCUSDT")
    everything = archived(fake) + live(fake)
    wait_for(lambda: store.rows("BTCUSDT") == everything, 10, "every id, without a hole")
    assert store.rows("BTCUSDT")[-25:-5] == streamed
    assert store.terminate() == 0


# -- make --------------------------------------------------------------------------------


def make(*argv, **env):
    return subprocess.Popen(
        ["make", "-s", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(
    not (ROOT / ".venv" / "bin" / "python").exists(), reason="make import runs the .venv"
)
def test_make_import_passes_its_arguments_as_single_arguments(tmp_path, fake):
    fake.archive("BTCUSDT", D(2024, 3, 1), D(2024, 3, 2), per_day=10)
    db = make_db(tmp_path / "ticks.db")
    env = env_of(db, fake)
    status, out, err = finish(
        make("import", "SYMBOL=btcusdt", "FROM=2024-03-01", "TO=2024-03-02", **env)
    )
    assert status == 0, err
    assert out.startswith("BTCUSDT 2024-03-01 .. 2024-03-02 complete: ")
    assert stored(db) == archived(fake)
    status, out, err = finish(make("import", "SYMBOL=btc usdt;x", "FROM=2024-03-01", **env))
    assert status != 0 and "invalid symbol 'btc usdt;x'" in err


def test_an_archive_that_cannot_be_reached_is_a_download_failure(tmp_path):
    db = make_db(tmp_path / "ticks.db")
    conn = admin.connect(db)
    try:
        importer = history.Importer(
            conn,
            "BTCUSDT",
            D(2024, 3, 1),
            D(2024, 3, 1),
            db_path=db,
            archive_url=closed_port_url(),
            rest=None,  # not needed: the day is too old for REST
            sleep=lambda seconds: None,
        )
        report = importer.run()
    finally:
        conn.close()
    assert not report.complete
    (problem,) = report.problems
    assert problem.reason.startswith("BTCUSDT-aggTrades-2024-03-01.zip: download failed: ")
    assert "refused" in problem.reason
