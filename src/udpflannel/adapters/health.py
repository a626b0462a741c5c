"""/healthz, /readyz and /metrics (Prometheus text, see metrics.py) on --healthz-ip:--healthz-port."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping, Optional

from .metrics import CONTENT_TYPE, exposition, registry_for

log = logging.getLogger("udpflannel.health")


class HealthServer:
    """Serves on ip:port once start()ed; `port` is then the port it listens on (the one
    the kernel chose, for port 0)."""

    def __init__(self, ip: str, port: int, ready: Callable[[], bool], metrics: Callable[[], Mapping[str, int]],
                 info: Optional[Callable[[], Mapping[str, str]]] = None):
        self.ip, self.port = ip, port
        self._ready = ready
        self._registry = registry_for(metrics, info)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
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
            path = (parts[1] if len(parts) > 1 else "/").partition("?")[0]
            ctype = "text/plain; charset=utf-8"
            if path == "/healthz":
                status, data = 200, b"ok\n"
            elif path == "/readyz":
                status, data = (200, b"ready\n") if self._ready() else (503, b"not ready\n")
            elif path == "/metrics":
                status, data, ctype = 200, exposition(self._registry), CONTENT_TYPE
            else:
                status, data = 404, b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
