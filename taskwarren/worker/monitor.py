"""The supervisor's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` for probes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A child whose I/O loop has not turned for this long makes the pool unhealthy.
HEALTH_MAX_AGE_S = 30.0


def metrics_payload() -> tuple[bytes, str]:
    """The pool's metrics, aggregated over every child (multiprocess mode)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


class Monitor:
    """Serves ``/metrics`` and ``/healthz`` from a daemon thread of the supervisor.

    Args:
        port: TCP port (all interfaces, so a scraper in another container reaches it).
        health: returns (healthy, details) for ``/healthz``.
    """

    def __init__(self, port: int, health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype = metrics_payload()
                    self._send(200, body, ctype)
                elif self.path.startswith("/healthz"):
                    ok, details = monitor.health()
                    self._send(200 if ok else 503, json.dumps(details).encode(),
                               "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the task log

        self.health = health
        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="monitor")

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread.start()

    def close_in_child(self) -> None:
        """In a forked child: drop the inherited listening socket."""
        os.close(self.server.fileno())

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def pool_health(ages: list[float], expected: int) -> tuple[bool, dict[str, Any]]:
    """Healthy when every child's I/O loop turned within :data:`HEALTH_MAX_AGE_S`."""
    alive = sum(1 for age in ages if age < HEALTH_MAX_AGE_S)
    return alive == expected, {"children": expected, "responsive": alive,
                               "checked_at": time.time()}
