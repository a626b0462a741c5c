"""Installing: bootstrap's PATH link, the README's Install commands run as written, and the
wheel that installs on a host with no compiler.

The link tests run scripts/bootstrap.sh with UDPFLANNEL_LINK pointing into a temporary
directory (the venv is already installed, so it only checks and links). The Install tests
run the README's commands with Debian's own python3 into temporary venvs (their paths
changed from /opt/udpflannel and /usr/local/bin to temporary ones; apt-get lines are
checked against dpkg instead of run, since bootstrap installed those packages). The wheel
is built once per session from a clean copy of the checkout (`wheel`); test_service.py
installs it the same way for the systemd unit's sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_CMD = ROOT / ".venv" / "bin" / "udpflannel"
DEBIAN_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")
COMPILERS = ("gcc", "cc", "clang", "c99", "x86_64-linux-gnu-gcc", "g++", "c++")


def build_wheel(dest: Path) -> Path:
    """The README's build command (`pip wheel --no-deps -w dist/ .`) run on a clean copy of
    this checkout (the files git tracks or would track, as they are now: no build/ left over)."""
    src = dest / "src-copy"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    cmds = install_block("### Building the wheel")
    assert cmds[0].startswith("apt-get install -y ") and cmds[1].startswith("python3 -m venv /tmp/build-venv")
    pip = cmds[2].split()
    assert pip[0] == "/tmp/build-venv/bin/pip" and pip[1] == "wheel", cmds  # run with this checkout's venv's pip
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", *pip[1:]], cwd=src,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (src / "dist").glob("udpflannel-*.whl")
    return whl


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once per session (test_service.py uses it too)."""
    d = tmp_path_factory.getbasetemp() / "udpflannel-wheel"
    found = sorted(d.glob("src-copy/dist/udpflannel-*.whl"))
    if found:
        return found[0]
    d.mkdir(exist_ok=True)
    return build_wheel(d)


def no_compiler_env(home: Path) -> dict[str, str]:
    """A clean environment with no compiler reachable: PATH is one empty directory, CC and CXX
    fail; pip's own settings (PIP_*) and proxies are kept."""
    empty = home / "empty-bin"
    empty.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k.lower().endswith("_proxy")}
    env.update(PATH=str(empty), HOME=str(home), CC="/bin/false", CXX="/bin/false", LANG="C.UTF-8")
    assert not [c for c in COMPILERS if shutil.which(c, path=env["PATH"])]
    return env


def install_wheel(whl: Path, venv: Path) -> dict[str, str]:
    """The README's no-compiler install: a venv of Debian's python3, then the wheel with every
    dependency as a wheel too (--only-binary=:all:: pip may not build anything)."""
    env = no_compiler_env(venv.parent / f"{venv.name}-home")
    cmds = install_block("### Installing the wheel on a host")
    assert cmds[0].startswith("apt-get install -y ") and "gcc" not in cmds[0] and "python3-dev" not in cmds[0]
    for pkg in cmds[0].split()[3:]:
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        assert "install ok installed" in st.stdout, f"{pkg} (README) is not installed by bootstrap.sh"
    for cmd in cmds[1:]:
        if cmd.startswith(("ln ", "udpflannel ")):
            continue
        cmd = cmd.replace("/opt/udpflannel", str(venv)).replace("udpflannel-0.1.0-*.whl", str(whl))
        assert "--only-binary=:all:" in cmd or not cmd.startswith(str(venv / "bin" / "pip")), cmd
        if cmd.startswith("python3 "):
            cmd = DEBIAN_PYTHON + cmd[len("python3"):]
        r = subprocess.run(cmd.split(), env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return env


def bootstrap(link: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, UDPFLANNEL_LINK=str(link))
    return subprocess.run([str(ROOT / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True,
                          timeout=600, check=True)


def test_bootstrap_links_the_command_when_the_path_is_free(tmp_path):
    link = tmp_path / "udpflannel"
    r = bootstrap(link)
    assert Path(os.readlink(link)) == VENV_CMD, r.stderr
    assert f"{link} -> {VENV_CMD}" in r.stderr
    out = subprocess.run([str(link), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("udpflannel, version ")
    assert bootstrap(link).stderr == ""  # already ours: nothing to say


def test_bootstrap_replaces_a_link_to_another_checkouts_venv(tmp_path):
    link = tmp_path / "udpflannel"
    link.symlink_to("/gone/checkout/.venv/bin/udpflannel")  # e.g. a deleted clone
    bootstrap(link)
    assert Path(os.readlink(link)) == VENV_CMD


@pytest.mark.parametrize("kind", ["file", "foreign-link"])
def test_bootstrap_never_clobbers_a_foreign_file(tmp_path, kind):
    link = tmp_path / "udpflannel"
    if kind == "file":
        link.write_text("#!/bin/sh\necho someone else's\n")
    else:
        link.symlink_to("/usr/bin/true")
    before = link.read_text() if kind == "file" else os.readlink(link)
    r = bootstrap(link)
    assert (link.read_text() if kind == "file" else os.readlink(link)) == before
    assert "left alone" in r.stderr and str(VENV_CMD) in r.stderr


def install_block(after: str = "") -> list[str]:
    """The commands of an sh block of the README's Install section: the first one, or the first
    after the line that starts with `after`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Install"):]
    section = section[:section.index("\n## ", 1)]
    if after:
        section = section[section.index("\n" + after):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [l.split("#")[0].strip() for l in block.splitlines() if l.split("#")[0].strip()]


def test_the_wheel_installs_and_runs_with_no_compiler(wheel, tmp_path):
    """Hosts need no compiler: the wheel holds the compiled data path; pip builds nothing."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert [n for n in names if n.startswith("udpflannel/datapath/_core") and n.endswith(".so")], names
    assert not [n for n in names if n.endswith((".c", ".h")) or n.startswith(("csrc/", "tests/"))]
    venv = tmp_path / "opt-udpflannel"
    env = install_wheel(wheel, venv)
    out = subprocess.run([str(venv / "bin" / "udpflannel"), "--version"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("udpflannel, version "), out.stderr
    probe = ("from udpflannel.datapath import COUNTER_NAMES, LeaseTable, probe_features; "
             "import udpflannel.datapath._core as c; from ipaddress import IPv4Network, IPv4Address; "
             "t = LeaseTable(); t.set(IPv4Network('10.5.3.0/24'), IPv4Address('192.0.2.12')); "
             "print(c.__file__, len(COUNTER_NAMES), len(t), probe_features().vnet_hdr)")  # fmt: skip
    r = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    path, n, leases, _ = r.stdout.split()
    assert path.startswith(str(venv)) and int(n) > 10 and leases == "1"
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import udpflannel; print(udpflannel.__file__)"],
                          env=env, capture_output=True, text=True).stdout  # fmt: skip
    assert site.startswith(str(venv)), site  # the installed package, not this checkout


def test_readme_install_works_with_debians_python(tmp_path):
    cmds = install_block("### From a checkout, by hand")
    assert cmds[0].startswith("apt-get install -y ")
    for pkg in cmds[0].split()[3:]:
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        assert "install ok installed" in st.stdout, f"{pkg} (README Install) is not installed by bootstrap.sh"
    python = DEBIAN_PYTHON
    venv, link = tmp_path / "opt-udpflannel", tmp_path / "bin" / "udpflannel"
    link.parent.mkdir()
    out = ""
    for cmd in cmds[1:]:
        cmd = cmd.replace("/opt/udpflannel", str(venv)).replace("/usr/local/bin/udpflannel", str(link))
        if cmd.startswith("python3 "):
            cmd = python + cmd[len("python3"):]
        if cmd.startswith("udpflannel "):
            cmd = str(link) + cmd[len("udpflannel"):]
        r = subprocess.run(cmd, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
        out = r.stdout
    assert out.startswith("udpflannel, version ")
