"""Where the data path's workers run (udpflannel.datapath.placement): the decision from what
the host has, and the probe of sysfs/procfs (against a fake tree: the real one is read in
tests/integration/test_udp_backend.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from udpflannel.datapath import placement
from udpflannel.datapath._native import lib
from udpflannel.datapath.placement import HostCpus, plan


def test_max_queues_is_the_c_limit():
    assert placement.MAX_QUEUES == lib.UF_TUN_MAX_QUEUES


def test_cpu_lists_and_masks():
    assert placement.cpu_list([5, 0, 1, 2]) == "0-2,5"
    assert placement.parse_cpu_list("0-2,5\n") == (0, 1, 2, 5)
    assert placement.parse_cpu_list("") == ()
    assert placement.parse_cpu_mask("00000000,00000003\n") == (0, 1)
    assert placement.parse_cpu_mask("1,00000000") == (32,)
    assert placement.parse_cpu_mask("0") == ()


def test_unknown_softirq_pins_worker_i_to_cpu_i():
    """A veth without RPS runs the receiver's stack on the sending CPU: worker i on CPU i keeps
    a flow on one CPU (measured better than leaving the workers to the scheduler)."""
    p = plan(HostCpus((0, 1)))
    assert p.queues == 2 and p.cpus == (0, 1) and p.pinned
    assert "sending CPU" in p.describe() and "worker 1 on CPU 1" in p.describe()
    assert plan(HostCpus((2, 5, 7)), queues=2).cpus == (2, 5)  # within the affinity, in order
    assert plan(HostCpus((2, 5)), queues=3).cpus == (None,) * 3  # more queues than CPUs
    assert plan(HostCpus((3,))).cpus == (None,)  # one CPU


def test_known_softirq_pins_workers_beside_it():
    p = plan(HostCpus((0, 1, 2, 3), (0,), "IRQ 38 of eth0"))
    assert p.queues == 4 and p.cpus == (1, 2, 3, 0)
    p = plan(HostCpus((0, 1, 2, 3), (0, 1), "RPS on eth1"), queues=2)
    assert p.cpus == (2, 3)
    assert "worker 0 on CPU 2" in p.describe() and "RPS on eth1" in p.describe()
    # every CPU takes interrupts (irqbalance over a multi-queue NIC): one worker each
    assert plan(HostCpus((0, 1), (0, 1), "IRQ 1,2 of eth0")).cpus == (0, 1)


@pytest.mark.parametrize("host, queues, multi_queue, want", [
    (HostCpus((0,), (0,), "x"), 0, True, (None,)),                 # one CPU: nothing to spread
    (HostCpus((0, 1), (1,), "x"), 4, True, (None,) * 4),           # more queues than CPUs: unpinned
    (HostCpus(tuple(range(40)), (0,), "x"), 0, True, tuple(range(1, 17))),  # at most 16 queues
    (HostCpus((0, 1, 2), (0,), "x"), 3, False, (1,)),              # no multi-queue TUN: one worker,
])                                                                  # beside the softirq CPU
def test_queue_counts_and_when_nothing_is_pinned(host, queues, multi_queue, want):
    p = plan(host, queues, multi_queue)
    assert p.queues == len(want) and p.cpus == want


def fake_sys(tmp_path: Path, iface: str, rps: list[str], irqs: dict[int, str], parent_irqs: bool = False):
    """A /sys/class/net/<iface> with rx queues (rps_cpus) and MSI IRQs, and /proc/irq/N."""
    sys_net = tmp_path / "net"
    for i, mask in enumerate(rps):
        q = sys_net / iface / "queues" / f"rx-{i}"
        q.mkdir(parents=True)
        (q / "rps_cpus").write_text(mask + "\n")
    dev = sys_net / iface / "device"
    msi = (dev / ".." / "msi_irqs") if parent_irqs else dev / "msi_irqs"
    msi.mkdir(parents=True, exist_ok=True)
    proc_irq = tmp_path / "irq"
    for n, cpus in irqs.items():
        (msi / str(n)).write_text("msi\n")
        (proc_irq / str(n)).mkdir(parents=True)
        (proc_irq / str(n) / "effective_affinity_list").write_text(cpus + "\n")
    return sys_net, proc_irq


def test_probe_rps_wins_over_irqs(tmp_path):
    sys_net, proc_irq = fake_sys(tmp_path, "eth1", ["0", "2"], {40: "0"})
    h = placement.probe("eth1", sys_net, proc_irq, interrupts="")
    assert h.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert h.softirq == (1,) and h.softirq_source == "RPS on eth1"


def test_probe_receive_irqs_of_a_virtio_nic(tmp_path):
    """virtio-net: the IRQs hang off the PCI parent; only the receive ones (named input) count."""
    sys_net, proc_irq = fake_sys(tmp_path, "eth0", ["0"], {37: "0-1", 38: "1", 39: "0"}, parent_irqs=True)
    interrupts = (" 37: 0 0 PCI-MSIX-0000:00:03.0 0-edge virtio2-config\n"
                  " 38: 0 9 PCI-MSIX-0000:00:03.0 1-edge virtio2-input.0\n"
                  " 39: 9 0 PCI-MSIX-0000:00:03.0 2-edge virtio2-output.0\n")
    h = placement.probe("eth0", sys_net, proc_irq, interrupts=interrupts)
    assert h.softirq == (1,) and h.softirq_source == "IRQ 38 of eth0"


def test_probe_veth_without_rps_knows_nothing(tmp_path):
    sys_net, proc_irq = fake_sys(tmp_path, "eth1", ["0"], {})
    h = placement.probe("eth1", sys_net, proc_irq, interrupts="")
    assert h.softirq == () and h.softirq_source == ""
    assert placement.probe(None).softirq == ()
    assert placement.probe("no-such-if", sys_net, proc_irq, interrupts="").softirq == ()
