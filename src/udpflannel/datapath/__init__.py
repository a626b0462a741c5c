"""udpflannel's data path: a C core (csrc/, built with cffi) behind a narrow Python interface.

    table = LeaseTable(); table.set(IPv4Network("10.5.3.0/24"), IPv4Address("192.0.2.12"))
    table.set(IPv6Network("fd00:5:0:3::/64"), IPv4Address("192.0.2.12"))  # IPv6 in the IPv4 tunnel
    feat = probe_features()
    tun = open_tun("flannel0", queues=1, features=feat)
    dp = DataPath(tun=tun, bind=(addr, 8285), table=table, network=(net4, net6),
                  icmp_source=(net4.network_address, net6.network_address), mtu=1472, features=feat)
    dp.start(); dp.counters(); dp.stop()

The data path never imports the control plane.
"""

from udpflannel.datapath.errors import DataPathError, InvalidArgumentError, TableFullError
from udpflannel.datapath import placement
from udpflannel.datapath.features import Features, probe_features
from udpflannel.datapath.loop import COUNTER_DIRECTIONS, COUNTER_NAMES, DataPath
from udpflannel.datapath.table import LeaseTable
from udpflannel.datapath.tun import Tun, default_queues, gso_max_segs, open_tun

__all__ = [
    "COUNTER_DIRECTIONS",
    "COUNTER_NAMES",
    "DataPath",
    "DataPathError",
    "Features",
    "InvalidArgumentError",
    "LeaseTable",
    "TableFullError",
    "Tun",
    "default_queues",
    "gso_max_segs",
    "open_tun",
    "placement",
    "probe_features",
]
