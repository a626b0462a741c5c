"""/metrics text (Prometheus exposition format) and the tiny health HTTP server."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpflannel.adapters.health import GAUGES, HealthServer, prometheus_text

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_exact_text():
    assert prometheus_text({"rx_packets": 5, "peers": 2}) == (
        "# TYPE udpflannel_peers gauge\n"
        "udpflannel_peers 2\n"
        "# TYPE udpflannel_rx_packets counter\n"
        "udpflannel_rx_packets 5\n"
    )


def test_sorted_by_name():
    text = prometheus_text({"zeta": 1, "alpha": 2, "mid": 3})
    samples = [l.split()[0] for l in text.splitlines() if not l.startswith("#")]
    assert samples == ["udpflannel_alpha", "udpflannel_mid", "udpflannel_zeta"]


@pytest.mark.parametrize("name", sorted(GAUGES))
def test_gauges(name):
    assert f"# TYPE udpflannel_{name} gauge\n" in prometheus_text({name: 1})


def test_gauge_names():
    assert {"peers", "ready", "leases"} <= set(GAUGES)


@pytest.mark.parametrize("name", ["udp_peers", "vxlan_peers", "datapath_ready"])
def test_names_ending_in_a_gauge_name_are_gauges(name):
    assert f"# TYPE udpflannel_{name} gauge\n" in prometheus_text({name: 1})


def test_everything_else_is_a_counter():
    assert prometheus_text({"watch_restarts": 3}) == "# TYPE udpflannel_watch_restarts counter\nudpflannel_watch_restarts 3\n"


def test_custom_prefix():
    assert prometheus_text({"x": 1}, prefix="flannel_") == "# TYPE flannel_x counter\nflannel_x 1\n"


@pytest.mark.parametrize("name,full", [("rx.packets", "udpflannel_rx_packets"), ("tx-bytes", "udpflannel_tx_bytes"),
                                       ("icmp unreachable/s", "udpflannel_icmp_unreachable_s")])
def test_names_are_sanitized(name, full):
    text = prometheus_text({name: 7})
    assert text == f"# TYPE {full} counter\n{full} 7\n"


def test_non_ascii_names_become_valid_metric_names():
    """str.isalnum() accepts non-ASCII letters and digits; Prometheus names are [a-zA-Z_:][a-zA-Z0-9_:]*."""
    full = prometheus_text({"rx_\u00e9\u00b2": 1}).splitlines()[1].split()[0]
    assert METRIC_NAME.match(full), full


def test_values_are_integers():
    text = prometheus_text({"ready": True, "bytes": 3.9, "big": 2**63})
    assert "udpflannel_ready 1\n" in text
    assert "udpflannel_bytes 3\n" in text
    assert f"udpflannel_big {2**63}\n" in text


def test_empty():
    assert prometheus_text({}).strip() == ""


def test_type_line_precedes_its_sample():
    lines = prometheus_text({"a": 1, "peers": 2, "b": 3}).splitlines()
    for i in range(0, len(lines), 2):
        assert lines[i].startswith("# TYPE ")
        assert lines[i].split()[2] == lines[i + 1].split()[0]


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 2**64), max_size=8))
def test_every_line_is_valid_exposition_format(metrics):
    text = prometheus_text(metrics)
    assert text.endswith("\n")
    lines = [l for l in text.splitlines() if l]
    assert len(lines) == 2 * len(metrics)
    for type_line, sample in zip(lines[::2], lines[1::2]):
        _, word, name, kind = type_line.split(" ")
        assert word == "TYPE" and kind in ("counter", "gauge")
        assert METRIC_NAME.match(name), f"invalid metric name {name!r}"
        sname, value = sample.split(" ")
        assert sname == name
        assert int(value) >= 0


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
        srv = HealthServer("127.0.0.1", 0, lambda: state["ready"], lambda: {"peers": 3, "rx_packets": 10})
        await srv.start()
        try:
            port = srv._server.sockets[0].getsockname()[1]
            results = {}
            results["healthz"] = await _get(port, "/healthz")
            results["readyz_before"] = await _get(port, "/readyz")
            state["ready"] = True
            results["readyz_after"] = await _get(port, "/readyz")
            results["metrics"] = await _get(port, "/metrics")
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
    assert body == prometheus_text({"peers": 3, "rx_packets": 10})
    assert int(headers["Content-Length"]) == len(body.encode())
    assert headers["Content-Type"].startswith("text/plain")
    assert r["other"][0] == 404
