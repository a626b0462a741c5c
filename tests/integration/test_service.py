"""Running as a service: systemd readiness (NOTIFY_SOCKET), the unit file, privileges.

Real agents in namespaces with real etcd. The readiness test slows iptables-restore down
(a wrapper first in PATH), so a subnet file or a READY=1 written before the rules would
be seen without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from udpflannel.lab.netlab import wait_for

from . import agents
from .agents import PREFIX

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "dist" / "udpflannel.service"
UDP = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
ALLOC = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'


class NotifySocket:
    """A datagram socket like systemd's NOTIFY_SOCKET; records (time, message) pairs and
    calls `on_ready` the moment READY=1 arrives."""

    def __init__(self, path: Path, on_ready=None):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.on_ready = on_ready
        self.ready_check = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), msg))
            if "READY=1" in msg.split("\n") and self.on_ready and self.ready_check is None:
                self.ready_check = self.on_ready()

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def seen(self, line: str) -> bool:
        return any(line in m.split("\n") for _, m in self.messages)


def slow_iptables_restore(workdir: Path, delay: float = 2.0) -> str:
    """A directory with an iptables-restore that sleeps before running the real one."""
    real = shutil.which("iptables-restore")
    d = workdir / "slow-bin"
    d.mkdir(exist_ok=True)
    w = d / "iptables-restore"
    w.write_text(f"#!/bin/sh\nsleep {delay}\nexec {real} \"$@\"\n")
    w.chmod(0o755)
    return f"{d}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def masq_rules_in_place(host) -> bool:
    out = host.run("iptables-save", "-t", "nat").stdout
    return "-A FLANNEL-POSTRTG" in out and "-j FLANNEL-POSTRTG" in out


def test_ready_1_comes_only_after_rules_and_subnet_file_then_stopping(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    h1 = lab.add_host()
    env_file = agents.subnet_file(lab, h1)

    def at_ready():  # runs the moment READY=1 arrives: what is in place then?
        return {
            "subnet_file": env_file.exists(),
            "masq_rules": masq_rules_in_place(h1),
            "flannel0": h1.run("ip", "-o", "addr", "show", "dev", "flannel0", check=False).returncode == 0,
            "readyz": agents.http_get(h1, "/readyz")[0],
        }

    notify = NotifySocket(lab.workdir / "notify.sock", on_ready=at_ready)
    try:
        p = agents.start(lab, h1, "--ip-masq",
                         env={"NOTIFY_SOCKET": str(notify.path), "PATH": slow_iptables_restore(lab.workdir)})  # fmt: skip
        # the subnet file, the moment it appears, finds the (slowly applied) rules in place
        wait_for(lambda: env_file.exists() or p.poll() is not None, 60, interval=0.02, what="the subnet file")
        assert masq_rules_in_place(h1), "subnet file written before the MASQUERADE rules"
        wait_for(lambda: notify.ready_check is not None, 20, what="READY=1")
        assert notify.ready_check == {"subnet_file": True, "masq_rules": True, "flannel0": True, "readyz": 200}
        statuses = [m for _, m in notify.messages if m.startswith("STATUS=")]
        assert any("reading the network config" in s for s in statuses)
        assert agents.stop(p) == 0
        wait_for(lambda: notify.seen("STOPPING=1"), 5, what="STOPPING=1")
    finally:
        notify.close()


def test_unit_file_is_valid_and_says_type_notify(tmp_path):
    text = UNIT.read_text()
    for line in ("Type=notify", "After=network-online.target", "Wants=network-online.target", "Restart=on-failure",
                 "EnvironmentFile=-/etc/default/udpflannel", "WantedBy=multi-user.target"):  # fmt: skip
        assert line in text.splitlines(), line
    # systemd's own checker, with ExecStart pointed at this install
    exe = Path(sys.executable).with_name("udpflannel")
    unit = tmp_path / "udpflannel.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/udpflannel", f"ExecStart={exe}"))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


def start_without_net_admin(lab, host, *args, endpoints=None):
    """The agent as root but with CAP_NET_ADMIN dropped (util-linux setpriv)."""
    log_path = lab.workdir / f"agent-{host.name}-noadmin.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--",
             sys.executable, "-m", "udpflannel", "--etcd-endpoints", endpoints or lab.etcd_endpoints, "--iface", "eth1",
             "--subnet-file", str(agents.subnet_file(lab, host)), *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    p.log_path = log_path
    host.procs.append(p)
    return p


def test_without_cap_net_admin_the_agent_exits_at_once_and_writes_no_lease(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    h1 = lab.add_host()
    p = start_without_net_admin(lab, h1)
    code = p.wait(30)
    log = p.log_path.read_text()
    assert code == 1, log
    errors = [l for l in log.splitlines() if " E " in l]
    assert len(errors) == 1 and "CAP_NET_ADMIN" in errors[0], log
    assert "Traceback" not in log
    assert agents.leases(lab) == {}
    assert not agents.subnet_file(lab, h1).exists()


def test_without_cap_net_admin_the_agent_exits_at_once_even_with_etcd_down(lab):
    """The check comes before etcd: with no etcd at all it still exits (it would otherwise
    wait for etcd forever, and p.wait() would time out)."""
    h1 = lab.add_host()
    p = start_without_net_admin(lab, h1, endpoints="http://192.0.2.250:2379")
    code = p.wait(30)
    log = p.log_path.read_text()
    assert code == 1 and "CAP_NET_ADMIN" in log, log
    assert "waiting for etcd" not in log, log
