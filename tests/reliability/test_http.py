"""The HTTP surface: only the documented endpoints, bounded requests, and neither a crowd of
/status requests nor slow-loris clients stall tick storage or run out of descriptors."""

import socket
import time
import urllib.error
import urllib.request

import gevent
import gevent.pool
import pytest

from helpers import FULL, complete, enable, process_usage, rows, wait_connected, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def busy_store(fake, make_store):
    store = make_store().start()
    enable(store, "AUSDT", "BUSDT", fake=fake)
    wait_connected(fake, "AUSDT", "BUSDT")
    fake.run_market(["AUSDT", "BUSDT"], 200)
    wait_for(lambda: rows(store, "AUSDT"), 5)
    yield store
    fake.stop_market()
    for symbol in ("AUSDT", "BUSDT"):
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in ("AUSDT", "BUSDT")), 30, "every id")


def raw(port, data, timeout=5):
    """Send raw bytes; return what the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            # The server answered and closed with our request still unread: the kernel
            # then resets the connection, and the answer may be lost with it.
            chunks.append(b"RESET")
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /status HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /metrics HTTP/1.0\r\n\r\n", b"200"),
        (b"GET / HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /admin HTTP/1.0\r\n\r\n", b"404"),
        (b"DELETE /status HTTP/1.0\r\n\r\n", b"405"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.0\r\n\r\n", b"414"),
        (b"GET /status HTTP/1.0\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", (b"400", b"RESET")),
        (b"GET /status HTTP/1.0\r\n" + b"X: y\r\n" * 500 + b"\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
    ],
    ids=[
        "status",
        "healthz",
        "metrics",
        "root",
        "other",
        "delete",
        "long line",
        "long header",
        "many headers",
        "tls hello",
    ],
)
def test_only_documented_endpoints_and_bounded_requests(make_store, request_bytes, status):
    store = make_store().start()
    answer = raw(store.port, request_bytes)
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer == b"RESET" or answer.split(b" ", 2)[1] in statuses, answer[:200]
    if answer == b"RESET":
        assert b"RESET" in statuses


def test_a_crowd_of_status_requests(busy_store):
    store, clients = busy_store, 1000 if FULL else 300
    _, fds_before = process_usage(store.proc.pid)
    results, counts = [], []

    def get():
        start = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{store.port}/status", timeout=30) as r:
                r.read()
                results.append(time.monotonic() - start)
        except (OSError, urllib.error.URLError):
            results.append(None)

    def watch():  # how long storage goes without a new row while the crowd is served
        while True:
            counts.append((time.monotonic(), len(rows(store, "AUSDT"))))
            gevent.sleep(0.05)

    watcher = gevent.spawn(watch)
    pool = gevent.pool.Pool(clients)
    start = time.monotonic()
    for _ in range(clients):
        pool.spawn(get)
    pool.join()
    took = time.monotonic() - start
    watcher.kill()
    failed = results.count(None)
    pause, last_change = 0.0, counts[0]
    for moment, count in counts[1:]:
        if count != last_change[1]:
            pause = max(pause, moment - last_change[0])
            last_change = (moment, count)
    print(f"{clients} concurrent /status in {took:.2f} s, failed {failed}")
    print(f"longest time without a new stored tick meanwhile: {pause * 1000:.0f} ms")
    assert failed == 0
    assert pause < 1.0
    wait_for(lambda: process_usage(store.proc.pid)[1] <= fds_before + 2, 15, "descriptors back")


def test_slow_loris_clients_are_cut_off(busy_store):
    store, clients = busy_store, 2000 if FULL else 100
    sockets = []
    try:
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", store.port), timeout=60)
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and never the end
            sockets.append(sock)
        _, fds = process_usage(store.proc.pid)
        assert fds < 400  # at most 256 handled at once, the rest wait in the listen backlog

        def cut_off(sock):
            start = time.monotonic()
            try:
                while sock.recv(1024):
                    pass
            except OSError:
                pass
            return time.monotonic() - start

        waits = [gevent.spawn(cut_off, s) for s in sockets]
        gevent.joinall(waits, timeout=60 if FULL else 20)
        assert all(w.ready() for w in waits), "a silent client was never cut off"
        print(f"{clients} slow-loris clients, last cut after {max(w.value for w in waits):.1f} s")
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.skipif(not FULL, reason="takes 30 s (make reliability)")
def test_a_client_that_trickles_is_cut_at_the_deadline(busy_store):
    store = busy_store
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", store.port), timeout=60) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        try:
            while time.monotonic() - start < 60:
                sock.sendall(b"X-A: b\r\n")
                gevent.sleep(5)  # the attack's pace, not a synchronisation
        except OSError:
            pass
    assert time.monotonic() - start < 40
