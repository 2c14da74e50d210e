"""The database layer: the spec's DDL, idempotent writes, index use, recreated tables, and
waiting for another program's lock without blocking the gevent hub."""

import contextlib
import itertools
import os
import sqlite3

import gevent
import pytest
from gevent.monkey import get_original

from helpers import wait_for
from tickd import database
from tickd.database import Database, day_query, transaction
from tickd.wire import Tick

SPEC_PRICES = (
    'CREATE TABLE "prices_BTCUSDT" (\n'
    "    id        INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    timestamp INTEGER NOT NULL,\n"
    "    price     REAL NOT NULL\n"
    ")"
)
SPEC_SETTINGS = (
    "CREATE TABLE symbol_settings (\n"
    "    symbol  TEXT PRIMARY KEY,\n"
    "    enabled INTEGER DEFAULT 1\n"
    ")"
)


@pytest.fixture
def other(db):
    """Another program's connection to the same file."""
    conn = sqlite3.connect(db.path, isolation_level=None)
    yield conn
    conn.close()


def schema(conn):
    return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_schema_is_the_spec_ddl(db, other):
    db.ensure_table("BTCUSDT")
    tables = schema(other)
    assert tables["symbol_settings"] == SPEC_SETTINGS
    assert tables["prices_BTCUSDT"] == SPEC_PRICES
    assert tables["idx_prices_BTCUSDT_timestamp"] == (
        'CREATE INDEX "idx_prices_BTCUSDT_timestamp" ON "prices_BTCUSDT"(timestamp)'
    )
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_insert_is_idempotent_by_trade_id(db):
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(10, 1000, 1.5))
    assert db.insert("BTCUSDT", Tick(10, 1000, 1.5))
    assert db.insert_many("BTCUSDT", [Tick(9, 999, 1.4), Tick(10, 1000, 1.5), Tick(11, 1001, 1.6)])
    assert db.ticks("BTCUSDT") == [Tick(9, 999, 1.4), Tick(10, 1000, 1.5), Tick(11, 1001, 1.6)]
    assert db.max_id("BTCUSDT") == 11
    assert db.first_last("BTCUSDT") == (999, 1001)


def seq(conn, symbol="BTCUSDT"):
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (f"prices_{symbol}",))
    return row.fetchone()[0]


def wal_size(db):
    try:
        return os.path.getsize(db.path + "-wal")
    except FileNotFoundError:
        return 0


def test_a_tick_commits_two_pages_not_three_once_seq_is_ahead(db, other):
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(100, 1000, 1.5))
    assert seq(other) == 100 + database.SEQ_LEAD
    page = other.execute("PRAGMA page_size").fetchone()[0]
    before = wal_size(db)
    assert db.insert("BTCUSDT", Tick(101, 1001, 1.6))
    # The table's leaf and the index's leaf; sqlite_sequence's page stays as it was.
    assert wal_size(db) - before == 2 * (24 + page)
    assert seq(other) == 100 + database.SEQ_LEAD
    assert db.max_id("BTCUSDT") == 101


def test_seq_moves_ahead_again_when_the_ids_reach_it(db, other, monkeypatch):
    monkeypatch.setattr(database, "SEQ_LEAD", 10)
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(100, 1000, 1.5))
    assert seq(other) == 110
    assert db.insert("BTCUSDT", Tick(105, 1005, 1.5))
    assert seq(other) == 110
    assert db.insert("BTCUSDT", Tick(111, 1011, 1.5))
    assert seq(other) == 121
    # A batch in any order (a repair, an import): its highest id counts.
    assert db.insert_many("BTCUSDT", [Tick(130, 1030, 1.5), Tick(125, 1025, 1.5)])
    assert seq(other) == 140
    # Older ids (a gap filled) leave it alone; so does an id near the largest SQLite allows.
    assert db.insert_many("BTCUSDT", [Tick(50, 500, 1.5)])
    assert seq(other) == 140
    assert db.insert("BTCUSDT", Tick(2**63 - 5, 2000, 1.5))
    assert seq(other) == 2**63 - 1


def test_a_table_made_again_gets_its_seq_ahead_again(db, other):
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(100, 1000, 1.5))
    other.execute('DROP TABLE "prices_BTCUSDT"')
    assert db.insert("BTCUSDT", Tick(200, 2000, 1.5))
    assert seq(other) == 200 + database.SEQ_LEAD


def test_seq_that_cannot_move_ahead_is_logged_and_the_tick_still_stored(
    db, other, caplog, monkeypatch
):
    db.ensure_table("BTCUSDT")
    update = database.SEQ_AHEAD
    monkeypatch.setattr(database, "SEQ_AHEAD", update.replace("sqlite_sequence", "nothing"))
    assert db.insert("BTCUSDT", Tick(100, 1000, 1.5))
    assert db.ticks("BTCUSDT") == [Tick(100, 1000, 1.5)]
    assert "cannot move sqlite_sequence ahead" in caplog.text and "BTCUSDT" in caplog.text
    assert "write failed" not in caplog.text
    assert seq(other) == 100  # SQLite's own value: the highest id
    # Not tried again on every tick, but some ids later.
    monkeypatch.setattr(database, "SEQ_AHEAD", update)
    assert db.insert("BTCUSDT", Tick(101, 1001, 1.5))
    assert seq(other) == 101
    retry_at = 100 + database.SEQ_LEAD // 100
    assert db.insert("BTCUSDT", Tick(retry_at - 1, 1002, 1.5))
    assert seq(other) == retry_at - 1
    assert db.insert("BTCUSDT", Tick(retry_at, 1003, 1.5))
    assert seq(other) == retry_at + database.SEQ_LEAD


def test_hostile_symbol_text_stays_an_identifier(db, other):
    # normalise() refuses such a name long before; quoting must hold even so.
    name = 'X"; DROP TABLE symbol_settings;--'
    db.ensure_table(name)
    assert db.insert(name, Tick(1, 2, 3.0))
    assert "symbol_settings" in schema(other)
    assert other.execute(
        f'SELECT COUNT(*) FROM "prices_{name.replace(chr(34), 2 * chr(34))}"'
    ).fetchone() == (1,)


def test_first_and_last_tick_come_from_the_index(db):
    db.ensure_table("BTCUSDT")
    plan = db.file.conn.execute("EXPLAIN QUERY PLAN " + db._sql("BTCUSDT").first_last).fetchall()
    details = [row[-1] for row in plan]
    assert sum("USING COVERING INDEX idx_prices_BTCUSDT_timestamp" in d for d in details) == 2
    assert not any(d.startswith("SCAN") and d != "SCAN CONSTANT ROW" for d in details)
    # The one-query form would scan: the reason for two subqueries.
    naive = db.file.conn.execute(
        'EXPLAIN QUERY PLAN SELECT MIN(timestamp), MAX(timestamp) FROM "prices_BTCUSDT"'
    )
    assert any(row[-1].startswith("SCAN") for row in naive)


def test_the_day_query_walks_the_timestamp_index_without_sorting(db, other):
    db.ensure_table("BTCUSDT")
    assert db.insert_many(
        "BTCUSDT", [Tick(101, 1000, 1.0), Tick(100, 1000, 2.0), Tick(102, 5, 3.0)]
    )
    plan = " ".join(
        row[-1] for row in other.execute("EXPLAIN QUERY PLAN " + day_query("BTCUSDT"), (0, 1))
    )
    assert "USING INDEX idx_prices_BTCUSDT_timestamp" in plan
    assert "TEMP B-TREE" not in plan


def test_a_transaction_commits_its_block_or_rolls_all_of_it_back(other):
    with transaction(other):
        other.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    with pytest.raises(sqlite3.IntegrityError), transaction(other):
        other.execute("INSERT INTO symbol_settings (symbol) VALUES ('ETHUSDT')")
        other.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    assert not other.in_transaction
    assert other.execute("SELECT symbol FROM symbol_settings").fetchall() == [("BTCUSDT",)]


def test_no_table_and_empty_table_have_no_range(db):
    assert db.first_last("NOPE") is None
    db.ensure_table("BTCUSDT")
    assert db.first_last("BTCUSDT") is None
    assert db.max_id("BTCUSDT") is None


def test_a_table_dropped_by_hand_is_recreated_on_the_next_write(db, other):
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(1, 1, 1.0))
    other.execute('DROP TABLE "prices_BTCUSDT"')
    assert db.insert("BTCUSDT", Tick(2, 2, 2.0))
    assert db.ticks("BTCUSDT") == [Tick(2, 2, 2.0)]
    assert "idx_prices_BTCUSDT_timestamp" in schema(other)


def test_symbol_settings_dropped_by_hand_is_recreated(db, other):
    other.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    assert db.settings() == [("BTCUSDT", 1)]
    other.execute("DROP TABLE symbol_settings")
    assert db.settings() == []
    assert "symbol_settings" in schema(other)


def test_settings_keep_insertion_order(db, other):
    for name in ("ZZZ", "AAA", "MMM"):
        other.execute("INSERT INTO symbol_settings (symbol) VALUES (?)", (name,))
    other.execute("UPDATE symbol_settings SET enabled = 0 WHERE symbol = 'AAA'")
    assert db.settings() == [("ZZZ", 1), ("AAA", 0), ("MMM", 1)]


def test_a_write_waits_for_another_programs_lock_without_blocking_other_greenlets(db, other):
    db.ensure_table("BTCUSDT")
    other.execute("BEGIN EXCLUSIVE")
    ticks_of_the_clock = []

    def clock():
        while True:
            ticks_of_the_clock.append(1)
            gevent.sleep(0.01)

    def release():
        gevent.sleep(0.3)
        other.execute("COMMIT")

    ticker, releaser = gevent.spawn(clock), gevent.spawn(release)
    try:
        assert db.insert("BTCUSDT", Tick(1, 1, 1.0))  # waits about 0.3 s, cooperatively
        assert len(ticks_of_the_clock) >= 10
        # Reads do not wait for the writer at all in WAL mode.
        assert db.first_last("BTCUSDT") == (1, 1)
    finally:
        gevent.killall([ticker, releaser])


def test_a_write_locked_out_longer_than_the_wait_is_logged_and_skipped(db, other, caplog):
    db.ensure_table("BTCUSDT")
    other.execute("BEGIN EXCLUSIVE")
    try:
        assert not db.insert("BTCUSDT", Tick(1, 1, 1.0))
        # The status page's reads still answer during the lock.
        assert db.first_last("BTCUSDT") is None
    finally:
        other.execute("ROLLBACK")
    assert "write failed, ticks skipped" in caplog.text and "SQLITE_BUSY" in caplog.text
    assert db.insert("BTCUSDT", Tick(2, 2, 2.0))


def test_checkpoint_runs_in_a_thread_and_empties_the_wal(db):
    db.ensure_table("BTCUSDT")
    db.insert_many("BTCUSDT", [Tick(i, i, 1.0) for i in range(1, 1000)])
    busy, frames, done = db.file.checkpoint()
    assert busy == 0 and frames == done and frames > 0


def test_no_commit_lands_while_the_checkpoint_copies_so_the_wal_starts_again(db):
    db.ensure_table("BTCUSDT")
    written = [0]

    def writer():
        for i in itertools.count(1):  # a commit per tick, as the store writes
            assert db.insert("BTCUSDT", Tick(i, i, 1.0))
            written[0] = i
            gevent.sleep(0)

    greenlet = gevent.spawn(writer)
    try:
        frames, commits, before = [], [], 0
        for _ in range(6):
            goal = written[0] + 300
            wait_for(lambda: written[0] >= goal, 10, "300 more commits")  # noqa: B023
            busy, in_wal, done = db.file.checkpoint()
            # Commits land while it syncs the WAL, none once it holds the connection: those
            # counted now (before the writer runs again) are all in the WAL it copied.
            since, before = written[0] - before, written[0]
            assert busy == 0 and in_wal == done
            frames.append(in_wal)
            commits.append(since)
    finally:
        greenlet.kill()
    # Each checkpoint finds the frames of the commits since the one before (about three
    # pages each: a leaf of the table, one of its index, now and then a parent): the WAL was
    # started again, not appended to (copied while commits went on, it held them all).
    for in_wal, since in zip(frames[1:], commits[1:], strict=True):
        assert in_wal <= 4 * since, (frames, commits)


def test_the_wal_is_synced_while_commits_go_on_before_the_checkpoint_holds_them(db, monkeypatch):
    """The WAL's fsync, most of a checkpoint's time under load, is done before the lock."""
    db.ensure_table("BTCUSDT")
    db.insert_many("BTCUSDT", [Tick(i, i, 1.0) for i in range(1, 1000)])
    real_sync, synced = os.fdatasync, []
    committed = get_original("_thread", "allocate_lock")()  # an OS lock: for a worker thread
    committed.acquire()

    def sync(fd):  # in a worker thread
        name = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((name, committed.acquire(timeout=5)))  # a commit lands meanwhile
        real_sync(fd)

    def write():
        assert db.insert("BTCUSDT", Tick(1000, 1000, 1.0))
        committed.release()

    monkeypatch.setattr(os, "fdatasync", sync)
    writer = gevent.spawn(write)  # runs once the checkpoint waits for its thread
    try:
        busy, frames, done = db.file.checkpoint()
    finally:
        writer.kill()
    assert synced == [(os.path.realpath(db.path) + "-wal", True)]
    assert busy == 0 and frames == done and db.max_id("BTCUSDT") == 1000


def test_sqlite_takes_no_posix_lock_on_the_wal_so_syncing_it_drops_none(db, other):
    """sync_file opens and closes the -wal: closing a descriptor drops every POSIX lock this
    process holds on that file, so it is safe only because SQLite locks the database and the
    -shm, never the -wal (with a write and a read transaction open, as the store runs)."""
    db.ensure_table("BTCUSDT")
    assert db.insert("BTCUSDT", Tick(1, 1, 1.0))
    conn = db.file.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute('INSERT INTO "prices_BTCUSDT" VALUES (2, 2, 1.0)')
        other.execute("BEGIN")
        other.execute('SELECT COUNT(*) FROM "prices_BTCUSDT"').fetchone()
        inodes = {os.stat(db.path + suffix).st_ino: suffix for suffix in ("", "-wal", "-shm")}
        with open("/proc/locks") as table:
            locked = {
                inodes[int(fields[5].split(":")[2])]
                for fields in map(str.split, table)
                if "->" not in fields  # a lock being waited for: another process's
                and int(fields[4]) == os.getpid()
                and int(fields[5].split(":")[2]) in inodes
            }
        assert locked == {"", "-shm"}
        database.sync_file(db.path + "-wal")
        other.execute("COMMIT")
        other.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute('INSERT INTO "prices_BTCUSDT" VALUES (3, 3, 1.0)')  # still ours
    finally:
        conn.execute("ROLLBACK")


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "ticks.db"
    garbage = b"this is not sqlite" * 1000
    path.write_bytes(garbage)
    database = Database(str(path))
    with pytest.raises(sqlite3.DatabaseError):
        database.open()
    assert path.read_bytes() == garbage


def stored(db, first, last):
    db.ensure_table("BTCUSDT")
    db.insert_many("BTCUSDT", [Tick(i, i, 1.0) for i in range(first, last + 1)])


def reopened_file(path):
    """(integrity_check, MAX(id)) of the file at `path`, read afresh."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
        return verdict, conn.execute('SELECT MAX(id) FROM "prices_BTCUSDT"').fetchone()[0]


def test_a_replaced_file_is_reopened_with_its_own_content_not_the_old_wal(db, tmp_path):
    """SQLite leaves the -wal of a file that moved under an open connection where it is: the
    file put in its place must not be read through it."""
    stored(db, 1, 5)
    with (
        contextlib.closing(sqlite3.connect(db.path)) as live,
        contextlib.closing(sqlite3.connect(str(tmp_path / "restore.db"))) as copy,
    ):
        live.backup(copy)  # ids 1-5
    stored(db, 6, 10)  # in the WAL
    os.replace(tmp_path / "restore.db", db.path)
    assert db.file.moved() == "replaced"
    assert db.file.reopen(rescue=False) is None
    assert db.max_id("BTCUSDT") == 5
    assert db.file.moved() is None
    db.close()
    assert reopened_file(db.path) == ("ok", 5)


def test_a_deleted_file_is_copied_out_through_the_open_connection(db):
    stored(db, 1, 10)
    os.remove(db.path)
    assert db.file.moved() == "deleted"
    assert db.file.reopen(rescue=True) == db.path
    assert [tick.id for tick in db.ticks("BTCUSDT")] == list(range(1, 11))
    stored(db, 11, 11)
    db.close()
    assert reopened_file(db.path) == ("ok", 11)
