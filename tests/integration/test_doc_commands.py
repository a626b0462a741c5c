"""Every command in README.md and bench/README.md runs as written -- dry where it needs hosts.

Commands are taken from the ```sh blocks, the 4-space indented command blocks and the
backticked table cells that start with a command. Each must name a program that exists as
written (on PATH, or a path in the repository); then, by program:

- udpflannel (this checkout's): the command line, flags and values, must parse (it runs
  with --help added);
- etcdctl, scripts/*.sh, bench/*.sh, pytest-benchmark: every `--flag` it uses must appear in
  that program's --help (which really runs the program);
- `.venv/bin/python -m pytest ...`: runs for real with `--collect-only` (files, plugins and
  flags are checked by pytest itself);
- commands that need real hosts or Docker (dockerd, `source`) are only checked to be known
  here. The README's Install block runs for real in test_install.py. `sudo` counts as
  written only where it is installed (a fresh Debian 12 root shell has none).
An unknown program fails the test: add a check for it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "bench/README.md"]
NOT_RUN_HERE = {"dockerd", "source", "apt-get", "ln"}  # hosts/Docker, or test_install.py
PROGRAM = re.compile(r"^(sudo |\.venv/|scripts/|bench/|udpflannel|etcdctl|python|pytest)")


def commands(doc: str) -> list[str]:
    text = (ROOT / doc).read_text()
    if doc == "README.md":  # the Install block is run by test_install.py
        start = text.index("## Install")
        text = text[:start] + text[text.index("\n## ", start + 1):]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines += block.splitlines()
    lines += [l[4:] for l in re.findall(r"^    .*$", text, re.M)]  # continuation lines are indented further
    lines += [c for c in re.findall(r"`([^`\n]+)`", text) if PROGRAM.match(c) and " " in c]
    out, cont = [], ""
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            cont += line[:-1] + " "
            continue
        line, cont = cont + line, ""
        if PROGRAM.match(line) or line.split()[0] in NOT_RUN_HERE:
            out.append(line)
    return sorted(set(out))


ALL = [(doc, cmd) for doc in DOCS for cmd in commands(doc)]


def test_the_docs_have_commands():
    assert len(ALL) >= 10 and any("bench/run_iperf.sh" in c for _, c in ALL)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def flags_in_help(args: list[str], help_args: list[str]) -> None:
    r = run(help_args)
    assert r.returncode == 0, f"{shlex.join(help_args)}: {r.stdout}{r.stderr}"
    for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", r.stdout + r.stderr), f"{flag} not in {help_args}"


@pytest.mark.parametrize("doc,cmd", ALL, ids=[f"{d}: {c[:60]}" for d, c in ALL])
def test_command_runs_as_written(doc, cmd):
    args = shlex.split(cmd)
    if args[0] == "sudo":  # the docs are written for a root shell; a fresh Debian has no sudo
        assert shutil.which("sudo"), f"{doc}: {cmd!r} needs sudo, which is not installed: drop it"
        args = args[1:]
    prog = args[0]
    if prog in NOT_RUN_HERE:
        return
    if "/" in prog:
        path = ROOT / prog
        assert path.exists() and os.access(path, os.X_OK), f"{prog} ({doc}) does not exist or is not executable"
    else:
        assert shutil.which(prog), f"{prog} ({doc}) is not on PATH (scripts/bootstrap.sh should provide it)"
    if args[:3] == [".venv/bin/python", "-m", "pytest"]:
        r = run(args + ["--collect-only", "-q", "-p", "no:cacheprovider"])
        assert r.returncode == 0, f"{cmd}\n{r.stdout}{r.stderr}"
    elif prog == ".venv/bin/python" and args[1:2] and args[1].endswith(".py"):
        assert (ROOT / args[1]).exists(), f"{args[1]} ({doc}) does not exist"
        flags_in_help(args, [prog, args[1], "--help"])
    elif prog == ".venv/bin/pytest-benchmark":
        flags_in_help(args, [prog, args[1], "--help"])
    elif prog == "udpflannel":  # this checkout's: the whole command line must parse (in any flag spelling)
        exe = str(Path(sys.executable).with_name("udpflannel"))
        r = run([exe, *(a for a in args[1:] if a not in ("&", "...")), "--help"])
        assert r.returncode == 0 and r.stdout.startswith("Usage:"), f"{cmd}: {r.stdout}{r.stderr}"
    elif prog == "etcdctl" or prog.startswith(("scripts/", "bench/")):
        sub = [a for a in args[1:2] if not a.startswith("-")] if prog == "etcdctl" else []
        flags_in_help(args, [prog, *sub, "--help"])
    else:
        pytest.fail(f"no check for {prog!r} ({doc}: {cmd}); add one to {Path(__file__).name}")
