"""The agent's counters as Prometheus metric families, through prometheus_client.

The agent and its backend count in a plain dict (`Agent.metrics()`: name -> int). This is
the one place that names them for Prometheus; `/metrics` serves `exposition()`:

  agent           peers, ready                    -> udpflannel_<name> (gauges)
                  lease_renewals, etcd_errors,... -> udpflannel_<name>_total (counters)
  udp data path   dp_tx_<c>, dp_rx_<c>            -> udpflannel_datapath_<c>_total{direction="tx"|"rx"}
                  dp_tx_drop_<r>, dp_rx_drop_<r>  -> udpflannel_datapath_dropped_packets_total{direction, reason="<r>"}
                  dp_<c> when dp_tx_<c> and dp_rx_<c> exist: a sum of the two, not exported
                  dp_leases                       -> udpflannel_datapath_leases (gauge)
  vxlan, host-gw  dp_peers                        -> udpflannel_backend_peers (gauge)
                  dp_<c>                          -> udpflannel_backend_<c>_total (counters)
  always          udpflannel_build_info{version, backend, features, fast_path} 1

The data path's counter names come from its C core (datapath.COUNTER_NAMES: tx_/rx_ per
direction, drops as drop_<reason>); families are derived from that pattern, so a counter
added in C appears here without a change (with a generic HELP until it is described in
DATAPATH_HELP / DROP_REASONS). A name this module does not know at all is still exported,
as an untyped family whose HELP says so; tests/unit/test_metrics.py and docs/metrics.md
keep the descriptions and the reference complete.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__

PREFIX = "udpflannel_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DIRECTIONS = {"tx": "container -> overlay (TUN to UDP)", "rx": "overlay -> container (UDP to TUN)"}


class Family(NamedTuple):
    name: str  # without the _total a counter's samples get
    kind: str  # "counter" | "gauge"
    help: str


#: the agent's own names (not the backend's): Agent.metrics() keys
AGENT: dict[str, Family] = {
    "peers": Family("peers", "gauge", "Leases of other hosts the agent currently knows (from etcd)."),
    "ready": Family("ready", "gauge", "1 once device, routes, rules and subnet file are in place (as /readyz), else 0."),
    "lease_renewals": Family("lease_renewals", "counter", "Successful renewals of this host's etcd lease."),
    "lease_reacquisitions": Family("lease_reacquisitions", "counter",
                                   "Times this host's lease was gone (deleted or expired) and was taken again."),
    "watch_restarts": Family("watch_restarts", "counter",
                             "Times the etcd watch on the leases broke or was compacted and the agent re-listed."),
    "etcd_errors": Family("etcd_errors", "counter", "etcd requests that failed (each is retried)."),
    "etcd_failovers": Family("etcd_failovers", "counter",
                             "Times the agent moved to another etcd endpoint (one failed or stopped answering)."),
    "rejected_leases": Family("rejected_leases", "gauge",
                              "Leases in etcd the agent rejects (bad PublicIP, outside the Network, overlapping, "
                              "unusable backend data); never routed."),
    "lease_reasserts": Family("lease_reasserts", "counter",
                              "Times another writer changed this host's lease key and the agent put its lease back."),
    "task_restarts": Family("task_restarts", "counter",
                            "Agent tasks (renewal, peer watch, resync, iptables) that failed and were restarted."),
}  # fmt: skip

#: the udp data path's per-direction counters (datapath.COUNTER_NAMES without drop_*)
DATAPATH_HELP: dict[str, str] = {
    "packets": "Inner packets forwarded.",
    "bytes": "Inner bytes forwarded (IP header included).",
    "batches": "sendmmsg/recvmmsg calls that moved at least one packet.",
    "super_packets": "tx: TSO super-packets read from the TUN; rx: GRO super-packets written to it.",
    "icmp_unreachable_sent": "ICMP net-unreachable (ICMPv6 no-route) written back to the TUN for a packet to a "
                             "subnet with no lease (tx).",
    "icmp_ratelimited": "ICMP/ICMPv6 unreachable not sent because of the rate limit (tx).",
    "io_errors": "Failed reads (recvmmsg, TUN read) that were retried.",
    "gso_fallbacks": "UDP_SEGMENT refused by the kernel; the worker sends one datagram per segment since (tx).",
    "fast_path_packets": "Inner packets the eBPF fast path forwarded (--udp-fast-path; included in packets).",
    "fast_path_passed": "Packets the eBPF fast path handed on to the C loop (tx: no lease, an IPv6-underlay peer; "
                        "rx: datagrams with a UDP checksum, i.e. from user-space senders, fragments; docs/datapath.md).",
}

#: values of the reason label of udpflannel_datapath_dropped_packets_total (drop_<reason>)
DROP_REASONS: dict[str, str] = {
    "short": "Under 20 bytes (IPv6: 40), or shorter than its IPv4 total length / IPv6 payload length says.",
    "bad_version": "IP version is neither 4 nor 6.",
    "bad_header": "IPv4: IHL under 5, header longer than the packet, or total length under IHL.",
    "ttl": "TTL (IPv4) or hop limit (IPv6) would reach 0.",
    "no_route": "tx: destination inside the Network but no lease covers it (an ICMP net-unreachable or ICMPv6 "
                "no-route may be sent).",
    "outside_network": "Destination outside the Network of its IP version, or that version is not enabled "
                       "(rx: a peer trying to use this host as a relay).",
    "unknown_peer": "rx: outer source address is no lease's PublicIP (or PublicIPv6 over an IPv6 underlay).",
    "spoofed_source": "rx: a known peer, but the inner source is outside that peer's subnets.",
    "oversize": "Larger than the MTU (never truncated).",
    "bad_gso": "tx: a TUN super-packet that cannot be segmented.",
    "io": "The send (UDP) or write (TUN) failed.",
    "bad_checksum": "rx: the inner IPv4 header checksum is wrong (the kernel would drop it too).",
    "socket_overflow": "rx: datagrams the kernel dropped because the tunnel socket's buffer was full (SO_RXQ_OVFL).",
}

#: the kernel backends' counters (vxlan, host-gw): dp_<name> -> udpflannel_backend_<name>_total
BACKEND_HELP: dict[str, str] = {
    "device_created": "vxlan: the vxlan device (flannel.N) created.",
    "device_reused": "vxlan: an existing compatible flannel.N device taken over at start (MAC kept).",
    "device_replaced": "vxlan: an incompatible existing device deleted and created again.",
    "device_restored": "vxlan: the device was gone at a resync and was recreated with the same MAC.",
    "entries_added": "vxlan: neighbour, fdb and route entries added for peers.",
    "entries_removed": "vxlan: entries removed for peers that left (or stale ones pruned).",
    "entries_restored": "vxlan: entries found missing at a resync and added again.",
    "entry_errors": "vxlan: entries the kernel refused (retried at the next resync).",
    "routes_added": "host-gw: routes to peers added.",
    "routes_removed": "host-gw: routes to peers removed.",
    "routes_healed": "host-gw: routes found missing or wrong at a resync and set again.",
    "route_errors": "host-gw: routes the kernel refused, e.g. a peer not on this L2 segment (retried).",
    "table_errors": "udp: peer leases the lease table refused (e.g. full); that peer is unreachable.",
}

DROPPED = "datapath_dropped_packets"
BUILD_INFO_HELP = ("Always 1; the labels say what runs: version, backend type, data-path offloads in use, the udp "
                   "backend's eBPF fast path (off, tc-bpf, or unavailable: asked for but refused; see the log).")


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def families(metrics: Mapping[str, int], info: Mapping[str, str]) -> list[Metric]:
    """The Prometheus families for one reading of Agent.metrics(). Pure; sorted by name."""
    out: dict[str, Metric] = {}

    def family(name: str, kind: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
        full = PREFIX + _sanitize(name)
        if full not in out:
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "untyped": UnknownMetricFamily}[kind]
            out[full] = cls(full, help, labels=list(labels))
        return out[full]

    info_fam = family("build_info", "gauge", BUILD_INFO_HELP, ("version", "backend", "features", "fast_path"))
    info_fam.add_metric([__version__, info.get("backend", ""), info.get("features", ""), info.get("fast_path", "")], 1)
    for key in sorted(metrics):
        value = float(metrics[key])
        if key in AGENT:
            f = AGENT[key]
            family(f.name, f.kind, f.help).add_metric([], value)
            continue
        if not key.startswith("dp_"):
            family(key, "untyped", f"{key}: not described in udpflannel/adapters/metrics.py").add_metric([], value)
            continue
        name = key[3:]
        m = re.fullmatch(r"(tx|rx)_(.+)", name)
        if m:
            direction, counter = m.groups()
            if counter.startswith("drop_"):
                family(DROPPED, "counter", "Packets the data path dropped, by direction and reason (see docs/metrics.md).",
                       ("direction", "reason")).add_metric([direction, counter[5:]], value)  # fmt: skip
            else:
                help = DATAPATH_HELP.get(counter, f"Data-path counter {counter}, per direction.")
                family(f"datapath_{counter}", "counter", help, ("direction",)).add_metric([direction], value)
        elif f"dp_tx_{name}" in metrics and f"dp_rx_{name}" in metrics:
            continue  # the sum of the two directions: PromQL's sum() does that
        elif name == "leases":
            family("datapath_leases", "gauge", "Leases in the udp data path's lookup table.").add_metric([], value)
        elif name == "peers":
            family("backend_peers", "gauge", "Peers the kernel backend (vxlan, host-gw) has programmed.").add_metric([], value)
        else:
            help = BACKEND_HELP.get(name, f"Backend counter {name}.")
            family(f"backend_{name}", "counter", help).add_metric([], value)
    return [out[k] for k in sorted(out)]


class AgentCollector(Collector):
    """A prometheus_client collector reading the agent's dict at every scrape."""

    def __init__(self, metrics: Callable[[], Mapping[str, int]], info: Optional[Callable[[], Mapping[str, str]]] = None):
        self._metrics = metrics
        self._info = info or (lambda: {})

    def collect(self) -> Iterator[Metric]:
        yield from families(self._metrics(), self._info())


def registry_for(metrics: Callable[[], Mapping[str, int]],
                 info: Optional[Callable[[], Mapping[str, str]]] = None, process: bool = True) -> CollectorRegistry:
    """A registry with the agent's families and (process=True) prometheus_client's process_* ones."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(metrics, info))
    if process:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=reg)
    return reg


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) of everything in the registry."""
    return generate_latest(registry)


# -- the reference in docs/metrics.md ---------------------------------------------------------


def sample_metrics(counter_names: Sequence[str]) -> dict[str, int]:
    """Every name the agent and the backends can report, given the data path's counter names."""
    m = {k: 0 for k in AGENT}
    for c in counter_names:
        m[f"dp_tx_{c}"] = m[f"dp_rx_{c}"] = m[f"dp_{c}"] = 0
    for c in set(DATAPATH_HELP) - set(counter_names):  # the eBPF fast path's own
        m[f"dp_tx_{c}"] = m[f"dp_rx_{c}"] = 0
    m.update({"dp_leases": 0, "dp_peers": 0}, **{f"dp_{k}": 0 for k in BACKEND_HELP})
    return m


def reference_markdown(counter_names: Sequence[str]) -> str:
    """The generated part of docs/metrics.md: every family, its type, labels and meaning."""
    reg = registry_for(lambda: sample_metrics(counter_names), lambda: {"backend": "udp", "features": "", "fast_path": "off"})
    rows = ["| family | type | labels | meaning |", "|---|---|---|---|"]
    for fam in sorted(reg.collect(), key=lambda f: f.name):
        labels = sorted({k for s in fam.samples for k in s.labels})
        name = fam.name + ("_total" if fam.type == "counter" else "")
        rows.append(f"| `{name}` | {fam.type} | {', '.join(f'`{l}`' for l in labels)} | {fam.documentation} |")
    out = rows + ["", "`direction` (every `udpflannel_datapath_*_total` family):", "",
                  "| direction | meaning |", "|---|---|"]
    out += [f"| `{d}` | {what} |" for d, what in DIRECTIONS.items()]
    out += ["", f"`reason` (`{PREFIX}{DROPPED}_total`):", "", "| reason | the packet was dropped because |", "|---|---|"]
    reasons = sorted(c[5:] for c in counter_names if c.startswith("drop_"))
    out += [f"| `{r}` | {DROP_REASONS.get(r, '(not described yet)')} |" for r in reasons]
    return "\n".join(out) + "\n"
