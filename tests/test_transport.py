"""transport.Connection: one read of the socket per wake-up, TLS decrypted from memory.

The peer here is the other end of a socket pair speaking TLS from memory too, so that each test
decides where the ciphertext is cut and when it arrives."""

import socket
import ssl

import gevent
import pytest
import trustme
import websocket
from gevent import socket as gsocket

from helpers import wait_for
from tickd import transport
from tickd.fakebinance import FakeBinance
from tickd.transport import Connection

pytestmark = pytest.mark.timeout(10)

HOST = "stream.tickd.test"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


class Peer:
    """The server end: TLS through memory buffers, its ciphertext sent when the test says."""

    def __init__(self, sock, ca):
        self.sock = sock
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(HOST).configure_cert(context)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    return  # the client hung up (it refused our certificate)
                self.incoming.write(data)
            else:
                self.sock.sendall(self.outgoing.read())
                return

    def records(self, *messages: bytes) -> bytes:
        """The ciphertext of one TLS record per message, not sent."""
        for message in messages:
            self.tls.write(message)
        return self.outgoing.read()

    def receive(self, size: int) -> bytes:
        """`size` bytes of plaintext from the client."""
        data = b""
        while len(data) < size:
            try:
                data += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self.incoming.write(self.sock.recv(65536))
        return data


@pytest.fixture
def pair():
    ours, theirs = gsocket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def meet(pair, ca, hostname):
    """Our Connection to `hostname` (trusting `ca`), its peer, and the peer's handshake
    running in a greenlet; our handshake is the caller's."""
    ours, theirs = pair
    context = ssl.create_default_context()
    ca.configure_trust(context)
    peer = Peer(theirs, ca)
    return Connection(ours, context, hostname), peer, gevent.spawn(peer.handshake)


@pytest.fixture
def tls(pair, ca):
    """A Connection after its handshake, and its peer."""
    connection, peer, server = meet(pair, ca, HOST)
    connection.handshake()
    server.get(timeout=5)
    yield connection, peer
    connection.close()


def test_a_record_cut_in_two_is_handed_out_once_whole(tls):
    connection, peer = tls
    record = peer.records(b"a whole frame")
    reader = gevent.spawn(connection.read)
    peer.sock.sendall(record[:7])  # the header and two bytes of the body
    reader.join(timeout=0.1)
    assert not reader.ready(), "a part of a record is not plaintext"
    peer.sock.sendall(record[7:])
    assert reader.get(timeout=5) == b"a whole frame"


def test_records_that_arrived_together_come_out_of_one_read(tls):
    connection, peer = tls
    peer.sock.sendall(peer.records(b"one ", b"two ", b"three"))  # in the socket at once
    assert connection.read() == b"one two three"


def test_bytes_that_arrive_after_a_drained_read_wake_the_reader(tls):
    connection, peer = tls
    for number in range(3):  # each read drains the socket; the next waits for it to be readable
        message = f"frame {number}".encode()
        reader = gevent.spawn(connection.read)
        gevent.sleep(0)  # the reader now waits
        peer.sock.sendall(peer.records(message))
        assert reader.get(timeout=5) == message


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
def test_a_backlog_is_read_a_share_at_a_time_and_others_run_between(pair, ca, secure):
    if secure:
        connection, peer, server = meet(pair, ca, HOST)
        connection.handshake()
        server.get(timeout=5)
        backlog = peer.records(*[bytes([65 + n % 26]) * 1000 for n in range(64)])
        expected = b"".join(bytes([65 + n % 26]) * 1000 for n in range(64))
    else:
        connection = Connection(pair[0])
        backlog = expected = bytes(range(256)) * 256
    pair[1].sendall(backlog)  # 64 KB waiting in the socket at once
    received = b""
    reads = 0
    while len(received) < len(expected):
        turn = gevent.spawn(lambda: None)  # ready to run: it must get the hub before the read
        data = connection.read()
        assert turn.dead, "a read with bytes waiting must still let other greenlets run first"
        assert len(data) <= transport.READ_SIZE
        received += data
        reads += 1
    assert received == expected
    assert reads >= len(backlog) // transport.READ_SIZE
    connection.close()


def test_recv_hands_out_at_most_what_is_asked_and_keeps_the_rest(tls):
    connection, peer = tls
    peer.sock.sendall(peer.records(b"HTTP/1.1 101\r\n", b"frames"))
    assert [connection.recv(1) for _ in range(4)] == [b"H", b"T", b"T", b"P"]
    assert connection.recv(100) == b"/1.1 101\r\n"
    assert connection.read() == b"frames"


def test_sent_bytes_arrive_encrypted_and_whole(tls):
    connection, peer = tls
    message = bytes(range(256)) * 400  # several records
    assert connection.send(message) == len(message)
    assert peer.receive(len(message)) == message


def test_the_end_of_the_tls_session_ends_the_reading(tls):
    connection, peer = tls
    peer.sock.sendall(peer.records(b"last"))
    with pytest.raises(ssl.SSLWantReadError):
        peer.tls.unwrap()  # its close_notify is out; it would wait for ours
    peer.sock.sendall(peer.outgoing.read())
    assert connection.read() == b"last"
    assert connection.read() == b""


def test_the_end_of_the_tcp_connection_ends_the_reading(tls):
    connection, peer = tls
    peer.sock.sendall(peer.records(b"last"))
    peer.sock.shutdown(socket.SHUT_WR)
    assert connection.read() == b"last"
    assert connection.read() == b""


def test_a_corrupt_record_is_an_error(tls):
    connection, peer = tls
    record = bytearray(peer.records(b"frame"))
    record[-1] ^= 0xFF  # its authentication tag no longer matches
    peer.sock.sendall(record)
    with pytest.raises(ssl.SSLError):
        connection.read()


@pytest.mark.parametrize("drained_first", [False, True], ids=["first read", "later read"])
def test_closing_wakes_a_reader_waiting_in_another_greenlet(tls, drained_first):
    connection, peer = tls
    if drained_first:  # the next read waits on the Connection's own watcher, not gevent's
        peer.sock.sendall(peer.records(b"x"))
        assert connection.read() == b"x"
    reader = gevent.spawn(connection.read)
    gevent.sleep(0)
    connection.close()
    with pytest.raises(OSError):
        reader.get(timeout=5)


def test_a_certificate_for_another_name_is_refused(pair, ca):
    connection, _, server = meet(pair, ca, "other.tickd.test")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        connection.handshake()
    connection.close()
    with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE"):  # the alert told it why
        server.get(timeout=5)


def test_plain_reads_hand_out_what_arrived(pair):
    ours, theirs = pair
    connection = Connection(ours)
    theirs.sendall(b"one two")
    assert connection.read() == b"one two"
    reader = gevent.spawn(connection.read)
    gevent.sleep(0)
    theirs.sendall(b"three")
    assert reader.get(timeout=5) == b"three"
    theirs.shutdown(socket.SHUT_WR)
    assert connection.read() == b""
    assert connection.send(b"back") == 4
    assert theirs.recv(10) == b"back"


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_server_that_never_answers_the_handshake_times_out(scheme, ca):
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/ws/btcusdt@aggTrade"
    try:
        started = gevent.get_hub().loop.now()
        with pytest.raises((OSError, websocket.WebSocketException)):
            transport.dial(url, 0.3, context)
        assert gevent.get_hub().loop.now() - started < 3
    finally:
        listener.close()


@pytest.mark.parametrize("tls_on", [False, True], ids=["ws", "wss"])
def test_websocket_client_reads_and_answers_pings_through_a_dialled_connection(tls_on):
    with FakeBinance(ping_interval=0.1, tls=tls_on) as fake:
        context = ssl.create_default_context(cafile=fake.ca_file) if tls_on else None
        ws = transport.dial(f"{fake.ws_url}/btcusdt@aggTrade", 5.0, context)
        reader = None
        try:
            assert isinstance(ws.sock, Connection)
            wait_for(lambda: fake.connections("BTCUSDT") == 1, 5, "the subscription")
            trade = fake.trade("BTCUSDT")
            assert f'"a":{trade["a"]},' in ws.recv()
            reader = gevent.spawn(lambda: [ws.recv() for _ in iter(int, 1)])  # answers pings
            wait_for(lambda: fake.pongs("BTCUSDT") >= 2, 5, "two pongs")
        finally:
            if reader is not None:
                reader.kill()
            ws.close()
