"""Wiring: the store's parts started in order, and stopped in the reverse order."""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import gevent
import gevent.event
import prometheus_client
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from . import config as configuration
from . import logs, metrics, status
from .database import Database
from .limits import AttemptLimiter, WeightLimiter
from .logs import kv
from .rest import Rest
from .settings import Watcher
from .stream import Stream

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 1.0  # seconds between WAL checkpoints (in a worker thread)
HTTP_CONNECTIONS = 256  # concurrent HTTP connections; more wait in the listen backlog
HTTP_TIMEOUT = 10.0  # seconds a client may stay silent
HTTP_DEADLINE = 30.0  # seconds a connection may last in all


class _TimedHandler(WSGIHandler):
    # A client that connects and sends nothing, or one byte every few seconds, is cut off.
    def handle(self) -> None:
        self.socket.settimeout(HTTP_TIMEOUT)
        with gevent.Timeout(HTTP_DEADLINE, False):
            super().handle()


class App:
    """The running store. `start()` returns once it is listening; `stop()` is clean and safe
    to call once, from any greenlet."""

    def __init__(self, config: configuration.Config, clock=time.monotonic):
        self.config = config
        self._clock = clock
        self.db = Database(config.db_path)
        self.attempts = AttemptLimiter()
        self.rest = Rest(config.rest_url, WeightLimiter(config.rest_weight))
        self.watcher = Watcher(self.db, self._make_stream, config.poll_interval)
        self._workers: list[gevent.Greenlet] = []
        self._stopping = gevent.event.Event()
        self._http: WSGIServer | None = None
        self.started = clock()

    @property
    def http_port(self) -> int:
        return self._http.server_port

    def _make_stream(self, symbol: str) -> Stream:
        return Stream(
            symbol,
            base_url=self.config.ws_url,
            db=self.db,
            rest=self.rest,
            attempts=self.attempts,
            stale_timeout=self.config.stale_timeout,
            max_age=self.config.max_age,
            silence_timeout=self.config.silence_timeout,
        )

    def start(self) -> None:
        """Open the database, read the settings, start the streams and the HTTP server.

        Raises sqlite3.DatabaseError (unusable database file) or OSError (port in use).
        """
        self.db.open()
        log.info(
            "store starting %s",
            kv(
                db=self.config.db_path,
                sqlite=sqlite3.sqlite_version,
                ws=self.config.ws_url,
                rest=self.config.rest_url,
            ),
        )
        registry = metrics.registry(
            metrics.StoreCollector(
                streams=self.watcher.streams,
                weight=self.rest.weight,
                attempts=self.attempts,
                db=self.db,
                uptime=lambda: self._clock() - self.started,
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
        try:
            self._http.start()
        except BaseException:
            self.db.close()
            raise
        log.info("http listening %s", kv(port=self.http_port))
        self._workers = [gevent.spawn(self.watcher.run), gevent.spawn(self._checkpoints)]

    def stop(self) -> None:
        """Stop the watcher, the streams (close frames), the HTTP server; close the database."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("store stopping")
        watcher, checkpoints = self._workers
        watcher.kill()
        self.watcher.stop()
        self._http.stop(timeout=1)
        checkpoints.join(timeout=3)  # lets a checkpoint in its thread finish
        self.db.close()
        log.info("store stopped")

    def _checkpoints(self) -> None:
        while not self._stopping.wait(CHECKPOINT_INTERVAL):
            try:
                self.db.checkpoint()
            except sqlite3.Error as exc:
                log.warning("checkpoint failed %s", kv(error=exc))

    def _page(self) -> str:
        wanted = self.watcher.wanted
        rows = status.collect(self.db, wanted.symbols, wanted.invalid, self.watcher.connected)
        return status.render(self._clock() - self.started, rows)

    def _healthy(self) -> bool:
        try:
            self.db.ping()
        except sqlite3.Error:
            return False
        return True


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
    app = App(config)
    try:
        app.start()
    except sqlite3.Error as exc:
        log.error("cannot open database %s", kv(path=config.db_path, error=exc))
        return 1
    except OSError as exc:
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
