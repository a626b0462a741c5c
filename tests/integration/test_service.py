"""Running as a service: systemd readiness (NOTIFY_SOCKET), the unit file and its sandbox,
privileges.

Real agents in namespaces with real etcd. The readiness test slows iptables-restore down
(a wrapper first in PATH), so a subnet file or a READY=1 written before the rules would
be seen without them.

The sandbox tests run dist/udpflannel.service under a real systemd: PID 1 of this machine
need not be systemd, so `systemd-nspawn` boots one (the host's /usr read-only, /etc as an
overlay holding the unit, a target that wants it and /etc/default/udpflannel) inside a lab
host's network namespace. The agent there is the wheel installed as the README says, at
/opt/udpflannel. The unit is used as shipped but for ExecStart's path and a drop-in that
copies its log to the console.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from udpflannel.lab.netlab import read_subnet_file, wait_for

from . import agents
from .agents import PREFIX
from .test_install import install_wheel, wheel  # noqa: F401  (wheel: the session's fixture)

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


# -- the unit's sandbox ----------------------------------------------------------------------------

#: systemd-analyze security's exposure for dist/udpflannel.service (0 safe .. 10 unsafe); it was
#: 9.6 ("UNSAFE") before the sandbox
MAX_EXPOSURE = 2.5
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def unit_for(exe: str) -> str:
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/udpflannel\n" in text
    return text.replace("ExecStart=/usr/local/bin/udpflannel", f"ExecStart={exe}")


def test_unit_security_exposure_is_low(tmp_path):
    unit = tmp_path / "udpflannel.service"
    unit.write_text(unit_for(str(Path(sys.executable).with_name("udpflannel"))))
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    m = re.search(r"Overall exposure level for udpflannel.service: (\d+\.\d+) (\w+)", p.stdout)
    assert m, p.stdout + p.stderr
    print(m.group(0))
    assert float(m.group(1)) <= MAX_EXPOSURE, p.stdout
    for setting in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=", "ProtectKernelTunables=",
                    "ProtectKernelModules=", "RestrictNamespaces=", "MemoryDenyWriteExecute=",
                    "SystemCallFilter=~@mount", "SystemCallFilter=~@module", "SystemCallFilter=~@reboot",
                    "SystemCallFilter=~@raw-io", "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                    "CapabilityBoundingSet=~CAP_SYS_MODULE", "RestrictAddressFamilies=~AF_PACKET"):  # fmt: skip
        line = next((l for l in p.stdout.splitlines() if l[2:].startswith(setting)), None)
        assert line is not None and line.startswith("\u2713"), f"{setting}: {line}"


class BootedUnit:
    """dist/udpflannel.service started by a systemd booted with systemd-nspawn in `host`'s
    network namespace; the agent is the wheel installed at /opt/udpflannel."""

    def __init__(self, lab, host, venv: Path, env: dict[str, str]):
        self.lab, self.host, self.venv, self.env = lab, host, venv, env
        self.dir = lab.workdir / f"nspawn-{host.name}"
        self.console = self.dir / "console.log"
        self.name = f"uf{secrets.token_hex(3)}-{host.name}"
        self.proc: subprocess.Popen | None = None
        self._cgroups_before: set[Path] = set()
        self.sysfs: Path | None = None

    def _tree(self) -> tuple[Path, Path]:
        root, upper = self.dir / "root", self.dir / "etc-upper"
        for d in ("usr", "etc", "dev", "proc", "sys", "run", "tmp", "var", "root", "opt/udpflannel"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for d in ("bin", "sbin", "lib", "lib64"):
            (root / d).symlink_to(f"usr/{d}")
        shutil.copy("/etc/os-release", root / "etc" / "os-release")  # nspawn checks it before mounting /etc
        units = upper / "systemd" / "system"
        (units / "udpflannel.service.d").mkdir(parents=True)
        (units / "udpflannel.service").write_text(unit_for("/opt/udpflannel/bin/udpflannel"))
        (units / "udpflannel.service.d" / "console.conf").write_text(
            "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n")
        (units / "uftest.target").write_text("[Unit]\nDescription=udpflannel under its unit\nWants=udpflannel.service\n")
        for waiter in ("systemd-networkd-wait-online.service", "NetworkManager-wait-online.service"):
            (units / waiter).symlink_to("/dev/null")  # the container has no network to wait for
        (upper / "default").mkdir()
        (upper / "default" / "udpflannel").write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        return root, upper

    def _host_sysfs(self) -> list[str]:
        """nspawn's /sys shows the machine's own network namespace; the agent reads its
        interface's queues there (datapath/placement.py), so the container gets the host
        namespace's net class and devices, from a sysfs mounted in that namespace."""
        self.sysfs = self.dir / "sysfs"
        self.sysfs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["nsenter", f"--net=/run/netns/{self.host.ns}", "mount", "-t", "sysfs", "sysfs", str(self.sysfs)],
                       check=True)  # fmt: skip
        return [f"--bind-ro={self.sysfs}/{d}:/sys/{d}" for d in ("class/net", "devices/virtual/net")]

    def start(self) -> "BootedUnit":
        root, upper = self._tree()
        systemd_host = Path("/run/systemd/system").is_dir()  # else nspawn stays in our cgroup
        self._cgroups_before = set(_own_cgroup_children())
        cmd = ["systemd-nspawn", "-D", str(root), "-M", self.name, "--register=no", "--link-journal=no",
               *([] if systemd_host else ["--keep-unit"]),
               "--bind-ro=/usr", f"--overlay=/etc:{upper}:/etc", f"--bind-ro={self.venv}:/opt/udpflannel",
               f"--network-namespace-path=/run/netns/{self.host.ns}", *self._host_sysfs(),
               "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
               "--boot", "systemd.unit=uftest.target", "systemd.journald.forward_to_console=1"]  # fmt: skip
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def log(self) -> str:
        return self.console.read_text(errors="replace")

    def agent_pid(self) -> int | None:
        """The agent's pid (as this machine sees it): the process in the namespace running it."""
        for pid in subprocess.run(["ip", "netns", "pids", self.host.ns], capture_output=True, text=True).stdout.split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"/opt/udpflannel/bin/udpflannel") for a in argv):
                return int(pid)
        return None

    def stop(self) -> None:
        """Halt the container (systemd stops the agent with SIGTERM first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.sysfs is not None:
            subprocess.run(["umount", "-l", str(self.sysfs)], check=False)
            self.sysfs = None
        for d in sorted(set(_own_cgroup_children()) - self._cgroups_before, key=lambda p: -len(p.parts)):
            for sub in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):  # nspawn's payload/supervisor
                if sub.is_dir():
                    sub.rmdir()
            d.rmdir()


def _own_cgroup_children() -> list[Path]:
    """The cgroups directly below this process's own (where nspawn --keep-unit makes its own)."""
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        base = Path("/sys/fs/cgroup") / (ctrl.replace("name=", "") if ctrl else "unified") / path.lstrip("/")
        if not base.is_dir():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
        if base.is_dir():
            out += [d for d in base.iterdir() if d.is_dir() and d.name in ("payload", "supervisor")]
    return out


@pytest.fixture(scope="module")
def unit_venv(wheel, tmp_path_factory) -> Path:
    """The wheel installed as the README says, to be shown to the container as /opt/udpflannel
    (its console script's interpreter line is pointed there: the venv lives elsewhere here)."""
    venv = tmp_path_factory.mktemp("unit") / "opt-udpflannel"
    install_wheel(wheel, venv)
    script = venv / "bin" / "udpflannel"
    first, rest = script.read_text().split("\n", 1)
    assert re.fullmatch(rf"#!{re.escape(str(venv))}/bin/python3?", first), first
    script.write_text(first.replace(str(venv), "/opt/udpflannel") + "\n" + rest)
    return venv


@contextmanager
def booted(lab, host, venv, **env):
    unit = BootedUnit(lab, host, venv, {"FLANNELD_ETCD_ENDPOINTS": lab.etcd_endpoints, "FLANNELD_IFACE": "eth1",
                                        "FLANNELD_HEALTHZ_PORT": str(agents.HEALTHZ_PORT), **env})  # fmt: skip
    try:
        yield unit.start()
    finally:
        unit.stop()


def wait_ready(unit: BootedUnit, timeout: float = 90) -> int:
    """Until /readyz answers 200 in the host's namespace; the agent's pid."""
    def ready():
        if unit.proc.poll() is not None:
            raise AssertionError(f"the container ended ({unit.proc.returncode}):\n{unit.log()[-5000:]}")
        return agents.http_get(unit.host, "/readyz")[0] == 200

    wait_for(ready, timeout, what=f"/readyz of the agent under its unit (console: {unit.console})")
    pid = unit.agent_pid()
    assert pid is not None, unit.log()[-3000:]
    return pid


def proc_status(pid: int) -> dict[str, str]:
    return dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in l)


def assert_sandboxed(pid: int) -> None:
    """What systemd applied to the agent: only CAP_NET_ADMIN and CAP_NET_RAW, no new privileges,
    a seccomp filter, a read-only root."""
    st = proc_status(pid)
    want = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
    assert int(st["CapEff"], 16) == want and int(st["CapBnd"], 16) == want, st
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2", st
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root = next(m.split() for m in mounts if m.split()[4] == "/")
    assert "ro" in root[5].split(","), root


def assert_stopped_cleanly(unit: BootedUnit) -> None:
    log = unit.log()
    assert "SIGTERM: shutting down" in log and "udpflannel.service: Deactivated successfully." in log, log[-3000:]
    assert "udpflannel.service: Failed" not in log and "status=203" not in log


def test_the_unit_s_sandbox_runs_the_udp_backend(etcd_lab, unit_venv):
    """udp: the TUN (DeviceAllow), the C data path's threads, pinning and batched syscalls
    (SystemCallFilter), iptables (CAP_NET_ADMIN, nft over netlink), the subnet file
    (ProtectSystem=strict + RuntimeDirectory), /healthz; traffic both ways with a peer."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    h1, h2 = lab.add_host(), lab.add_host()
    # h1's receive softirq on CPU 0 (RPS, as a NIC's IRQ affinity would say): the data path then
    # pins its workers (datapath/placement.py), which needs sched_setaffinity through the filter
    h1.run("sh", "-c", "for q in /sys/class/net/eth1/queues/rx-*; do echo 1 > $q/rps_cpus; done")
    with booted(lab, h1, unit_venv, FLANNELD_IP_MASQ="true") as unit:
        pid = wait_ready(unit)
        assert_sandboxed(pid)
        env1 = read_subnet_file(Path(f"/proc/{pid}/root/run/flannel/subnet.env"))  # the service's /run
        assert env1["FLANNEL_IPMASQ"] == "true" and env1["FLANNEL_MTU"] == "1472"
        assert masq_rules_in_place(h1)
        p2, env2 = agents.start_and_wait(lab, h2)
        c1, c2 = lab.add_container(h1, env1), lab.add_container(h2, env2)
        agents.wait_log(p2, "peer added")
        wait_for(lambda: c1.ping(c2.ip, 1).returncode == 0, 20, what="a ping from the sandboxed host")
        assert c1.ping(c2.ip, 3).returncode == 0 and c2.ping(c1.ip, 3).returncode == 0
        assert agents.metric(h1, "datapath_packets", direction="rx") >= 6
        (info,) = agents.scrape(h1)["udpflannel_datapath_info"].samples
        if len(os.sched_getaffinity(pid)) > 1:  # the workers really are pinned (sched_setaffinity passed the filter)
            pinned = info.labels["cpus"].split(",")
            placed = [l for l in unit.log().splitlines() if "placement" in l]
            assert "any" not in pinned and len(pinned) == int(info.labels["queues"]), (info.labels, placed)
            assert sorted(worker_cpus(pid).values()) == sorted(pinned), (worker_cpus(pid), pinned)
    assert_stopped_cleanly(unit)


def worker_cpus(pid: int) -> dict[str, str]:
    """The data path's worker threads (uf-worker-N) and the CPUs each may run on."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        st = dict(l.split(":\t", 1) for l in (task / "status").read_text().splitlines() if ":\t" in l)
        if st["Name"].strip().startswith("uf-worker-"):
            out[st["Name"].strip()] = st["Cpus_allowed_list"].strip()
    return out


def test_the_unit_s_sandbox_lets_vxlan_set_its_ipv6_sysctls(dual_etcd_lab, unit_venv):
    """vxlan, dual stack: the agent writes accept_ra (and disable_ipv6) of its devices under
    /proc/sys/net, which ProtectKernelTunables=yes would make read-only without the unit's
    ReadWritePaths=/proc/sys/net."""
    lab = dual_etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48", '
                                        '"Backend": {"Type": "vxlan", "VNI": 100}}')  # fmt: skip
    h1, h2 = lab.add_host(), lab.add_host()
    default = h1.run("cat", "/proc/sys/net/ipv6/conf/default/accept_ra").stdout.strip()
    assert default != "0"  # so a 0 below is the agent's doing
    with booted(lab, h1, unit_venv) as unit:
        pid = wait_ready(unit)
        assert_sandboxed(pid)
        for dev in ("flannel.100", "flannel-v6.100"):
            assert h1.run("cat", f"/proc/sys/net/ipv6/conf/{dev}/accept_ra").stdout.strip() == "0", dev
        env1 = read_subnet_file(Path(f"/proc/{pid}/root/run/flannel/subnet.env"))
        p2, env2 = agents.start_and_wait(lab, h2)
        c1, c2 = lab.add_container(h1, env1), lab.add_container(h2, env2)
        agents.wait_log(p2, "peer added")
        wait_for(lambda: c1.ping(c2.ip, 1).returncode == 0, 20, what="an IPv4 ping from the sandboxed host")
        wait_for(lambda: c1.ping(c2.ip6, 1).returncode == 0, 20, what="an IPv6 ping from the sandboxed host")
    assert_stopped_cleanly(unit)


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
