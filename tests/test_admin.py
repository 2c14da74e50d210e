"""`python -m tickd.admin` and the Makefile targets that call it: symbols, backups, exports."""

import io
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from helpers import ROOT, query, wait_for
from tickd import admin
from tickd.database import INDEX_DDL, PRICES_DDL, SETTINGS_DDL, quote
from tickd.text import iso_time, quoted

DAY = "2026-11-30"
MIDNIGHT = 1_795_996_800_000  # 2026-11-30T00:00:00Z in ms
TICKS = [  # (id, timestamp, price): around both ends of the day, prices that must round-trip
    (100, MIDNIGHT - 1, 0.1),
    (101, MIDNIGHT, 83091.7),
    (103, MIDNIGHT, 1e-08),
    (102, MIDNIGHT + 5, 0.30000000000000004),
    (104, MIDNIGHT + 86_399_999, 123456789.123),
    (105, MIDNIGHT + 86_400_000, 2.5),
]
IN_DAY = sorted(TICKS[1:5], key=lambda t: (t[1], t[0]))
HOSTILE = 'x"; DROP TABLE symbol_settings;--'


def make_db(path, settings=(), ticks=None):
    """A database as the store leaves it: WAL, symbol_settings, a BTCUSDT table if `ticks`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SETTINGS_DDL)
        conn.executemany("INSERT INTO symbol_settings VALUES (?, ?)", settings)
        if ticks is not None:
            table = quote("prices_BTCUSDT")
            conn.execute(PRICES_DDL.format(table=table))
            conn.execute(INDEX_DDL.format(index=quote("idx_prices_BTCUSDT_timestamp"), table=table))
            with conn:
                conn.execute("BEGIN")
                conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", ticks)
    finally:
        conn.close()
    return str(path)


def settings(path):
    return query(path, "SELECT symbol, enabled FROM symbol_settings ORDER BY rowid")


def closed_port():
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(db_path, *argv, rest_url=None):
    """(status, stdout, stderr) of admin.main in this process. Binance's REST API is
    `rest_url`, by default a closed port: no test reaches the real exchange."""
    out, err = io.StringIO(), io.StringIO()
    env = {"DB_PATH": str(db_path), "BINANCE_REST_URL": rest_url or unreachable()}
    status = admin.main(list(argv), env, out, err)
    return status, out.getvalue(), err.getvalue()


def unreachable():
    return f"http://127.0.0.1:{closed_port()}"


def read_csv(text):
    header, *lines = text.splitlines()
    assert header == "id,timestamp,price,time"
    rows = []
    for line in lines:
        trade_id, ms, price, utc = line.split(",")
        assert utc == iso_time(int(ms))
        rows.append((int(trade_id), int(ms), float(price)))
    return rows


# -- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "ms"),
    [("1970-01-01", 0), ("2026-11-30", MIDNIGHT), ("2028-02-29", 1_835_395_200_000)],
)
def test_day_start_is_midnight_utc(day, ms):
    assert admin.day_start_ms(day) == ms


@pytest.mark.parametrize("day", ["2026-11-3", "20261130", "2026-13-01", "2026-02-30", "", "x"])
def test_a_day_must_be_yyyy_mm_dd(day):
    with pytest.raises(ValueError):
        admin.day_start_ms(day)


@pytest.mark.parametrize(
    ("raw", "enabled", "line"),
    [
        ("BTCUSDT", 1, ("BTCUSDT", "on", "")),
        ("BTCUSDT", 0, ("BTCUSDT", "off", "")),
        ("BTCUSDT", None, ("BTCUSDT", "off", "")),
        (" ethusdt ", 1, ('" ethusdt "', "on", "(recorded as ETHUSDT)")),
        ("BTC/USDT", 1, ('"BTC/USDT"', "off", "(invalid symbol, ignored)")),
        ("A\nB", 1, ('"A\\nB"', "off", "(invalid symbol, ignored)")),
        ('BTC"; DROP', 1, ('"BTC\\"; DROP"', "off", "(invalid symbol, ignored)")),
        ('" btc" ', 0, ('"\\" btc\\" "', "off", "(invalid symbol, ignored)")),
    ],
    ids=["on", "off", "null", "not-normalised", "invalid", "newline", "quote", "quotes"],
)
def test_rows_are_described_as_the_store_reads_them(raw, enabled, line):
    assert admin.describe(raw, enabled) == line


def test_exchange_information_is_read_as_symbol_and_status():
    body = (
        b'{"timezone":"UTC","symbols":[{"symbol":"BTCUSDT","pair":"BTCUSDT","status":"TRADING"},'
        b'{"symbol":"BTCUSDT_250328","status":"SETTLING","contractType":"CURRENT_QUARTER"}]}'
    )
    assert admin.parse_listing(body) == {"BTCUSDT": "TRADING", "BTCUSDT_250328": "SETTLING"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>",
        b"[]",
        b"{}",
        b'{"symbols":[]}',
        b'{"symbols":[{"symbol":"X"}]}',
        b'{"symbols":{"X":1}}',
        b'{"symbols":[{"symbol":1,"status":"TRADING"}]}',
        b"\xff",
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "html",
        "list",
        "no-symbols",
        "none-listed",
        "no-status",
        "not-a-list",
        "not-text",
        "not-utf8",
        "deep",
    ],
)
def test_anything_else_is_not_exchange_information(body):
    with pytest.raises(ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        admin.parse_listing(body)


@pytest.mark.parametrize(
    ("status", "warning"),
    [
        ("TRADING", None),
        (
            None,
            "warning: Binance USD-M futures does not list BTCUSD (a typo?). The store will try "
            "it anyway, and records nothing while it does not trade. "
            "To remove it: make symbol-remove SYMBOL=BTCUSD",
        ),
        (
            "SETTLING",
            "warning: Binance USD-M futures lists BTCUSD as SETTLING, not TRADING. The store "
            "will try it anyway, and records nothing while it does not trade. "
            "To remove it: make symbol-remove SYMBOL=BTCUSD",
        ),
    ],
    ids=["trading", "not-listed", "settling"],
)
def test_a_symbol_binance_does_not_trade_gets_a_warning(status, warning):
    assert admin.listing_warning("BTCUSD", status) == warning


# -- commands, in process ----------------------------------------------------------------


def test_symbol_commands_change_symbol_settings(tmp_path):
    db = make_db(tmp_path / "ticks.db")
    assert run(db, "symbols") == (0, "no symbols\n", "")
    status, out, _ = run(db, "add", " btcusdt ")
    assert status == 0 and out.startswith("BTCUSDT added, enabled;")
    assert run(db, "add", "ETHUSDT")[0] == 0
    assert settings(db) == [("BTCUSDT", 1), ("ETHUSDT", 1)]
    status, out, _ = run(db, "disable", "btcusdt")
    assert (status, settings(db)[0]) == (0, ("BTCUSDT", 0))
    assert out == (
        "BTCUSDT disabled (paused: ticks traded while paused are not recorded); "
        "the store applies it at its next settings poll\n"
    )
    assert run(db, "symbols")[1] == ("SYMBOL      STATE\nBTCUSDT     off\nETHUSDT     on\n")
    status, out, _ = run(db, "add", "BTCUSDT")
    assert (status, settings(db)[0]) == (0, ("BTCUSDT", 1))
    assert out.startswith("BTCUSDT was listed, now enabled;")
    assert run(db, "disable", "BTCUSDT")[0] == 0
    assert run(db, "enable", "BTCUSDT") == (
        0,
        "BTCUSDT enabled (from the next streamed trade; the paused time is not fetched); "
        "the store applies it at its next settings poll\n",
        "",
    )
    assert settings(db)[0] == ("BTCUSDT", 1)
    status, out, _ = run(db, "remove", "ethusdt")
    assert status == 0 and "Its table prices_ETHUSDT and its ticks stay." in out
    assert settings(db) == [("BTCUSDT", 1)]


def test_add_warns_when_binance_does_not_list_the_symbol(tmp_path, fake):
    fake.list_symbol("BTCUSDT")
    db = make_db(tmp_path / "ticks.db")
    assert run(db, "add", "btcusdt", rest_url=fake.rest_url) == (
        0,
        "BTCUSDT added, enabled; the store applies it at its next settings poll\n",
        "",
    )
    status, out, err = run(db, "add", "btcusd", rest_url=fake.rest_url)
    assert (status, out) == (
        0,
        "BTCUSD added, enabled; the store applies it at its next settings poll\n",
    )
    assert err == admin.listing_warning("BTCUSD", None) + "\n"
    assert settings(db) == [("BTCUSDT", 1), ("BTCUSD", 1)]  # added all the same


def test_add_says_when_the_listing_cannot_be_checked(tmp_path):
    db = make_db(tmp_path / "ticks.db")
    rest_url = unreachable()
    status, out, err = run(db, "add", "BTCUSDT", rest_url=rest_url)
    assert (status, out) == (
        0,
        "BTCUSDT added, enabled; the store applies it at its next settings poll\n",
    )
    assert err.startswith(
        f"could not check whether Binance lists BTCUSDT: {rest_url}/fapi/v1/exchangeInfo: "
    )
    assert "refused" in err and err.count("\n") == 1
    assert settings(db) == [("BTCUSDT", 1)]


def test_add_says_when_binance_refuses_the_listing_call(tmp_path, fake):
    fake.rest_fault(418, retry_after=120, path=admin.EXCHANGE_INFO)
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db, "add", "BTCUSDT", rest_url=fake.rest_url)
    assert (status, settings(db)) == (0, [("BTCUSDT", 1)])
    assert err == (
        f"could not check whether Binance lists BTCUSDT: {fake.rest_url}/fapi/v1/exchangeInfo: "
        "HTTP 418\n"
    )


def test_the_listing_is_read_up_to_a_size_limit(fake):
    fake.list_symbol("BTCUSDT")
    url = fake.rest_url + admin.EXCHANGE_INFO
    assert admin.listing(url) == {"BTCUSDT": "TRADING"}
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        admin.listing(url, limit=100)


def test_every_row_the_store_reads_as_the_symbol_is_changed(tmp_path):
    db = make_db(tmp_path / "ticks.db", settings=[(" btcusdt ", 1), ("BTCUSDT", 1), ("X", 1)])
    assert run(db, "disable", "BTCUSDT")[0] == 0
    assert settings(db) == [(" btcusdt ", 0), ("BTCUSDT", 0), ("X", 1)]
    assert run(db, "remove", "btcusdt")[0] == 0
    assert settings(db) == [("X", 1)]


def test_a_symbol_that_is_not_listed_is_an_error(tmp_path):
    db = make_db(tmp_path / "ticks.db", settings=[("BTCUSDT", 1)])
    for command in ("enable", "disable", "remove"):
        assert run(db, command, "ETHUSDT") == (1, "", "ETHUSDT is not in symbol_settings\n")
    assert settings(db) == [("BTCUSDT", 1)]


@pytest.mark.parametrize(
    "name", ["btc usdt", 'BTC"; DROP TABLE symbol_settings;--', " x\\y ", "A\nB", "A" * 33]
)
def test_remove_takes_the_exact_text_of_a_refused_name(tmp_path, name):
    other = name + "2"
    db = make_db(tmp_path / "ticks.db", settings=[(name, 1), ("BTCUSDT", 1), (other, 0)])
    status, out, err = run(db, "remove", name)
    assert (status, err) == (0, "")
    assert out == (
        f"{quoted(name)} removed from symbol_settings (an invalid name: the store never "
        "recorded it)\n"
    )
    assert settings(db) == [("BTCUSDT", 1), (other, 0)]  # only the row of that exact text
    status, out, err = run(db, "remove", name)
    assert (status, out) == (2, "")
    assert err.startswith(f"invalid symbol {name!r}: ") and err.count("\n") == 1
    assert err.endswith("; and no symbol_settings row has exactly this text\n")


@pytest.mark.parametrize("command", ["add", "enable", "disable", "remove", "export"])
@pytest.mark.parametrize("name", [HOSTILE, "", "BTC USDT", "A" * 33, "A\nB"])
def test_an_invalid_symbol_is_refused_with_status_2(tmp_path, command, name):
    db = make_db(tmp_path / "ticks.db", settings=[("BTCUSDT", 1)])
    status, out, err = run(db, command, name, *([DAY] if command == "export" else []))
    assert (status, out) == (2, "")
    assert err.startswith("invalid symbol ") and err.count("\n") == 1
    assert settings(db) == [("BTCUSDT", 1)]


def test_a_missing_database_is_not_created(tmp_path):
    db = tmp_path / "nowhere" / "ticks.db"
    for argv in (["symbols"], ["add", "BTCUSDT"], ["backup"], ["export", "BTCUSDT", DAY]):
        status, out, err = run(db, *argv)
        assert (status, out) == (1, "")
        assert err == (
            f"no database at {db} (from DB_PATH, default ./.data/ticks.db): "
            "start the store once, or set DB_PATH to the store's database\n"
        )
    assert not (tmp_path / "nowhere").exists()


def test_usage_errors_exit_2_and_help_exits_0(tmp_path):
    db = make_db(tmp_path / "ticks.db")
    status, _, err = run(db)
    assert status == 2 and "required: COMMAND" in err
    assert run(db, "frobnicate")[0] == 2
    assert run(db, "add")[0] == 2
    status, out, _ = run(db, "--help")
    assert status == 0 and "backup" in out and "export" in out
    out, err = io.StringIO(), io.StringIO()
    assert admin.main(["symbols"], {"DB_PATH": db, "HTTP_PORT": "x"}, out, err) == 2
    assert err.getvalue().startswith("invalid HTTP_PORT='x'")


def test_export_writes_one_utc_day_in_time_order(tmp_path):
    db = make_db(tmp_path / "ticks.db", ticks=TICKS)
    status, out, err = run(db, "export", "btcusdt", DAY)
    assert (status, err) == (0, "")
    assert read_csv(out) == IN_DAY
    assert out.splitlines()[1] == "101,1795996800000,83091.7,2026-11-30T00:00:00.000Z"
    target = tmp_path / "day.csv"
    status, out, _ = run(db, "export", "BTCUSDT", DAY, str(target))
    assert status == 0 and out == f"4 ticks of BTCUSDT on {DAY} (UTC) written to {target}\n"
    assert read_csv(target.read_text()) == IN_DAY
    assert run(db, "export", "BTCUSDT", DAY, str(target)) == (
        1,
        "",
        f"{target} exists; choose another OUT\n",
    )
    refused = tmp_path / "refused.csv"
    assert run(db, "export", "BTCUSDT", "2026-11-31", str(refused))[0] == 2
    assert run(db, "export", "ETHUSDT", DAY, str(refused)) == (
        1,
        "",
        "no table prices_ETHUSDT: ETHUSDT has never been recorded\n",
    )
    assert not refused.exists()


def test_backup_copies_into_one_checked_file_and_never_overwrites(tmp_path):
    db = make_db(tmp_path / "ticks.db", settings=[("BTCUSDT", 1)], ticks=TICKS)
    status, out, err = run(db, "backup")
    assert (status, err) == (0, "")
    (copy,) = tmp_path.glob("backup-*.db")
    assert time.strptime(copy.name, "backup-%Y%m%d-%H%M%S.db")
    assert out == f"backup {copy} ({copy.stat().st_size} bytes), integrity ok\n"
    assert query(str(copy), "SELECT * FROM prices_BTCUSDT ORDER BY id") == sorted(TICKS)
    assert query(str(copy), "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [copy.name, "ticks.db"]
    before = copy.read_bytes()
    assert run(db, "backup", str(copy)) == (1, "", f"{copy} exists; choose another OUT\n")
    assert copy.read_bytes() == before


# -- the real store, the CLI as a process, and make ---------------------------------------


def cli(db_path, *argv, timeout=30, rest_url=None):
    """`python -m tickd.admin` as a user runs it; Binance's REST API is `rest_url`, by
    default a closed port."""
    env = {**os.environ, "DB_PATH": str(db_path), "BINANCE_REST_URL": rest_url or unreachable()}
    return subprocess.run(
        [sys.executable, "-m", "tickd.admin", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA synchronous = OFF")
next_id = int(sys.argv[2])
while True:
    conn.execute("INSERT INTO prices_BTCUSDT VALUES (?, ?, 1.0)", (next_id, next_id))
    next_id += 1
"""


def test_a_backup_is_one_snapshot_while_another_program_commits_all_the_time(tmp_path):
    ticks = [(i, MIDNIGHT + i, 100.0 + i / 10) for i in range(1, 200_001)]
    db = make_db(tmp_path / "ticks.db", ticks=ticks)  # about 2,500 pages
    writer = subprocess.Popen([sys.executable, "-c", WRITER, db, str(len(ticks) + 1)])
    try:
        count = "SELECT count(*), max(id) FROM prices_BTCUSDT"
        wait_for(lambda: query(db, count)[0][0] > len(ticks), 5, "the writer to commit")
        done = cli(db, "backup", str(tmp_path / "copy.db"), timeout=15)
        assert writer.poll() is None  # it was still committing when the copy ended
    finally:
        writer.terminate()
        writer.wait(5)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("integrity ok\n")
    copied, last = query(str(tmp_path / "copy.db"), count)[0]
    assert copied == last > len(ticks)  # every row committed up to one instant, no other


@pytest.mark.slow
def test_commands_against_a_running_store(fake, make_store, tmp_path):
    fake.list_symbol("BTCUSDT")
    store = make_store().start()
    done = cli(store.db_path, "add", "btcusdt", rest_url=fake.rest_url)
    assert done.returncode == 0 and done.stdout.startswith("BTCUSDT added, enabled;")
    assert done.stderr == ""  # the fake lists it
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 5, "the store to connect")
    for _, ms, price in TICKS:
        fake.trade("BTCUSDT", price=format(Decimal(repr(price)), "f"), time_ms=ms)
    wait_for(lambda: len(store.rows("BTCUSDT")) == len(TICKS), 5, "the ticks to be stored")
    first, last = store.rows("BTCUSDT")[0], store.rows("BTCUSDT")[-1]
    assert cli(store.db_path, "symbols").stdout == (
        "SYMBOL      STATE\nBTCUSDT     on      complete since "
        f"{iso_time(first[1])} (ids {first[0]}-{last[0]})\n"
    )

    done = cli(store.db_path, "export", "BTCUSDT", DAY)
    assert done.returncode == 0
    stored = store.rows("BTCUSDT")
    in_day = [row for row in stored if MIDNIGHT <= row[1] < MIDNIGHT + 86_400_000]
    assert read_csv(done.stdout) == sorted(in_day, key=lambda t: (t[1], t[0]))
    assert [row[2] for row in stored] == [price for _, _, price in TICKS]

    fake.run_market(["BTCUSDT"], 200)  # the store writes while the backup copies
    try:
        target = tmp_path / "copy.db"
        done = cli(store.db_path, "backup", str(target))
    finally:
        fake.stop_market()
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("bytes), integrity ok\n")
    copied = query(str(target), "SELECT id, timestamp, price FROM prices_BTCUSDT ORDER BY id")
    assert len(copied) >= len(TICKS)
    assert copied == store.rows("BTCUSDT")[: len(copied)]  # a consistent snapshot

    poll = 0.2 + 1.0  # SETTINGS_POLL_INTERVAL of the test store, and a margin
    assert cli(store.db_path, "disable", "BTCUSDT").returncode == 0
    wait_for(lambda: fake.connections("BTCUSDT") == 0, poll, "the stream to stop")
    assert cli(store.db_path, "enable", "BTCUSDT").returncode == 0
    wait_for(lambda: fake.connections("BTCUSDT") == 1, poll, "the stream to start again")
    done = cli(store.db_path, "remove", "BTCUSDT")
    assert done.returncode == 0 and "its ticks stay" in done.stdout
    wait_for(lambda: fake.connections("BTCUSDT") == 0, poll, "the stream to stop")
    assert len(store.rows("BTCUSDT")) >= len(copied)
    assert store.terminate() == 0


def make(*argv, **env):
    """`make -s ARGV` in the repository, with `env` added to this process's environment."""
    return subprocess.run(
        ["make", "-s", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists(),
    reason="needs make and the local .venv the Makefile runs tickd.admin with",
)
def test_the_makefile_targets_pass_arguments_safely(tmp_path):
    db = make_db(tmp_path / "ticks.db", settings=[("BTCUSDT", 1)])

    def make_admin(*argv):
        return make(*argv, DB_PATH=db, BINANCE_REST_URL=unreachable())

    done = make_admin("symbol-add", "SYMBOL=ethusdt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ETHUSDT added, enabled;")
    assert make_admin("symbol-disable", "SYMBOL=BTCUSDT").returncode == 0
    assert make_admin("symbols").stdout == "SYMBOL      STATE\nBTCUSDT     off\nETHUSDT     on\n"
    done = make_admin("symbol-add", f"SYMBOL={HOSTILE}")
    assert done.returncode != 0
    assert f"invalid symbol {HOSTILE!r}" in done.stderr
    assert settings(db) == [("BTCUSDT", 0), ("ETHUSDT", 1)]


@pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("curl") is None, reason="needs make and curl"
)
def test_make_status_fails_when_nothing_answers():
    done = make("status", f"HTTP_PORT={closed_port()}")
    assert done.stdout == "Binance Tick Store\n\nStatus:     stopped (connection refused)\n"
    assert done.returncode != 0  # the recipe exits 1; GNU make reports a failed recipe as 2


@needs_make
@pytest.mark.parametrize(
    "argv",
    [["symbols"], ["symbol-add", "SYMBOL=BTCUSDT"], ["backup"], ["export", "SYMBOL=X", "DAY=Y"]],
    ids=["symbols", "symbol-add", "backup", "export"],
)
def test_admin_targets_without_a_virtualenv_or_docker_say_what_to_do(argv):
    done = make(*argv, "VENV=/nonexistent", "COMPOSE=false")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith(
        "no /nonexistent/bin/python and no working Docker Compose (false): "
        "run 'make install' for a local virtualenv, or 'make run' to start the store in Docker\n"
    )


@needs_make
def test_admin_targets_without_a_virtualenv_run_in_the_container():
    # printf stands in for Docker Compose: it "works", and shows each argument it was given.
    done = make("symbol-add", "VENV=/nonexistent", "COMPOSE=printf %s/", SYMBOL="btc usdt;x")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "exec/-T/tick-store/python/-m/tickd.admin/add/btc usdt;x/"
