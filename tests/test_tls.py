"""The fake exchange over TLS (`wss://`, `https://`, a throwaway CA), and the store trusting
that CA through `SSL_CERT_FILE` alone: verification stays on for every client here."""

import json
import os
import ssl
import urllib.request

import pytest
import websocket

from helpers import (
    enable,
    expected,
    rows,
    stores_against,
    wait_complete,
    wait_connected,
    wait_for,
)
from tickd.fakebinance import FakeBinance
from tickd.limits import WeightLimiter
from tickd.rest import Rest, RestError, tls_context
from tickd.stream import dial

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def tls_fake():
    with FakeBinance(ping_interval=1.0, tls=True) as exchange:
        yield exchange


@pytest.fixture
def make_tls_store(tmp_path, tls_fake, monkeypatch):
    """Builds Stores pointed at the TLS fake. Only SSL_CERT_FILE makes them trust its CA: the
    variables OpenSSL also reads are removed from their environment."""
    for name in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with stores_against(tmp_path, tls_fake, SSL_CERT_FILE=tls_fake.ca_file) as make:
        yield make


def trusting(fake):
    """A client context that trusts the fake's CA and nothing else; verification on."""
    context = ssl.create_default_context(cafile=fake.ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


def test_plain_by_default(fake):
    assert fake.ws_url.startswith("ws://") and fake.rest_url.startswith("http://")
    assert fake.ca_file is None


def test_the_ca_file_lasts_as_long_as_the_fake(tmp_path):
    with FakeBinance(tls=True) as fake:
        made = fake.ca_file
        assert fake.ws_url.startswith("wss://127.0.0.1:")
        assert fake.rest_url.startswith("https://127.0.0.1:")
        with open(made) as pem:
            assert pem.read().startswith("-----BEGIN CERTIFICATE-----")
    assert not os.path.exists(made)
    assert not os.path.exists(os.path.dirname(made))
    chosen = tmp_path / "ca.pem"
    with FakeBinance(tls=True, ca_file=str(chosen)) as fake:
        assert fake.ca_file == str(chosen)
        first = chosen.read_bytes()
    assert chosen.read_bytes() == first  # a path given is the caller's: it stays
    with FakeBinance(tls=True, ca_file=str(chosen)):
        assert chosen.read_bytes() != first  # a new CA at every start


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_ca_gets_trades_and_pages(tls_fake, host):
    tls_fake.list_symbol("BTCUSDT")
    context = trusting(tls_fake)
    ws_url = tls_fake.ws_url.replace("127.0.0.1", host)
    ws = websocket.create_connection(
        f"{ws_url}/btcusdt@aggTrade", timeout=5, sslopt={"context": context}
    )
    try:
        wait_connected(tls_fake, "BTCUSDT", timeout=5)
        made = tls_fake.trade("BTCUSDT")
        assert json.loads(ws.recv()) == made
    finally:
        ws.close()
    url = tls_fake.rest_url.replace("127.0.0.1", host) + "/fapi/v1/aggTrades?symbol=BTCUSDT"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        assert [row["a"] for row in json.loads(response.read())] == [made["a"]]
    assert tls_fake.tls_refusals() == []


def test_the_store_refuses_the_fake_without_its_ca(tls_fake, monkeypatch):
    # The store's own context (system CAs, hostname checked) and its own dial and REST call.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    tls_fake.list_symbol("BTCUSDT")
    context = tls_context()
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        dial(f"{tls_fake.ws_url}/btcusdt@aggTrade", 5.0, context)
    rest = Rest(tls_fake.rest_url, WeightLimiter(2400), ssl_context=context)
    with pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED"):
        rest.agg_trades("BTCUSDT")
    # Each client hung up during the handshake, telling the fake why; nothing got through.
    wait_for(lambda: len(tls_fake.tls_refusals()) == 2, 5, "two refused handshakes")
    assert {reason for _, reason in tls_fake.tls_refusals()} == {"TLSV1_ALERT_UNKNOWN_CA"}
    assert tls_fake.handshakes() == [] and tls_fake.rest_calls() == []


def test_a_plain_client_gets_no_answer_from_the_tls_port(tls_fake):
    url = tls_fake.rest_url.replace("https://", "http://") + "/fapi/v1/exchangeInfo"
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5).close()
    wait_for(tls_fake.tls_refusals, 5, "a refused handshake")


@pytest.mark.slow
def test_the_store_records_over_wss_and_repairs_over_https(tls_fake, make_tls_store):
    store = make_tls_store().start()
    enable(store, "BTCUSDT", fake=tls_fake)
    wait_connected(tls_fake, "BTCUSDT", timeout=10)
    for _ in range(5):
        tls_fake.trade("BTCUSDT")
    wait_for(lambda: len(rows(store, "BTCUSDT")) == 5, 5, "5 ticks over wss")
    tls_fake.close("BTCUSDT", 1008)
    missed = [tls_fake.trade("BTCUSDT") for _ in range(20)]  # none reaches the closing socket
    wait_for(lambda: tls_fake.connections("BTCUSDT") == 1, 10, "the reconnection over wss")
    tls_fake.trade("BTCUSDT")
    wait_complete(store, tls_fake, "BTCUSDT", timeout=10)
    assert rows(store, "BTCUSDT") == expected(tls_fake, "BTCUSDT")
    gap = f"ids={missed[0]['a']}-{missed[-1]['a']} count=20"
    assert f"gap found symbol=BTCUSDT {gap} by=stream" in store.log()
    assert tls_fake.rest_calls(), "the gap was filled through REST over https"
    assert tls_fake.tls_refusals() == []
    assert store.find("stream connected symbol=BTCUSDT url=wss://")
    assert store.terminate() == 0
