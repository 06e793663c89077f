"""``/metrics``, ``/healthz`` and ``/readyz`` on one port (``metrics_port``, ``metrics_address``).

prometheus_client gives the ``/metrics`` exposition (:func:`prometheus_client.make_wsgi_app`
over the node's own registry) and the threaded WSGI server it uses for its own
``start_http_server`` (:class:`prometheus_client.exposition.ThreadingWSGIServer`). What is ours:
the two health routes, and asking the node's event loop for the answer. The server runs in a
thread so that a scrape never waits for a batch; every answer about the node is computed on the
event loop (handed over with ``call_soon_threadsafe``), so:

- ``/healthz`` is 200 while the event loop answers within :attr:`MetricsServer.answer_within_s`,
  503 otherwise (a loop blocked or gone);
- ``/readyz`` is 200 when every check of :class:`Readiness` passes, 503 otherwise, with a short
  JSON body naming each check and its state (codes only: no secrets, no field values).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from gateway.errors import ConfigError
from gateway.node.metrics import Metrics

T = TypeVar("T")

OK = "ok"
STALL_S = 30.0
"""A consumer loop that has not polled for this long is not consuming (stuck on a batch)."""


@dataclass(slots=True)
class Readiness:
    """What ``/readyz`` checks, kept up to date by the node (on its event loop).

    - ``kafka``: the last probe of the cluster(s) answered (a metadata request);
    - ``consuming``: every consumer loop has joined its group and polled within ``stall_s``;
    - ``audit``: the audit trail is open, its folder writable and its last fsync succeeded;
    - ``trust``: the trust list in force has not expired.
    """

    now: Callable[[], datetime]
    trust_expires_at: Callable[[], datetime]
    clock: Callable[[], float] = time.monotonic
    stall_s: float = STALL_S
    kafka: str = "not_checked"
    """``ok``, ``not_checked`` or ``unreachable``."""
    loops: dict[str, float | None] = field(default_factory=dict)
    """Consumer loop -> when it last polled (``clock``), None until it has joined."""
    audit_dir: Path | None = None
    """Set while the audit trail is open."""
    audit_failing: bool = False
    """The last fsync of the audit trail failed."""

    def starting(self, loop: str) -> None:
        self.loops[loop] = None

    def polled(self, loop: str) -> None:
        self.loops[loop] = self.clock()

    def stopped(self, loop: str) -> None:
        self.loops.pop(loop, None)

    def checks(self) -> dict[str, str]:
        """Each check's state: ``ok`` or a short code saying what is wrong."""
        now = self.clock()
        if not self.loops:
            consuming = "not_started"
        elif any(t is None for t in self.loops.values()):
            consuming = "joining"
        elif any(t is not None and now - t > self.stall_s for t in self.loops.values()):
            consuming = "stalled"
        else:
            consuming = OK
        if self.audit_dir is None:
            audit = "not_open"
        elif self.audit_failing or not os.access(self.audit_dir, os.W_OK):
            audit = "not_writable"
        else:
            audit = OK
        trust = OK if self.trust_expires_at() > self.now() else "expired"
        return {"kafka": self.kafka, "consuming": consuming, "audit": audit, "trust": trust}


class _Quiet(WSGIRequestHandler):
    """No access log on stderr (a probe every few seconds would flood it)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _reply(
    start_response: StartResponse, status: str, body: Mapping[str, object]
) -> Iterable[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


class MetricsServer:
    """The HTTP endpoint of one node, served from a thread; see the module docstring."""

    answer_within_s = 2.0

    def __init__(
        self,
        metrics: Metrics,
        readiness: Readiness,
        loop: asyncio.AbstractEventLoop,
        *,
        address: str,
        port: int,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._loop = loop
        self._address = address
        self._requested_port = port
        self._exposition = make_wsgi_app(metrics.registry)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one the system picked for 0)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_port)

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        :raises ConfigError: the address and port cannot be bound.
        """

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self._address else socket.AF_INET

        try:
            server = make_server(
                self._address, self._requested_port, self._app, Server, handler_class=_Quiet
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics_port {self._requested_port} on metrics_address {self._address} cannot"
                f" be bound ({exc.strerror or exc}); choose a free port or another address"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fxgw-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    # --- the WSGI application (runs in the server's threads) ------------------------------------

    def _on_loop(self, action: Callable[[], T]) -> T | None:
        """``action()`` run on the event loop; None when the loop does not answer in time."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(action())
                except Exception as exc:  # handed to the waiting thread
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
            return future.result(timeout=self.answer_within_s)
        except (RuntimeError, TimeoutError):  # the loop is closed, or busy for too long
            future.cancel()
            return None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            if self._on_loop(lambda: True):
                return _reply(start_response, "200 OK", {"status": "ok"})
            return _reply(
                start_response,
                "503 Service Unavailable",
                {"status": "fail", "failed": ["event_loop"]},
            )
        if path == "/readyz":
            checks = self._on_loop(self._checks)
            if checks is None:
                checks = {"event_loop": "not_answering"}
            failed = sorted(name for name, state in checks.items() if state != OK)
            if not failed:
                return _reply(start_response, "200 OK", {"status": "ready", "checks": checks})
            return _reply(
                start_response,
                "503 Service Unavailable",
                {"status": "not_ready", "failed": failed, "checks": checks},
            )
        if path == "/metrics":
            self._on_loop(self._metrics.refresh)  # a loop that does not answer: values as they are
            return self._exposition(environ, start_response)  # type: ignore[no-any-return]
        return _reply(start_response, "404 Not Found", {"status": "not_found"})

    def _checks(self) -> dict[str, str]:
        checks = self._readiness.checks()
        for name, state in checks.items():
            self._metrics.ready.labels(name).set(1 if state == OK else 0)
        return checks
