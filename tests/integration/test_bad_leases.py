"""Bad leases written into a live cluster (udp and vxlan): each is rejected and logged once,
never routed, and container traffic between the two hosts never stops. Our own key
overwritten by another writer is re-asserted. A rejected lease that is fixed is taken."""

from __future__ import annotations

import json
from ipaddress import IPv4Interface, IPv4Network

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]


def value(backend: str, ip: str) -> str:
    """A lease value the backend could use, but for what the test makes wrong."""
    doc = {"PublicIP": ip, "PublicIPv6": None}
    if backend == "vxlan":
        doc.update(BackendType="vxlan", BackendData={"VNI": 1, "VtepMAC": "02:00:00:00:00:09"})
    return json.dumps(doc)


def routed(host, backend: str) -> set[str]:
    """The peer subnets the host's data path routes."""
    if backend == "udp":
        return {f"{int(agents.metric(host, 'datapath_leases'))} leases"}
    out = host.run("ip", "-4", "route", "show", "dev", "flannel.1").stdout
    return {l.split()[0] for l in out.splitlines() if " via " in l}


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_bad_leases_are_rejected_and_traffic_keeps_flowing(etcd_lab, backend):
    lab = etcd_lab
    etcd = lab.etcd[0]
    etcd.put(f"{PREFIX}/config", json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": backend}}))
    h1, h2 = lab.add_host(), lab.add_host()
    p1, p2 = agents.start(lab, h1), agents.start(lab, h2)
    e1, e2 = agents.wait_subnet(lab, h1), agents.wait_subnet(lab, h2)
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    agents.wait_log(p1, "peer added")
    agents.wait_log(p2, "peer added")
    sn1, sn2 = IPv4Interface(e1["FLANNEL_SUBNET"]).network, IPv4Interface(e2["FLANNEL_SUBNET"]).network
    assert c1.ping(c2.ip, 3).returncode == 0
    good = routed(h1, backend)

    over = sn2.supernet(new_prefix=23)
    if over.overlaps(sn1):  # keep the overlap about h2's lease only
        over = sn2.supernet(new_prefix=22) if not sn2.supernet(new_prefix=22).overlaps(sn1) else None
    bad = {
        f"{sn1.network_address}-25": (value(backend, "192.0.2.9"), "overlaps this host's subnet"),
        "10.5.200.0-24": ("{}", "PublicIP is missing"),
        "10.9.1.0-24": (value(backend, "192.0.2.41"), "outside the Network"),
        "10.5.201.0-24": (value(backend, "127.0.0.1"), "loopback"),
    }
    if over is not None:
        bad[f"{over.network_address}-{over.prefixlen}"] = (value(backend, "192.0.2.42"), "which is older")
    for key, (val, _) in bad.items():
        etcd.put(f"{PREFIX}/subnets/{key}", val)
    # another writer takes h1's own key
    own_key = f"{sn1.network_address}-24"
    etcd.put(f"{PREFIX}/subnets/{own_key}", value(backend, "192.0.2.66"))
    for key, (_, why) in bad.items():
        line = agents.wait_log(p1, f"rejecting lease {key}: ", timeout=30)
        assert why in next(l for l in line.splitlines() if f"rejecting lease {key}: " in l)
    agents.wait_log(p1, "was overwritten by another writer")
    agents.wait_log(p1, f"re-asserted our lease {own_key}")
    wait_for(lambda: json.loads(etcd.get(f"{PREFIX}/subnets/{own_key}"))["PublicIP"] == "192.0.2.11", 20,
             what="our lease value back in etcd")  # fmt: skip
    assert c1.ping(c2.ip, 5).returncode == 0 and c2.ping(c1.ip, 5).returncode == 0
    assert routed(h1, backend) == good  # nothing bad was routed
    if backend == "vxlan":
        assert routed(h2, backend) == {str(sn1)}

    # a re-list (etcd restarted) judges them again, but logs nothing twice; and a rejected
    # lease fixed (seen through the new watch, so after the re-list) is taken like any lease
    etcd.stop()
    agents.wait_log(p1, "lease watch interrupted")
    etcd.start()
    etcd.put(f"{PREFIX}/subnets/10.5.200.0-24", value(backend, "192.0.2.77"))
    agents.wait_log(p1, "peer added: 10.5.200.0/24", timeout=40)
    log = agents.log_text(p1)
    for key in bad:
        assert log.count(f"rejecting lease {key}: ") == 1, key

    # deleted: gone like any lease
    for key in bad:
        etcd.delete(f"{PREFIX}/subnets/{key}")
    agents.wait_log(p1, "peer removed: 10.5.200.0/24")
    assert c1.ping(c2.ip, 3).returncode == 0 and c2.ping(c1.ip, 3).returncode == 0
    assert routed(h1, backend) == good
    assert p1.poll() is None and p2.poll() is None
    if backend == "vxlan":
        assert str(IPv4Network("10.9.1.0/24")) not in h1.run("ip", "route").stdout
