"""/metrics as Prometheus families (adapters/metrics.py), checked with prometheus_client's own parser."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from udpflannel import __version__
from udpflannel.adapters import metrics as M
from udpflannel.datapath import COUNTER_NAMES

ROOT = Path(__file__).resolve().parents[2]


def scrape(metrics: dict, info: dict | None = None, process: bool = False) -> dict:
    """Family name -> parsed family, from the exposition text."""
    text = M.exposition(M.registry_for(lambda: metrics, lambda: info or {}, process=process)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(fams: dict) -> dict:
    """(sample name, frozenset of labels) -> value over every family."""
    out = {}
    for f in fams.values():
        for s in f.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicated series {key}"
            out[key] = s.value
    return out


def udp_agent_metrics() -> dict:
    """What Agent.metrics() returns with the udp backend: agent names + dp_ (the data path's dict)."""
    m = {"peers": 2, "ready": 1, "lease_renewals": 3, "lease_reacquisitions": 0, "watch_restarts": 1, "etcd_errors": 4}
    for i, c in enumerate(COUNTER_NAMES):
        m[f"dp_tx_{c}"], m[f"dp_rx_{c}"] = 10 + i, 100 + i
    for c in COUNTER_NAMES:
        if c.startswith(("drop_", "icmp_")):
            m[f"dp_{c}"] = m[f"dp_tx_{c}"] + m[f"dp_rx_{c}"]  # the data path's own sums
    m["dp_leases"] = 2
    return m


def test_every_family_has_help_and_type_and_counters_end_in_total():
    fams, text = scrape(udp_agent_metrics(), {"backend": "udp", "features": "vnet_hdr,udp_gro"}, process=True)
    for name, fam in fams.items():
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text, name
        assert fam.documentation, name
        assert fam.type in ("counter", "gauge"), (name, fam.type)
        if fam.type == "counter":
            assert all(s.name == name + "_total" for s in fam.samples), name
    assert "udpflannel_dp_" not in text  # the old one-name-per-counter spelling is gone


def test_data_path_counters_are_families_with_direction_and_reason_labels():
    m = udp_agent_metrics()
    fams, _ = scrape(m)
    s = samples(fams)
    assert s[("udpflannel_datapath_packets_total", frozenset({("direction", "tx")}))] == m["dp_tx_packets"]
    assert s[("udpflannel_datapath_packets_total", frozenset({("direction", "rx")}))] == m["dp_rx_packets"]
    key = ("udpflannel_datapath_dropped_packets_total", frozenset({("direction", "rx"), ("reason", "spoofed_source")}))
    assert s[key] == m["dp_rx_drop_spoofed_source"]
    dropped = fams["udpflannel_datapath_dropped_packets"]
    reasons = {c[5:] for c in COUNTER_NAMES if c.startswith("drop_")}
    assert {x.labels["reason"] for x in dropped.samples} == reasons
    assert len(dropped.samples) == 2 * len(reasons)  # each reason once per direction
    assert s[("udpflannel_datapath_leases", frozenset())] == 2
    assert fams["udpflannel_datapath_leases"].type == "gauge"


def test_no_duplicated_totals():
    """The data path's sums over both directions (drop_*, icmp_*) are not exported: sum() them."""
    m = udp_agent_metrics()
    _, text = scrape(m)
    assert "datapath_drop_" not in text and "icmp_unreachable_sent_total{direction" in text
    fams, _ = scrape(m)
    icmp = fams["udpflannel_datapath_icmp_unreachable_sent"]
    assert sorted(x.labels["direction"] for x in icmp.samples) == ["rx", "tx"]
    total = sum(v for (n, _), v in samples(fams).items() if n == "udpflannel_datapath_dropped_packets_total")
    assert total == sum(m[f"dp_{c}"] for c in COUNTER_NAMES if c.startswith("drop_"))


def test_families_are_derived_from_the_counter_name_pattern():
    """A counter the C core adds later needs no change here."""
    fams, _ = scrape({"dp_tx_drop_martian": 4, "dp_rx_drop_martian": 1, "dp_drop_martian": 5,
                      "dp_tx_wakeups": 7, "dp_rx_wakeups": 8})
    s = samples(fams)
    assert s[("udpflannel_datapath_dropped_packets_total", frozenset({("direction", "tx"), ("reason", "martian")}))] == 4
    assert s[("udpflannel_datapath_wakeups_total", frozenset({("direction", "rx")}))] == 8
    assert fams["udpflannel_datapath_wakeups"].documentation  # a generic HELP until described


def test_agent_names():
    fams, _ = scrape(udp_agent_metrics())
    assert fams["udpflannel_peers"].type == "gauge" and fams["udpflannel_ready"].type == "gauge"
    for name in ("lease_renewals", "lease_reacquisitions", "watch_restarts", "etcd_errors"):
        assert fams[f"udpflannel_{name}"].type == "counter"
    assert fams["udpflannel_etcd_errors"].samples[0].value == 4


def test_kernel_backend_names():
    fams, _ = scrape({"peers": 1, "dp_peers": 1, "dp_routes_added": 2, "dp_route_errors": 0})
    assert fams["udpflannel_backend_peers"].type == "gauge"
    assert fams["udpflannel_backend_routes_added"].type == "counter"
    assert fams["udpflannel_backend_routes_added"].samples[0].value == 2
    assert not any(n.startswith("udpflannel_datapath") for n in fams)


def test_build_info():
    fams, _ = scrape({}, {"backend": "udp", "features": "vnet_hdr,udp_segment", "fast_path": "tc-bpf"})
    (s,) = fams["udpflannel_build_info"].samples
    assert s.value == 1
    assert s.labels == {"version": __version__, "backend": "udp", "features": "vnet_hdr,udp_segment",
                        "fast_path": "tc-bpf"}
    (s,) = scrape({})[0]["udpflannel_build_info"].samples  # before the config is read
    assert s.labels == {"version": __version__, "backend": "", "features": "", "fast_path": ""}


def test_an_unknown_name_is_exported_untyped_and_says_so():
    fams, _ = scrape({"leases_rejected": 3})
    fam = fams["udpflannel_leases_rejected"]
    assert fam.type == "unknown" and "not described" in fam.documentation
    assert fam.samples[0].value == 3


def test_values():
    fams, _ = scrape({"ready": True, "dp_tx_bytes": 2**63, "dp_rx_bytes": 0})
    assert fams["udpflannel_ready"].samples[0].value == 1
    assert samples(fams)[("udpflannel_datapath_bytes_total", frozenset({("direction", "tx")}))] == 2**63


IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
KEY = st.one_of(
    st.sampled_from(sorted(M.AGENT)),
    st.builds(lambda d, c: f"dp_{d}_{c}", st.sampled_from(["tx", "rx"]), IDENT),
    st.builds(lambda c: f"dp_tx_drop_{c}", IDENT),
    st.builds(lambda c: f"dp_{c}", IDENT.filter(lambda c: not c.startswith(("tx_", "rx_")))),
)


@given(st.dictionaries(KEY, st.integers(0, 2**64), max_size=20))
def test_any_reading_is_valid_exposition_without_duplicates(m):
    fams, text = scrape(m)
    samples(fams)  # asserts no duplicated series
    assert text.endswith("\n")
    for fam in fams.values():
        assert fam.documentation and fam.type in ("counter", "gauge", "unknown")


# -- the reference in docs/metrics.md cannot drift ------------------------------------------------


def test_every_data_path_counter_is_described():
    missing = [c for c in COUNTER_NAMES if not c.startswith("drop_") and c not in M.DATAPATH_HELP]
    missing += [c for c in COUNTER_NAMES if c.startswith("drop_") and c[5:] not in M.DROP_REASONS]
    assert not missing, f"describe {missing} in src/udpflannel/adapters/metrics.py, then run scripts/metrics-doc.py"


def test_docs_metrics_md_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("metrics_doc", ROOT / "scripts" / "metrics-doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert mod.BEGIN in text and mod.END in text
    assert mod.render(text) == text, "docs/metrics.md is out of date: run .venv/bin/python scripts/metrics-doc.py"


def test_the_reference_lists_every_family_the_agent_can_produce():
    text = (ROOT / "docs" / "metrics.md").read_text()
    fams, _ = scrape(M.sample_metrics(COUNTER_NAMES), {"backend": "udp"}, process=True)
    for fam in fams.values():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"| `{name}` |" in text, name
