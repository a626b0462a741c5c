"""The host lock (adapters/hostlock.py) on real abstract unix sockets, under names of
this test's own (the agent's real name, per network namespace, is exercised by
tests/integration/test_operator_mistakes.py inside namespace hosts)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from udpflannel.adapters.hostlock import NAME, HostLock, HostLocked
from udpflannel.errors import FatalError


@pytest.fixture
def name():
    return f"\0udpflannel-test-{uuid.uuid4().hex}"


def test_second_holder_is_refused_naming_the_first_s_pid(name):
    first = HostLock(name)
    first.acquire()
    try:
        with pytest.raises(HostLocked) as e:
            HostLock(name).acquire()
        assert e.value.pid == os.getpid()
        assert isinstance(e.value, FatalError)  # the CLI's exit path: non-zero, one line
        assert f"pid {os.getpid()}" in str(e.value) and "@udpflannel-test-" in str(e.value)
        assert first.refuse() == [os.getpid()]  # the asker, as the holder sees it
    finally:
        first.release()
    again = HostLock(name)  # released: free again
    again.acquire()
    again.release()


def test_the_real_name_is_abstract():
    assert NAME.startswith("\0") and "/" not in NAME


def test_many_askers_never_fill_the_backlog_when_the_holder_answers(name):
    first = HostLock(name)
    first.acquire()
    try:
        for _ in range(3 * 16):
            with pytest.raises(HostLocked, match=f"pid {os.getpid()}"):
                HostLock(name).acquire()
            first.refuse()
    finally:
        first.release()


def test_a_killed_holder_leaves_no_stale_lock(name):
    """The kernel drops the name with the holder's last descriptor: SIGKILL is enough."""
    code = ("import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind('\\0'+sys.argv[1]); s.listen(1); "
            "print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, name[1:]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HostLocked) as e:
            HostLock(name).acquire()
        assert e.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait(10)
    lock = HostLock(name)
    deadline = time.monotonic() + 5
    while True:
        try:
            lock.acquire()
            break
        except HostLocked:
            assert time.monotonic() < deadline, "the name outlived its holder"
            time.sleep(0.01)
    lock.release()


def test_the_lock_is_not_inherited_by_children(name):
    """Close-on-exec: an iptables or nft child the agent runs never keeps the host locked."""
    lock = HostLock(name)
    lock.acquire()
    try:
        assert not os.get_inheritable(lock.fileno())
        child = subprocess.run(["sh", "-c", "ls -l /proc/self/fd"], capture_output=True, text=True, close_fds=False)
        assert "socket:" not in child.stdout, child.stdout
    finally:
        lock.release()
