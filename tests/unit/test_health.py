"""The tiny health HTTP server: /healthz, /readyz, /metrics (the families: test_metrics.py)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from udpflannel.adapters.health import HealthServer

# -- the server -----------------------------------------------------------------------------------


async def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = dict(h.split(": ", 1) for h in header_lines)
    return int(status_line.split()[1]), headers, body


def test_server_endpoints():
    state = {"ready": False}

    async def main():
        srv = HealthServer("127.0.0.1", 0, lambda: state["ready"], lambda: {"peers": 3, "dp_tx_packets": 10, "dp_rx_packets": 2},
                           lambda: {"backend": "udp", "features": "none"})
        await srv.start()
        try:
            port = srv._server.sockets[0].getsockname()[1]
            results = {}
            results["healthz"] = await _get(port, "/healthz")
            results["readyz_before"] = await _get(port, "/readyz")
            state["ready"] = True
            results["readyz_after"] = await _get(port, "/readyz")
            results["metrics"] = await _get(port, "/metrics")
            results["metrics_query"] = await _get(port, "/metrics?name[]=x")
            results["other"] = await _get(port, "/nope")
            return results
        finally:
            await srv.stop()

    r = asyncio.run(asyncio.wait_for(main(), 10))
    assert r["healthz"][0] == 200
    assert r["readyz_before"][0] == 503
    assert r["readyz_after"][0] == 200
    status, headers, body = r["metrics"]
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["udpflannel_peers"].samples[0].value == 3
    assert [s.labels for s in fams["udpflannel_datapath_packets"].samples] == [{"direction": "rx"}, {"direction": "tx"}]
    assert fams["udpflannel_build_info"].samples[0].labels["backend"] == "udp"
    assert "process_resident_memory_bytes" in fams
    assert int(headers["Content-Length"]) == len(body.encode())
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert r["metrics_query"][0] == 200
    assert r["other"][0] == 404
