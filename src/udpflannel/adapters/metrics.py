"""The agent's counters as Prometheus metric families, through prometheus_client.

The agent and its backend count in a plain dict (`Agent.metrics()`: name -> int). This is
the one place that names them for Prometheus; `/metrics` serves `exposition()`:

  agent           peers, ready, lease_expiry_...  -> udpflannel_<name> (gauges)
                  lease_renewals, etcd_errors,... -> udpflannel_<name>_total (counters)
  udp data path   dp_tx_<c> and dp_rx_<c>         -> udpflannel_datapath_<c>_total{direction="tx"|"rx"}
                  only dp_tx_<c> (or dp_rx_<c>)   -> udpflannel_datapath_<c>_total (no label: one direction)
                  dp_tx_drop_<r>, dp_rx_drop_<r>  -> udpflannel_datapath_dropped_packets_total{direction, reason="<r>"}
                  dp_<c> when dp_tx_<c> or dp_rx_<c> exists: the data path's sum, not exported
                  dp_leases, dp_table_errors      -> udpflannel_datapath_leases (gauge), ..._table_errors_total
  vxlan, host-gw, dp_peers                        -> udpflannel_backend_peers (gauge)
  wireguard
                  dp_<c>                          -> udpflannel_backend_<c>_total (counters)
  always          udpflannel_build_info{version, backend, features, fast_path} 1
  udp             udpflannel_datapath_info{queues, cpus, busy_poll_us} 1

The data path's counter names and the directions that count each come from its C core
(datapath.COUNTER_DIRECTIONS: tx_/rx_ per direction, drops as drop_<reason>; a direction
that never counts a counter is not in the dict, so no series is a constant 0); families are
derived from that pattern, so a counter added in C appears here without a change (with a
generic HELP until it is described in DATAPATH_HELP / DROP_REASONS). A name this module
does not know at all is still exported, as an untyped family whose HELP says so;
tests/unit/test_metrics.py and docs/metrics.md keep the descriptions and the reference
complete.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

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
    "lease_expiry_timestamp_seconds": Family("lease_expiry_timestamp_seconds", "gauge",
                                             "When this host's lease expires in etcd unless renewed (Unix time, "
                                             "seconds); absent until the first lease."),
    "task_repeated_failures": Family("task_repeated_failures", "counter",
                                     "Task failures identical to the task's previous one: a bug a restart does not "
                                     "fix (the log names it); alert on any increase."),
    "malformed_leases": Family("malformed_leases", "gauge",
                               "Keys under <prefix>/subnets whose key or value is not a lease (not UTF-8, not JSON, "
                               "nested too deep, too big, ...); skipped, never routed."),
    "peer_errors": Family("peer_errors", "counter",
                          "Unexpected errors (bugs) while handling one lease; that lease was skipped, the others "
                          "went on. The log has the traceback."),
}  # fmt: skip

#: the udp data path's per-direction counters (datapath.COUNTER_NAMES without drop_*)
DATAPATH_HELP: dict[str, str] = {
    "packets": "Inner packets forwarded.",
    "bytes": "Inner bytes forwarded (IP header included).",
    "batches": "sendmmsg/recvmmsg calls that moved at least one packet.",
    "super_packets": "tx: TSO super-packets read from the TUN; rx: GRO super-packets written to it.",
    "icmp_unreachable_sent": "ICMP net-unreachable (ICMPv6 no-route) written back to the TUN for a packet to a "
                             "subnet with no lease.",
    "icmp_ratelimited": "ICMP/ICMPv6 unreachable not sent because of the rate limit.",
    "io_errors": "Failed reads (recvmmsg, TUN read) that were retried.",
    "gso_fallbacks": "A GSO send refused by the kernel, handled one packet at a time since: tx UDP_SEGMENT, "
                     "rx a UDP super-packet written to a TUN without USO.",
    "fast_path_packets": "Inner packets the eBPF fast path forwarded (--udp-fast-path; included in packets).",
    "fast_path_passed": "Packets the eBPF fast path handed on to the C loop (tx: no lease, a peer whose lease does not "
                        "say it decapsulates in its kernel, an IPv6-underlay peer; rx: datagrams with a UDP checksum, "
                        "i.e. from user-space senders, fragments; docs/datapath.md).",
}

#: values of the reason label of udpflannel_datapath_dropped_packets_total (drop_<reason>)
DROP_REASONS: dict[str, str] = {
    "short": "Under 20 bytes (IPv6: 40), or shorter than its IPv4 total length / IPv6 payload length says.",
    "bad_version": "IP version is neither 4 nor 6.",
    "bad_header": "IPv4: IHL under 5, header longer than the packet, or total length under IHL.",
    "ttl": "TTL (IPv4) or hop limit (IPv6) would reach 0.",
    "no_route": "Destination inside the Network but no lease covers it (an ICMP net-unreachable or ICMPv6 "
                "no-route may be sent).",
    "outside_network": "Destination outside the Network of its IP version, or that version is not enabled "
                       "(rx: a peer trying to use this host as a relay).",
    "unknown_peer": "Outer source address is no lease's PublicIP (or PublicIPv6 over an IPv6 underlay).",
    "spoofed_source": "A known peer, but the inner source is outside that peer's subnets.",
    "oversize": "Larger than the MTU (never truncated).",
    "bad_gso": "A TUN super-packet that cannot be segmented.",
    "io": "The send (UDP) or write (TUN) failed.",
    "bad_checksum": "The inner IPv4 header checksum is wrong (the kernel would drop it too).",
    "socket_overflow": "Datagrams the kernel dropped because the tunnel socket's buffer was full (SO_RXQ_OVFL).",
}

#: the kernel backends' counters (vxlan, host-gw): dp_<name> -> udpflannel_backend_<name>_total
BACKEND_HELP: dict[str, str] = {
    "device_created": "vxlan: the vxlan device (flannel.N) created; wireguard: flannel-wg / flannel-wg-v6 made at "
                      "start.",
    "device_reused": "vxlan: an existing compatible flannel.N device taken over at start (MAC kept).",
    "device_replaced": "vxlan: an incompatible existing device deleted and created again.",
    "device_restored": "vxlan: the device was gone at a resync and was recreated with the same MAC; wireguard: a "
                       "device (or its wireguard-go) was gone and was made again, with its peers.",
    "entries_added": "vxlan: neighbour, fdb and route entries added for peers.",
    "entries_removed": "vxlan: entries removed for peers that left (or stale ones pruned).",
    "entries_restored": "vxlan: entries found missing at a resync and added again.",
    "entry_errors": "vxlan: entries the kernel refused (retried at the next resync).",
    "routes_added": "host-gw: routes to peers added.",
    "routes_removed": "host-gw: routes to peers removed.",
    "routes_healed": "host-gw: routes found missing or wrong at a resync and set again.",
    "route_errors": "host-gw: routes the kernel refused, e.g. a peer not on this L2 segment (retried).",
    "wireguard_go_exits": "wireguard: times a wireguard-go process ended on its own (each is started again).",
    "peers_added": "wireguard: WireGuard peers added for new leases.",
    "peers_updated": "wireguard: peers rewritten because their lease changed (endpoint, subnets).",
    "peers_removed": "wireguard: peers removed (lease gone, key replaced, or not ours).",
    "peers_restored": "wireguard: peers found missing or different at a resync and written again.",
    "peer_errors": "wireguard: `wg` refused a peer update (retried at the next resync).",
}

#: the udp backend's own names beside the data path's counters: dp_<name> -> udpflannel_datapath_<name>
UDP_EXTRA: dict[str, Family] = {
    "leases": Family("datapath_leases", "gauge", "Leases in the udp data path's lookup table."),
    "table_errors": Family("datapath_table_errors", "counter",
                           "Peer leases the lease table refused (e.g. full); that peer is unreachable."),
}  # fmt: skip

#: values of build_info's features label: the offloads the udp data path uses (it lists those in
#: use, comma-separated, in this order; "none" when none; empty for the other backends)
FEATURES: dict[str, str] = {
    "vnet_hdr": "The TUN has a virtio-net header (IFF_VNET_HDR, TUNSETOFFLOAD TSO4/TSO6/CSUM): TCP "
                "super-packets up to 64 KiB are read from it and written to it.",
    "udp_segment": "UDP GSO (UDP_SEGMENT): runs of equal-size packets to one peer leave in one send.",
    "udp_gro": "UDP GRO (UDP_GRO): the kernel hands the tunnel socket coalesced datagrams.",
    "gro_coalesce": "Received TCP segments of one flow are written to the TUN as one GSO super-packet "
                    "(needs vnet_hdr).",
    "uso": "The TUN takes UDP super-packets too (TUN_F_USO4/USO6, kernel 6.2+): received UDP "
           "datagrams of one flow are written as one, and read UDP super-packets are split.",
}
FEATURES_NONE = "none"

#: values of build_info's features label for the wireguard backend: what makes its devices
WIREGUARD_FEATURES: dict[str, str] = {
    "kernel": "The devices are the kernel's WireGuard (`ip link add type wireguard`).",
    "wireguard-go": "The kernel has no WireGuard: each device is a wireguard-go process the agent runs and restarts.",
}

#: labels of udpflannel_datapath_info: how the udp data path runs (not kernel features)
DATAPATH_INFO: dict[str, str] = {
    "queues": "TUN queues, each with its own worker thread (--udp-queues).",
    "cpus": "The CPU each worker pinned itself to, by worker (`1,0`: worker 0 on CPU 1, worker 1 on CPU 0), or "
            "`any` when the workers are left to the scheduler (more queues than CPUs, or one CPU); beside the "
            "underlay's receive softirq CPUs where those are known, else worker i on CPU i (docs/datapath.md, "
            "Placement). What was asked: a pin the kernel refuses is not reported.",
    "busy_poll_us": "Microseconds a worker polls after traffic before it sleeps (--udp-busy-poll; 0: off).",
}

DROPPED = "datapath_dropped_packets"
BUILD_INFO_HELP = ("Always 1; the labels say what runs: version, backend type, features: the udp data path's "
                   "offloads in use, or what makes the wireguard devices (kernel or wireguard-go), and fast_path: the "
                   "udp backend's eBPF fast path (off, tc-bpf, or unavailable: asked for but refused; see the log).")
DATAPATH_INFO_HELP = "Always 1, udp backend only; the labels say how its data path runs: queues, CPU pinning, busy polling."


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def families(metrics: Mapping[str, float], info: Mapping[str, Any]) -> list[Metric]:
    """The Prometheus families for one reading of Agent.metrics() and Agent.info(). Pure; sorted
    by name."""
    out: dict[str, Metric] = {}

    def family(name: str, kind: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
        full = PREFIX + _sanitize(name)
        if full not in out:
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "untyped": UnknownMetricFamily}[kind]
            out[full] = cls(full, help, labels=list(labels))
        return out[full]

    info_fam = family("build_info", "gauge", BUILD_INFO_HELP, ("version", "backend", "features", "fast_path"))
    info_fam.add_metric([__version__, info.get("backend", ""), info.get("features", ""), info.get("fast_path", "")], 1)
    if info.get("datapath"):
        labels = tuple(DATAPATH_INFO)
        dp_fam = family("datapath_info", "gauge", DATAPATH_INFO_HELP, labels)
        dp_fam.add_metric([str(info["datapath"].get(k, "")) for k in labels], 1)
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
            elif f"dp_tx_{counter}" in metrics and f"dp_rx_{counter}" in metrics:
                help = DATAPATH_HELP.get(counter, f"Data-path counter {counter}, per direction.")
                family(f"datapath_{counter}", "counter", help, ("direction",)).add_metric([direction], value)
            else:  # counted in one direction only: no label that could only ever have one value
                help = DATAPATH_HELP.get(counter, f"Data-path counter {counter}.")
                help += f" Counted by {direction} only."
                family(f"datapath_{counter}", "counter", help).add_metric([], value)
        elif f"dp_tx_{name}" in metrics or f"dp_rx_{name}" in metrics:
            continue  # the data path's sum of the directions: PromQL's sum() does that
        elif name in UDP_EXTRA:
            f = UDP_EXTRA[name]
            family(f.name, f.kind, f.help).add_metric([], value)
        elif name == "peers":
            family("backend_peers", "gauge",
                   "Peers the kernel backend (vxlan, host-gw, wireguard) has programmed.").add_metric([], value)
        else:
            help = BACKEND_HELP.get(name, f"Backend counter {name}.")
            family(f"backend_{name}", "counter", help).add_metric([], value)
    return [out[k] for k in sorted(out)]


class AgentCollector(Collector):
    """A prometheus_client collector reading the agent's dict at every scrape."""

    def __init__(self, metrics: Callable[[], Mapping[str, float]], info: Optional[Callable[[], Mapping[str, Any]]] = None):
        self._metrics = metrics
        self._info = info or (lambda: {})

    def collect(self) -> Iterator[Metric]:
        yield from families(self._metrics(), self._info())


def registry_for(metrics: Callable[[], Mapping[str, float]],
                 info: Optional[Callable[[], Mapping[str, Any]]] = None, process: bool = True) -> CollectorRegistry:
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


def sample_metrics(directions: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Every name the agent and the backends can report, given the data path's counters and the
    directions that count each (datapath.COUNTER_DIRECTIONS)."""
    m: dict[str, float] = {k: 0 for k in AGENT}
    for c, dirs in directions.items():
        m.update({f"dp_{d}_{c}": 0 for d in dirs}, **{f"dp_{c}": 0})
    for c in set(DATAPATH_HELP) - set(directions):  # the eBPF fast path's own, counted in both directions
        m.update({f"dp_tx_{c}": 0, f"dp_rx_{c}": 0})
    m.update({f"dp_{k}": 0 for k in UDP_EXTRA}, dp_peers=0, **{f"dp_{k}": 0 for k in BACKEND_HELP})
    return m


def _table(head: str, rows: Sequence[Sequence[str]]) -> list[str]:
    cols = head.count("|") - 1
    return [head, "|" + "---|" * cols] + ["| " + " | ".join(r) + " |" for r in rows]


def reference_markdown(directions: Mapping[str, Sequence[str]]) -> str:
    """The generated part of docs/metrics.md: every family, its type, labels and meaning; every
    value of the direction, reason and features labels; the udp data path's info labels."""
    info = {"backend": "udp", "features": "", "fast_path": "off", "datapath": {k: "" for k in DATAPATH_INFO}}
    reg = registry_for(lambda: sample_metrics(directions), lambda: info)
    rows = []
    for fam in sorted(reg.collect(), key=lambda f: f.name):
        labels = sorted({k for s in fam.samples for k in s.labels})
        name = fam.name + ("_total" if fam.type == "counter" else "")
        rows.append((f"`{name}`", fam.type, ", ".join(f"`{l}`" for l in labels), fam.documentation))
    out = _table("| family | type | labels | meaning |", rows)
    out += ["", "`direction` (`udpflannel_datapath_*_total` families counted in both directions, and drops):", ""]
    out += _table("| direction | meaning |", [(f"`{d}`", what) for d, what in DIRECTIONS.items()])
    out += ["", f"`reason` (`{PREFIX}{DROPPED}_total`), with the directions that can drop for it:", ""]
    reasons = sorted((c[5:], dirs) for c, dirs in directions.items() if c.startswith("drop_"))
    out += _table("| reason | direction | the packet was dropped because |",
                  [(f"`{r}`", ", ".join(f"`{d}`" for d in dirs), DROP_REASONS.get(r, "(not described yet)"))
                   for r, dirs in reasons])  # fmt: skip
    out += ["", "`features` (`udpflannel_build_info`), udp backend: the offloads in use, comma-separated in "
            f"this order, `{FEATURES_NONE}` when none (the plain batched path); wireguard backend: what makes its "
            "devices; empty for vxlan, host-gw and alloc:", ""]
    out += _table("| feature | meaning |", [(f"`{k}`", what) for k, what in FEATURES.items()]
                  + [(f"`{k}`", f"wireguard: {what}") for k, what in WIREGUARD_FEATURES.items()])
    out += ["", "`udpflannel_datapath_info` labels (udp backend):", ""]
    out += _table("| label | meaning |", [(f"`{k}`", what) for k, what in DATAPATH_INFO.items()])
    return "\n".join(out) + "\n"
