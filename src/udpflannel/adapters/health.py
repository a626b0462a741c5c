"""/healthz, /readyz and /metrics (Prometheus text) on --healthz-ip:--healthz-port."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable, Mapping

log = logging.getLogger("udpflannel.health")


GAUGES = ("peers", "ready", "leases")  # names ending so are gauges; the rest are counters


def prometheus_text(metrics: Mapping[str, int], prefix: str = "udpflannel_") -> str:
    """Counters and gauges (see GAUGES) in the Prometheus text format, sorted by name."""
    lines = []
    for name in sorted(metrics):
        full = prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)
        lines.append(f"# TYPE {full} {'gauge' if name.endswith(GAUGES) else 'counter'}")
        lines.append(f"{full} {int(metrics[name])}")
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, ip: str, port: int, ready: Callable[[], bool], metrics: Callable[[], Mapping[str, int]]):
        self.ip, self.port = ip, port
        self._ready = ready
        self._metrics = metrics
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, self.port)
        log.info("serving /healthz, /readyz and /metrics on %s:%d", self.ip, self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode(errors="replace").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/healthz":
                status, body = 200, "ok\n"
            elif path == "/readyz":
                status, body = (200, "ready\n") if self._ready() else (503, "not ready\n")
            elif path == "/metrics":
                status, body = 200, prometheus_text(self._metrics())
            else:
                status, body = 404, "not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
