"""Wiring: the store's parts started in order, and stopped in the reverse order."""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import gevent
import gevent.event
import prometheus_client
from gevent.pool import Group, Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from . import config as configuration
from . import logs, metrics, status
from .coverage import Coverage
from .database import Database
from .limits import AttemptLimiter, WeightLimiter
from .logs import Throttle, failure, kv
from .rest import Rest, tls_context
from .sequence import SequenceOrder
from .settings import Watcher
from .stream import Stream, dial
from .turns import Turns, Unlimited

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 1.0  # seconds between WAL checkpoints (in a worker thread)
# and between checks that DB_PATH still names the file we write to
HTTP_CONNECTIONS = 256  # concurrent HTTP connections; more wait in the listen backlog
HTTP_TIMEOUT = 10.0  # seconds a client may stay silent
HTTP_DEADLINE = 30.0  # seconds a connection may last in all


class _TimedHandler(WSGIHandler):
    # A client that connects and sends nothing, or one byte every few seconds, is cut off.
    def handle(self) -> None:
        self.socket.settimeout(HTTP_TIMEOUT)
        with gevent.Timeout(HTTP_DEADLINE, False):
            super().handle()


class AlreadyRunning(Exception):
    """Another store holds the lock of this database."""


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one (a stream needs one or two
    sockets); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the soft limit stays; the start-up line says which
    return soft


class App:
    """The running store. `start()` returns once it is listening; `stop()` is clean and safe
    to call once, from any greenlet."""

    def __init__(self, config: configuration.Config, clock=time.monotonic):
        self.config = config
        self._clock = clock
        self.db = Database(config.db_path)
        self.attempts = AttemptLimiter()
        self.tls = tls_context()  # one for every wss:// dial and https:// call
        self.rest = Rest(config.rest_url, WeightLimiter(config.rest_weight), ssl_context=self.tls)
        self.descriptors = raise_descriptor_limit()
        self.turns: Turns | Unlimited = Unlimited()  # the readers' share of each turn: start()
        self.watcher = Watcher(
            self.db, self._make_stream, config.poll_interval, descriptor_limit=self.descriptors
        )
        self.coverage = Coverage(self.db)
        self.sequence = SequenceOrder(self.db, self.watcher.streams)
        self._workers = Group()  # the watcher, the checkpoints, the coverage, the sequence
        self._watching: gevent.Greenlet | None = None
        self._checkpointing: gevent.Greenlet | None = None
        self._stopping = gevent.event.Event()
        self._http: WSGIServer | None = None
        self._lock: int | None = None  # descriptor of the lock file, held while running
        self._lost: str | None = None  # "deleted"/"replaced": DB_PATH no longer our file
        self._checkpoint_errors = Throttle(60.0, clock)
        self.started = clock()

    @property
    def http_port(self) -> int:
        return self._http.server_port

    def _make_stream(self, symbol: str, after_pause: bool = False) -> Stream:
        return Stream(
            symbol,
            base_url=self.config.ws_url,
            db=self.db,
            rest=self.rest,
            attempts=self.attempts,
            stale_timeout=self.config.stale_timeout,
            max_age=self.config.max_age,
            silence_timeout=self.config.silence_timeout,
            after_pause=after_pause,
            turns=self.turns,
            connect=self._dial,
        )

    def _dial(self, url: str, timeout: float):
        return dial(url, timeout, self.tls)

    def start(self) -> None:
        """Listen, take the database's lock, open it, start the watcher and the checkpoints.

        What can fail without touching the database comes first. Raises OSError (port in
        use), AlreadyRunning (another store on this database) or sqlite3.DatabaseError
        (unusable database file).
        """
        registry = metrics.registry(
            metrics.StoreCollector(
                streams=self.watcher.streams,
                weight=self.rest.weight,
                attempts=self.attempts,
                db=self.db,
                uptime=lambda: self._clock() - self.started,
                runs=lambda: self.coverage.runs,
                deferred=lambda: self.turns.deferred,
            )
        )
        app = status.make_app(
            self._page, self._healthy, lambda: prometheus_client.generate_latest(registry)
        )
        self._http = WSGIServer(
            ("0.0.0.0", self.config.http_port),  # noqa: S104 (in Docker, the port is published)
            app,
            spawn=Pool(HTTP_CONNECTIONS),
            handler_class=_TimedHandler,
            log=None,
            error_log=logging.getLogger("tickd.http"),
        )
        self._http.init_socket()  # binds now: a port in use fails before the disk is touched
        try:
            self._lock = lock(self.config.db_path + ".lock")
            self.db.open()
        except BaseException:
            self._release()
            raise
        log.info(
            "store starting %s",
            kv(
                db=self.config.db_path,
                sqlite=sqlite3.sqlite_version,
                ws=self.config.ws_url,
                rest=self.config.rest_url,
                descriptors=self.descriptors,
            ),
        )
        self._http.start()
        log.info("http listening %s", kv(port=self.http_port))
        self.turns = Turns()
        self._watching = self._workers.spawn(self.watcher.run)
        self._checkpointing = self._workers.spawn(self._checkpoints)
        self._workers.spawn(self.coverage.run)
        self._workers.spawn(self.sequence.run)

    def stop(self) -> None:
        """Stop the watcher, the streams (close frames), the HTTP server; close the database."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("store stopping")
        self._watching.kill()
        self.watcher.stop()
        self._http.stop(timeout=1)
        self._checkpointing.join(timeout=3)  # lets a checkpoint (or a reopen) finish
        self._workers.kill(timeout=1)
        self.db.close()
        self.turns.close()
        self._release()
        log.info("store stopped")

    def _release(self) -> None:
        if self._http is not None and not self._http.closed:
            self._http.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _checkpoints(self) -> None:
        """Every second: make sure DB_PATH is still the file we write to, and checkpoint."""
        while not self._stopping.wait(CHECKPOINT_INTERVAL):
            try:
                self._lost = self._lost or self.db.file.moved()
                if self._lost:
                    self._reopen(self._lost)
                else:
                    self.db.file.checkpoint()
            except Exception as exc:  # noqa: BLE001 (sqlite3.Error, OSError or a bug: next second)
                held = self._checkpoint_errors.allow(type(exc))
                if held is not None:
                    log.warning("checkpoint failed %s", kv(error=failure(exc), suppressed=held))

    def _reopen(self, how: str) -> None:
        """DB_PATH was deleted or replaced under us: what we write would be lost at the next
        start. Stop the streams, open the file the path names now (after copying a deleted
        one's content there), and start them again: each resumes from its table's last id
        there, so the ticks of the switch come back as a gap, repaired over REST."""
        log.error("database file %s while the store runs, reopening %s", how, kv(path=self.db.path))
        if self._watching is not None:
            self._watching.kill()
        self.watcher.stop()
        try:
            copy = self.db.file.reopen(rescue=how == "deleted")
        except (sqlite3.Error, OSError) as exc:
            log.error("cannot reopen database, retrying %s", kv(path=self.db.path, error=exc))
            return
        self._lost = None
        self.coverage.forget()
        log.info("database reopened %s", kv(path=self.db.path, rescued_to=copy))
        if not self._stopping.is_set():
            self._watching = self._workers.spawn(self.watcher.run)

    def _page(self) -> str:
        wanted = self.watcher.wanted
        rows = status.collect(self.db, wanted.symbols, wanted.invalid, self.watcher.connected)
        return status.render(self._clock() - self.started, rows)

    def _healthy(self) -> bool:
        if self._lost:
            return False
        try:
            self.db.ping()
        except sqlite3.Error:
            return False
        return True


def lock(path: str) -> int:
    """Hold an exclusive lock on `path` for the life of the process (flock: it holds across
    a bind mount, and the kernel drops it when the process dies); its descriptor.
    Raises AlreadyRunning if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another store is running on this database (lock {path})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _log_hub_errors(context, kind, value, tb) -> None:
    # The last line of defence: a greenlet that dies of an exception nobody caught is said
    # on one plain line on stdout, not as a traceback on stderr.
    if value is not None and not isinstance(value, gevent.GreenletExit):
        log.error("greenlet failed %s", kv(error=failure(value), context=context))


def run(environ: Mapping[str, str], stdout: TextIO = sys.stdout) -> int:
    """Run the store until SIGTERM or SIGINT; the exit status (0 clean, 1 cannot start)."""
    logs.setup(logging.INFO, stdout)
    try:
        config = configuration.load(environ)
        configuration.prepare_db_dir(config)
    except configuration.ConfigError as exc:
        log.error("%s", exc)
        return 1
    logs.setup(config.log_level, stdout)
    gevent.get_hub().print_exception = _log_hub_errors
    app = App(config)
    try:
        app.start()
    except AlreadyRunning as exc:
        log.error("cannot start %s", kv(path=config.db_path, error=exc))
        return 1
    except sqlite3.Error as exc:
        log.error("cannot open database %s", kv(path=config.db_path, error=exc))
        return 1
    except OSError as exc:
        # Binding comes first, so an OSError here is the port, unless it names a file.
        if exc.filename:
            log.error("cannot open database %s", kv(path=exc.filename, error=exc.strerror))
        else:
            log.error("cannot listen %s", kv(port=config.http_port, error=exc.strerror or exc))
        return 1
    stop = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        app.stop()
    return 0
