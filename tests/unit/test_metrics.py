"""/metrics as Prometheus families (adapters/metrics.py), checked with prometheus_client's own parser."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from udpflannel import __version__
from udpflannel.adapters import metrics as M
from udpflannel.datapath import COUNTER_DIRECTIONS, COUNTER_NAMES

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
    """What Agent.metrics() returns with the udp backend: agent names + dp_ (the data path's dict:
    each counter for the directions that count it)."""
    m = {"peers": 2, "ready": 1, "lease_renewals": 3, "lease_reacquisitions": 0, "watch_restarts": 1, "etcd_errors": 4}
    for i, (c, dirs) in enumerate(COUNTER_DIRECTIONS.items()):
        m.update({f"dp_{d}_{c}": (10 if d == "tx" else 100) + i for d in dirs})
        if c.startswith(("drop_", "icmp_")):
            m[f"dp_{c}"] = sum(m[f"dp_{d}_{c}"] for d in dirs)  # the data path's own sums
    m["dp_leases"], m["dp_table_errors"] = 2, 1
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
    pairs = {(d, c[5:]) for c, dirs in COUNTER_DIRECTIONS.items() if c.startswith("drop_") for d in dirs}
    assert {(x.labels["direction"], x.labels["reason"]) for x in dropped.samples} == pairs
    assert ("rx", "spoofed_source") in pairs and ("tx", "spoofed_source") not in pairs  # only real pairs
    assert ("tx", "no_route") in pairs and ("rx", "no_route") not in pairs
    assert s[("udpflannel_datapath_leases", frozenset())] == 2
    assert fams["udpflannel_datapath_leases"].type == "gauge"
    assert s[("udpflannel_datapath_table_errors_total", frozenset())] == 1  # the udp backend's, not backend_*
    assert not any(n.startswith("udpflannel_backend_") for n in fams)


def test_counters_of_one_direction_have_no_direction_label():
    fams, _ = scrape(udp_agent_metrics())
    for c, dirs in COUNTER_DIRECTIONS.items():
        if c.startswith("drop_"):
            continue
        fam = fams[f"udpflannel_datapath_{c}"]
        want = [{"direction": d} for d in dirs] if len(dirs) == 2 else [{}]
        assert sorted((x.labels for x in fam.samples), key=str) == sorted(want, key=str), c
    assert COUNTER_DIRECTIONS["icmp_unreachable_sent"] == ("tx",)
    assert "Counted by tx only" in fams["udpflannel_datapath_icmp_unreachable_sent"].documentation


def test_no_duplicated_totals():
    """The data path's sums over both directions (drop_*, icmp_*) are not exported: sum() them."""
    m = udp_agent_metrics()
    fams, text = scrape(m)
    assert "datapath_drop_" not in text
    (icmp,) = fams["udpflannel_datapath_icmp_unreachable_sent"].samples
    assert icmp.value == m["dp_tx_icmp_unreachable_sent"]
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
    assert "udpflannel_datapath_info" not in scrape({})[0]


def test_datapath_info_says_how_the_udp_data_path_runs():
    fams, _ = scrape({}, {"backend": "udp", "features": "none",
                          "datapath": {"queues": "2", "cpus": "1,0", "busy_poll_us": "0"}})  # fmt: skip
    (s,) = fams["udpflannel_datapath_info"].samples
    assert s.value == 1 and s.labels == {"queues": "2", "cpus": "1,0", "busy_poll_us": "0"}
    assert "cpus" not in M.FEATURES  # pinning is how we run, not a kernel feature


def test_lease_expiry_is_a_unix_timestamp_gauge():
    fams, _ = scrape({"lease_expiry_timestamp_seconds": 1.8e9})
    fam = fams["udpflannel_lease_expiry_timestamp_seconds"]
    assert fam.type == "gauge" and fam.samples[0].value == 1.8e9 and fam.samples[0].labels == {}


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
    info = {"backend": "udp", "datapath": {k: "" for k in M.DATAPATH_INFO}}
    fams, _ = scrape(M.sample_metrics(COUNTER_DIRECTIONS), info, process=True)
    for fam in fams.values():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"| `{name}` |" in text, name


def test_the_reference_lists_every_label_value():
    text = (ROOT / "docs" / "metrics.md").read_text()
    for value in [*M.FEATURES, M.FEATURES_NONE, *M.WIREGUARD_FEATURES, *M.DATAPATH_INFO, *M.DIRECTIONS]:
        assert f"`{value}`" in text, value
    for c, dirs in COUNTER_DIRECTIONS.items():
        if c.startswith("drop_"):
            assert f"| `{c[5:]}` | {', '.join(f'`{d}`' for d in dirs)} |" in text, c


def test_every_counter_has_a_direction():
    assert set(COUNTER_DIRECTIONS) == set(COUNTER_NAMES)
    assert all(dirs in (("tx",), ("rx",), ("tx", "rx")) for dirs in COUNTER_DIRECTIONS.values())
