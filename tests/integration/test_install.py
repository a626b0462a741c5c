"""Installing: bootstrap's PATH link, and the README's Install commands run as written.

The link tests run scripts/bootstrap.sh with UDPFLANNEL_LINK pointing into a temporary
directory (the venv is already installed, so it only checks and links). The Install test
runs the README's commands with Debian's own python3 into a temporary venv (its paths
changed from /opt/udpflannel and /usr/local/bin to temporary ones; the apt-get line is
checked against dpkg instead of run, since bootstrap installed those packages).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_CMD = ROOT / ".venv" / "bin" / "udpflannel"


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


def install_block() -> list[str]:
    """The commands of the README's Install section (its one sh block)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Install"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [l.split("#")[0].strip() for l in block.splitlines() if l.split("#")[0].strip()]


def test_readme_install_works_with_debians_python(tmp_path):
    cmds = install_block()
    assert cmds[0].startswith("apt-get install -y ")
    for pkg in cmds[0].split()[3:]:
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        assert "install ok installed" in st.stdout, f"{pkg} (README Install) is not installed by bootstrap.sh"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")
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
