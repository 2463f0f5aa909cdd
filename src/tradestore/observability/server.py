"""``/metrics`` and ``/healthz`` over HTTP, on a thread of their own, loopback by default.

prometheus_client's WSGI app renders ``/metrics`` (text or OpenMetrics, gzip when asked);
``/healthz`` answers 200 when every server the process uses answered, 503 otherwise, with the
details as JSON. Each request first asks the event loop for a fresh reading (reused if younger
than half the refresh interval), so the figures are as of the request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from tradestore.errors import ConfigError
from tradestore.observability.readings import Reading

StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: scrapes come every second."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ANN401 - the base's
        del format, args


def health_document(reading: Reading) -> dict[str, Any]:
    return {
        "healthy": reading.healthy,
        "instance": reading.instance,
        "taken_at": reading.taken_at.isoformat(),
        "stores": {health.store: asdict(health) for health in reading.health},
        "alarms": [
            f"{group.stream}/{group.group}: lag {group.lag} of {group.maxlen}"
            for group in reading.groups
            if group.alarm
        ],
        "problems": list(reading.problems),
    }


class MetricsServer:
    """Serves one collector registry and a health check until ``close()``."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        refresh: Callable[[], Reading],
        health: Callable[[Reading], dict[str, Any]] = health_document,
    ) -> None:
        """``health`` makes the ``/healthz`` document (its ``healthy`` decides 200 or 503)."""
        self._metrics = make_wsgi_app(registry)
        self._refresh = refresh
        self._health = health
        try:
            self._httpd: WSGIServer = make_server(
                host, port, self._app, ThreadingWSGIServer, handler_class=_Quiet
            )
        except OSError as error:
            raise ConfigError(
                f"observability: cannot serve /metrics on {host}:{port}: {error}"
                " (set TRADESTORE_OBSERVABILITY__METRICS_PORT to a free port, or 0)"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="tradestore-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            self._refresh()
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            document = self._health(self._refresh())
            status = "200 OK" if document["healthy"] else "503 Service Unavailable"
            body = json.dumps(document).encode()
            start_response(status, [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics and /healthz are served here\n"]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
