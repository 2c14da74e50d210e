"""A websocket's bytes, read cheaply: one read of the socket per wake-up, TLS decrypted in memory.

gevent's `SSLSocket` reads TLS in Python: for each ~280-byte frame of Binance's, three reads of
the socket (a record's header, its body, then one that finds nothing and raises), each through
gevent's Python wrapper and CPython's. Here the socket is read once per wake-up, what has
arrived up to READ_SIZE, and OpenSSL decrypts it from a memory buffer (`ssl.MemoryBIO`), as
asyncio does. Each read first waits for the socket to be readable, so no read fails with EAGAIN
and raises (plain or TLS), and a connection with a backlog is read a share per turn of the
event loop: hundreds of streams, the status page and the timers all get theirs, even when the
store cannot keep up for a while (the rest waits in the kernel's buffer, not in ours).

`dial` opens the TCP connection and the TLS session and hands the `Connection` to
websocket-client as its socket (`create_connection(socket=...)`): websocket-client sends the
HTTP upgrade and its frames through `send`, reads the answer through `recv`; `frames.Reader`
reads the rest through `read`. Certificates and the host name are checked as before: the
same `SSLContext`, `server_hostname` given.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from urllib.parse import urlsplit

import gevent
import websocket
from gevent import socket as gsocket
from gevent.lock import Semaphore

# Bytes taken from the socket per turn of the event loop: about 14 of Binance's frames over TLS,
# 1.5 ms of work. What one busy connection does before the others get their turn; 64 KiB
# (220 frames) made turns of 150-650 ms when the whole market's spikes outran the store.
READ_SIZE = 4096
RECORD_SIZE = 16384  # the most plaintext one TLS record holds


class Connection:
    """A connected socket, with TLS or not, in the shape websocket-client expects of a socket
    (`send`, `recv`, `settimeout`, `shutdown`, `close`...), plus `read()` for frames.Reader."""

    __slots__ = (
        "_chunks",
        "_eof",
        "_hub",
        "_incoming",
        "_outgoing",
        "_sending",
        "_sock",
        "_tls",
        "_waiting",
        "_watcher",
    )

    def __init__(
        self, sock: gsocket.socket, context: ssl.SSLContext | None = None, hostname: str = ""
    ):
        """With `context`, TLS to `hostname` (checked against its certificate if the context
        says so); call `handshake()` next."""
        self._sock = sock
        self._tls: ssl.SSLObject | None = None
        if context is not None:
            self._incoming = ssl.MemoryBIO()  # ciphertext read, not yet decrypted
            self._outgoing = ssl.MemoryBIO()  # ciphertext OpenSSL made, not yet sent
            self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._chunks: list[bytes] = []  # plaintext received and not yet handed out
        self._eof = False  # the peer ended the TLS session (close_notify)
        self._hub = gevent.get_hub()
        self._watcher = self._hub.loop.io(sock.fileno(), 1)  # readable
        self._waiting = False
        self._sending = Semaphore()  # one greenlet at a time puts ciphertext on the socket

    # -- what frames.Reader uses -------------------------------------------------------

    def read(self) -> bytes:
        """All the plaintext that has arrived (at least one byte); b"" once the peer closed."""
        if not self._chunks and not self._fill():
            return b""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    # -- what websocket-client uses -----------------------------------------------------

    def recv(self, size: int) -> bytes:
        if not self._chunks and not self._fill():
            return b""
        chunk = self._chunks[0]
        if len(chunk) <= size:
            del self._chunks[0]
            return chunk
        self._chunks[0] = chunk[size:]
        return chunk[:size]

    def send(self, data: bytes) -> int:
        if self._tls is None:
            return self._sock.send(data)
        self._tls.write(data)  # into the outgoing buffer, encrypted, all of it
        self._flush()
        return len(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        """Close the socket; a greenlet waiting in `read` or `recv` gets an OSError."""
        if self._waiting:
            self._hub.cancel_wait(self._watcher, ConnectionAbortedError("socket closed"), True)
            self._waiting = False
        else:
            self._watcher.close()
        self._sock.close()

    @property
    def _closed(self) -> bool:  # websocket-client's shutdown() asks
        return self._sock.fileno() == -1

    # -- inside -------------------------------------------------------------------------

    def handshake(self) -> None:
        """The TLS handshake, within the socket's timeout. Raises ssl.SSLError (a certificate
        that does not verify among them) or OSError."""
        while True:
            try:
                self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush()  # the alert that tells the server why (unknown CA...)
                raise
            self._flush()
            if done:
                return
            data = self._sock.recv(RECORD_SIZE)
            if not data:
                raise ConnectionResetError("connection closed during the TLS handshake")
            self._incoming.write(data)

    def _fill(self) -> bool:
        """Wait until plaintext is in `_chunks`: True, or False if the peer closed."""
        if self._tls is None:
            data = self._receive()
            if data:
                self._chunks.append(data)
            return bool(data)
        while True:
            self._decrypt()
            if self._chunks:
                return True
            if self._eof:
                return False
            data = self._receive()
            if not data:
                return False
            self._incoming.write(data)

    def _receive(self) -> bytes:
        """One read of the socket, at the loop's next turn: what has arrived (up to
        READ_SIZE), b"" at its end."""
        if self._sock.gettimeout() is None:
            # Even when bytes are waiting: the loop's next turn comes first (others go).
            self._waiting = True
            try:
                self._hub.wait(self._watcher)
            finally:
                self._waiting = False
        return self._sock.recv(READ_SIZE)  # gevent's: with a timeout, it waits itself

    def _decrypt(self) -> None:
        """Whole records in the incoming buffer to plaintext chunks."""
        tls, incoming = self._tls, self._incoming
        while incoming.pending:
            try:
                chunk = tls.read(RECORD_SIZE)
            except ssl.SSLWantReadError:
                break  # the start of a record: the rest is still on its way
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # the peer's close_notify: the session is over
                self._eof = True
                break
            self._chunks.append(chunk)
        if self._outgoing.pending:
            self._flush()  # what reading made OpenSSL answer (a TLS 1.3 key update)

    def _flush(self) -> None:
        with self._sending:
            while data := self._outgoing.read():
                self._sock.sendall(data)


def dial(url: str, timeout: float, context: ssl.SSLContext | None) -> websocket.WebSocket:
    """Open a websocket to `url` (`ws://` or `wss://`, the latter with `context`); the TCP
    connection, the TLS handshake and the HTTP upgrade must all finish within `timeout`."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    deadline = gevent.Timeout(timeout, websocket.WebSocketTimeoutException("handshake timed out"))
    with deadline:
        sock = gsocket.create_connection((parts.hostname, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure and context is None:
                context = ssl.create_default_context()
            connection = Connection(sock, context if secure else None, parts.hostname)
        except BaseException:
            sock.close()
            raise
        try:
            if secure:
                connection.handshake()
            return websocket.create_connection(
                url, timeout=timeout, socket=connection, enable_multithread=True
            )
        except BaseException:
            connection.close()
            raise
