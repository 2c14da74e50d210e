"""GET /metrics: the collector over fake objects, and the exposition of a running store."""

import sqlite3
import urllib.request
from types import SimpleNamespace

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import wait_for
from tickd import metrics
from tickd.coverage import Run
from tickd.ledger import Ranges as Gaps
from tickd.limits import WeightLimiter
from tickd.repair import Stats

MINUTE = 1_795_000_020.0  # a UTC minute boundary, seconds since the epoch


def fake_stream(trades=0, connected=True, reconnects=0, last_timestamp=None, queued=()):
    stats, gaps = Stats(), Gaps()
    for first, last in queued:
        gaps.add(first, last)
    return SimpleNamespace(
        intake=SimpleNamespace(trades=trades, last_timestamp=last_timestamp),
        checks=SimpleNamespace(unconfirmed=0),
        connected=connected,
        reconnects=reconnects,
        stats=stats,
        repair=SimpleNamespace(gaps=gaps),
    )


def collector(
    streams,
    *,
    weight=None,
    attempts=0,
    db_path="/nonexistent/ticks.db",
    latency=None,
    runs=None,
    deferred=0,
):
    return metrics.StoreCollector(
        streams=lambda: streams,
        weight=weight or WeightLimiter(1200, clock=lambda: MINUTE),
        attempts=SimpleNamespace(total=attempts),
        db=SimpleNamespace(path=db_path, write_latency=latency or metrics.Latency((0.001, 0.01))),
        uptime=lambda: 90.5,
        runs=lambda: runs or {},
        deferred=lambda: deferred,
    )


def scrape(source):
    """{(sample name, sorted labels): value} and {family name: type} of one exposition."""
    text = prometheus_client.generate_latest(source).decode()
    families = list(text_string_to_metric_families(text))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return samples, {family.name: family.type for family in families}


def sym(name):
    return (("symbol", name),)


def test_per_symbol_series_carry_the_streams_counters():
    btc = fake_stream(12, True, 3, 1_795_000_000_123, queued=[(5, 9), (20, 20)])
    btc.stats.gaps_found, btc.stats.gaps_filled, btc.stats.ids_repaired = 4, 2, 40
    btc.stats.ids_unfillable, btc.stats.write_errors = 7, 1
    btc.checks.unconfirmed = 2
    eth = fake_stream(connected=False)
    samples, types = scrape(collector({"BTCUSDT": btc, "ETHUSDT": eth}))
    assert samples[("tickstore_ticks_received_total", sym("BTCUSDT"))] == 12
    assert samples[("tickstore_stream_connected", sym("BTCUSDT"))] == 1
    assert samples[("tickstore_reconnects_total", sym("BTCUSDT"))] == 3
    assert samples[("tickstore_last_tick_timestamp_seconds", sym("BTCUSDT"))] == 1_795_000_000.123
    assert samples[("tickstore_gaps_found_total", sym("BTCUSDT"))] == 4
    assert samples[("tickstore_gaps_filled_total", sym("BTCUSDT"))] == 2
    assert samples[("tickstore_ids_repaired_total", sym("BTCUSDT"))] == 40
    assert samples[("tickstore_ids_unfillable_total", sym("BTCUSDT"))] == 7
    assert samples[("tickstore_ids_queued", sym("BTCUSDT"))] == 6
    assert samples[("tickstore_write_errors_total", sym("BTCUSDT"))] == 1
    assert samples[("tickstore_frames_unconfirmed_total", sym("BTCUSDT"))] == 2
    assert samples[("tickstore_ticks_received_total", sym("ETHUSDT"))] == 0
    assert samples[("tickstore_stream_connected", sym("ETHUSDT"))] == 0
    # No trade yet: no timestamp rather than a misleading 0 (1970).
    assert ("tickstore_last_tick_timestamp_seconds", sym("ETHUSDT")) not in samples
    assert types["tickstore_ticks_received"] == "counter"
    assert types["tickstore_ids_queued"] == "gauge"


def test_process_wide_series():
    clock = [MINUTE + 10]
    weight = WeightLimiter(600, clock=lambda: clock[0], sleep=lambda s: None)
    weight.acquire(20)
    weight.acquire(20)
    samples, types = scrape(collector({}, weight=weight, attempts=9, deferred=31))
    assert samples[("tickstore_rest_weight_used_total", ())] == 40
    assert samples[("tickstore_rest_weight_minute", ())] == 40
    assert samples[("tickstore_rest_weight_budget", ())] == 600
    assert samples[("tickstore_connection_attempts_total", ())] == 9
    assert samples[("tickstore_reader_deferrals_total", ())] == 31
    assert samples[("tickstore_sqlite_info", (("version", sqlite3.sqlite_version),))] == 1
    assert samples[("tickstore_uptime_seconds", ())] == 90.5
    assert types["tickstore_rest_weight_used"] == "counter"
    assert types["tickstore_sqlite_info"] == "gauge"
    clock[0] += 60  # a quiet minute: nothing spent in it, whatever the last one spent
    samples, _ = scrape(collector({}, weight=weight))
    assert samples[("tickstore_rest_weight_minute", ())] == 0
    assert samples[("tickstore_rest_weight_used_total", ())] == 40


def test_write_durations_are_a_histogram_with_cumulative_buckets():
    latency = metrics.Latency((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 0.05, 3.0):
        latency.observe(seconds)
    samples, types = scrape(collector({}, latency=latency))
    name = "tickstore_write_duration_seconds"
    assert types[name] == "histogram"
    buckets = {le: samples[(f"{name}_bucket", (("le", le),))] for le in ("0.001", "0.01", "0.1")}
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 5}
    assert samples[(f"{name}_bucket", (("le", "+Inf"),))] == 6
    assert samples[(f"{name}_count", ())] == 6
    assert samples[(f"{name}_sum", ())] == pytest.approx(3.1035)


def test_file_sizes_are_read_when_scraped_and_a_missing_file_is_zero(tmp_path):
    db = tmp_path / "ticks.db"
    db.write_bytes(b"x" * 4096)
    source = collector({}, db_path=str(db))
    samples, _ = scrape(source)
    assert samples[("tickstore_db_bytes", ())] == 4096
    assert samples[("tickstore_wal_bytes", ())] == 0
    (tmp_path / "ticks.db-wal").write_bytes(b"y" * 100)
    samples, _ = scrape(source)
    assert samples[("tickstore_wal_bytes", ())] == 100


@pytest.mark.parametrize(
    "symbol",
    [
        'X"} 1\ntickstore_forged_total 1\n#',
        "BACK\\SLASH\\",
        "NEW\nLINE",
        'Q"UOTE',
        "BRACE}",
        "币安人生USDT",
    ],
    ids=["forged-line", "backslash", "newline", "quote", "brace", "cjk"],
)
def test_no_symbol_can_forge_a_series(symbol):
    samples, types = scrape(collector({symbol: fake_stream(5), "BTCUSDT": fake_stream(7)}))
    assert samples[("tickstore_ticks_received_total", sym(symbol))] == 5
    assert samples[("tickstore_ticks_received_total", sym("BTCUSDT"))] == 7
    assert not any("forged" in name for name in types)
    received = [key for key in samples if key[0] == "tickstore_ticks_received_total"]
    assert len(received) == 2


def test_metrics_say_since_when_each_table_is_complete():
    samples, types = scrape(collector({}, runs={"BTCUSDT": Run(12, 1_735_689_600_123, 99)}))
    assert samples[("tickstore_complete_since_id", sym("BTCUSDT"))] == 12
    assert samples[("tickstore_complete_since_timestamp_seconds", sym("BTCUSDT"))] == (
        1_735_689_600.123
    )
    assert types["tickstore_complete_since_id"] == "gauge"


def test_the_registry_adds_process_and_platform_collectors():
    samples, _ = scrape(metrics.registry(collector({})))
    names = {name for name, _ in samples}
    assert "tickstore_uptime_seconds" in names
    assert "process_start_time_seconds" in names  # Linux: read from /proc
    assert "python_info" in names


@pytest.mark.slow
def test_a_running_store_exposes_its_counters(fake, make_store):
    fake.list_symbol("BTCUSDT")
    store = make_store(STREAM_SILENCE_TIMEOUT="500ms").start()
    store.sql("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    trades = [fake.trade("BTCUSDT") for _ in range(5)]
    wait_for(lambda: len(store.rows("BTCUSDT")) == 5, 5, "5 stored ticks")

    def scraped():
        url = f"http://127.0.0.1:{store.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
            text = response.read().decode()
        families = text_string_to_metric_families(text)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
        }

    # A silence check (REST, weight 20) follows half a second without a trade.
    samples = wait_for(
        lambda: (s := scraped())[("tickstore_rest_weight_used_total", ())] >= 20 and s,
        5,
        "a silence check's REST weight",
    )
    assert samples[("tickstore_ticks_received_total", sym("BTCUSDT"))] == 5
    assert samples[("tickstore_stream_connected", sym("BTCUSDT"))] == 1
    assert samples[("tickstore_last_tick_timestamp_seconds", sym("BTCUSDT"))] == pytest.approx(
        trades[-1]["T"] / 1000
    )
    assert samples[("tickstore_ids_queued", sym("BTCUSDT"))] == 0
    assert samples[("tickstore_connection_attempts_total", ())] >= 1
    assert samples[("tickstore_reader_deferrals_total", ())] >= 0  # the running store's
    assert samples[("tickstore_rest_weight_budget", ())] == 1200
    assert samples[("tickstore_write_duration_seconds_count", ())] >= 5
    assert samples[("tickstore_db_bytes", ())] > 0
    assert samples[("tickstore_sqlite_info", (("version", sqlite3.sqlite_version),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0
