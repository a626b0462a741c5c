"""Shared fixtures: real etcd servers and namespace labs, always torn down."""

from __future__ import annotations

import pytest

from udpflannel.lab.netlab import ETCD_HOST_IP, EtcdServer, Lab


@pytest.fixture
def loopback_etcd(tmp_path):
    """A single etcd member on 127.0.0.1 (free ports) in the current namespace."""
    with EtcdServer.loopback(tmp_path / "etcd0.data") as srv:
        yield srv


@pytest.fixture
def lab(tmp_path):
    """An empty namespace lab (switch + bridge); add hosts with lab.add_host()."""
    with Lab(workdir=tmp_path) as lab:
        yield lab


@pytest.fixture
def etcd_lab(lab):
    """A lab with one etcd member in its own namespace at 192.0.2.2:2379 (lab.etcd[0])."""
    ns = lab.add_etcd_host()
    lab.start_etcd(ns, ETCD_HOST_IP)
    return lab


@pytest.fixture
def dual_etcd_lab(tmp_path):
    """A dual-stack underlay (192.0.2.0/24 and 2001:db8::/64 on every eth1), etcd at 192.0.2.2."""
    with Lab(workdir=tmp_path, families=(4, 6)) as lab:
        lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
        yield lab


@pytest.fixture
def v6_etcd_lab(tmp_path):
    """An IPv6-only underlay (2001:db8::/64; no IPv4 on any eth1), etcd at [2001:db8::2]:2379."""
    with Lab(workdir=tmp_path, families=(6,)) as lab:
        lab.start_etcd(lab.add_etcd_host(), lab.etcd_ip)
        yield lab
