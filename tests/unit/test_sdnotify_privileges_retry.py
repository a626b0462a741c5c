"""sd_notify over a real datagram socket (path and abstract), the capability mask parser,
and the retry reporter ("still waiting ...") on a manual clock."""

from __future__ import annotations

import logging
import os
import socket

from udpflannel.adapters.privileges import CAP_NET_ADMIN, effective_capabilities, missing, parse_capeff
from udpflannel.adapters.sdnotify import SdNotify
from udpflannel.retry import Waiting

from .fakes import FakeClock


def test_notify_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        n = SdNotify({"NOTIFY_SOCKET": path})
        assert n.enabled and n.watchdog_interval is None
        assert n.ready("subnet 10.5.3.0/24")
        assert n.status("waiting for etcd")
        assert n.stopping()
        got = [s.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=subnet 10.5.3.0/24", "STATUS=waiting for etcd", "STOPPING=1\nSTATUS=stopping"]


def test_notify_to_an_abstract_socket():
    name = f"udpflannel-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert SdNotify({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert s.recv(100) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_happens_and_a_dead_socket_is_not_fatal(tmp_path, caplog):
    assert not SdNotify({}).ready("x")
    dead = SdNotify({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING):
        assert not dead.ready("x") and not dead.status("y")
    assert caplog.text.count("cannot notify systemd") == 1


def test_watchdog_interval_is_half_of_watchdog_usec_for_us_only():
    assert SdNotify({"WATCHDOG_USEC": "20000000"}).watchdog_interval == 10.0
    assert SdNotify({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 10.0
    assert SdNotify({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_capabilities():
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n"
    mask = parse_capeff(status)
    assert mask == 1 << CAP_NET_ADMIN
    assert missing({CAP_NET_ADMIN: "flannel0"}, mask) == []
    assert missing({CAP_NET_ADMIN: "flannel0", 10: "port 80"}, 0) == [
        "CAP_NET_BIND_SERVICE (port 80)", "CAP_NET_ADMIN (flannel0)"]  # fmt: skip
    assert parse_capeff("Name: x\n") is None
    assert isinstance(effective_capabilities(), int)


def test_waiting_says_a_new_problem_at_once_and_the_same_one_now_and_then(caplog):
    clock = FakeClock()
    statuses = []
    w = Waiting(logging.getLogger("udpflannel.test"), every=60, interval=5, clock=clock,
                wall=lambda: 0.0, status=statuses.append)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="udpflannel"):
        for _ in range(30):  # 30 attempts, 5 s apart: 150 s
            w.failed("etcd", "renewing lease 10.5.3.0/24", "DEADLINE_EXCEEDED")
            clock.now += 5
        w.failed("etcd", "renewing lease 10.5.3.0/24", "UNAVAILABLE")  # a new error: at once
        w.done("renewing lease 10.5.3.0/24")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "waiting for etcd (renewing lease 10.5.3.0/24): DEADLINE_EXCEEDED; retrying every 5s"
    still = [l for l in lines if l.startswith("still waiting")]
    assert len(still) == 2  # at 60 s and 120 s, not 29 times
    assert "(renewing lease 10.5.3.0/24; 13 attempts, since " in still[0]
    assert lines[-2].endswith("UNAVAILABLE; retrying every 5s")
    assert lines[-1] == "renewing lease 10.5.3.0/24: succeeded after 32 attempts (150s)"
    assert statuses == ["waiting for etcd (renewing lease 10.5.3.0/24)"] * 2
