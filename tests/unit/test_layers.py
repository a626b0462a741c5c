"""The import contract: the layers of STYLE.md, read from the source with `ast`.

    ground    errors, retry, the package's __init__ (every layer may use them)
    core      pure: config, subnets, leases and events, the registry contract, reconcile
    policy    the lease manager
    adapters  etcd, netlink, iptables, interface choice, health/metrics, ...
    datapath  the cffi data path (imports nothing of the control plane)
    backends  udp, vxlan, host-gw, alloc
    agent     agent.py and its supervisor
    cli       the command line (the only place that exits)
    lab       the namespace lab: a tool on top of the product's public interfaces

A module may import its own layer and the ones below, never one above. On top of the
order: adapters use no policy (the lease manager drives them through core's contracts);
only adapters/ imports pyroute2; nothing imports the lab but cli.py, and that only inside
the function that runs `udpflannel lab`. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "udpflannel"

LAYERS = ["ground", "core", "policy", "adapters", "datapath", "backends", "agent", "cli", "lab"]
PLACES = {  # module or package -> layer; the longest match wins
    "udpflannel": "ground",
    "udpflannel.errors": "ground",
    "udpflannel.retry": "ground",
    "udpflannel.core": "core",
    "udpflannel.policy": "policy",
    "udpflannel.adapters": "adapters",
    "udpflannel.datapath": "datapath",
    "udpflannel.backends": "backends",
    "udpflannel.agent": "agent",
    "udpflannel.supervise": "agent",
    "udpflannel.cli": "cli",
    "udpflannel.dockeropts_cli": "cli",
    "udpflannel.goflags": "cli",
    "udpflannel.__main__": "cli",
    "udpflannel.lab": "lab",
}
NEVER = {  # (importer layer, imported layer): why not, although the order allows it
    ("adapters", "policy"): "adapters use no lease policy; the contracts they share live in core",
    **{("datapath", layer): "the data plane never imports the control plane" for layer in LAYERS if layer != "datapath"},
}
ONLY_IN = {"pyroute2": "adapters"}  # a third-party library -> the one layer that may import it
LAZY = {("udpflannel.cli", "lab")}  # (importer, layer above it) allowed inside a function only: `udpflannel lab`


def layer_of(module: str, placed: bool = False) -> str | None:
    """The layer of a module (or a name imported from it) by its own or its package's
    place. `placed`: a module of the product must be named in PLACES or lie in a
    sub-package named there; "udpflannel" alone places only the package's __init__."""
    name = module
    while name:
        if name in PLACES and (not placed or name != "udpflannel" or module == "udpflannel"):
            return PLACES[name]
        name = name.rpartition(".")[0]
    return None


def module_name(path: Path, package: Path) -> str:
    parts = ["udpflannel", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, is_package: bool = False) -> Iterator[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import in `source`."""
    tree = ast.parse(source)
    top = set(map(id, tree.body))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if node.module is None:  # from . import a, b: each name may be a module
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}", id(node) in top
            else:
                yield node.lineno, base, id(node) in top


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Every broken rule in {module: (source, is_package)}, as 'module:line: why'."""
    out = []
    for module, (source, is_package) in sorted(sources.items()):
        mine = layer_of(module, placed=True)
        if mine is None:
            out.append(f"{module}: in no layer (place it in PLACES)")
            continue
        for line, target, at_top in imports(module, source, is_package):
            where = f"{module}:{line}: imports {target}"
            lib = target.partition(".")[0]
            if lib in ONLY_IN and mine != ONLY_IN[lib]:
                out.append(f"{where}: only {ONLY_IN[lib]} may import {lib}")
            if lib != "udpflannel":
                continue
            theirs = layer_of(target)
            if theirs is None:
                out.append(f"{where}: in no layer")
            elif (module, theirs) in LAZY and not at_top:
                continue
            elif LAYERS.index(theirs) > LAYERS.index(mine):
                out.append(f"{where}: upward, {mine} -> {theirs}")
            elif (mine, theirs) in NEVER:
                out.append(f"{where}: {mine} -> {theirs}: {NEVER[mine, theirs]}")
    return out


def product_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p, PACKAGE): (p.read_text(), p.name == "__init__.py") for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_keeps_its_layers():
    sources = product_sources()
    assert "udpflannel.adapters.netlink" in sources and len(sources) > 40
    found = violations(sources)
    assert not found, "imports that break the layers (see this file's docstring):\n" + "\n".join(found)


# -- the check itself can fail -----------------------------------------------------------------


def check(**modules: str) -> list[str]:
    """violations() of the real package with some modules replaced or added (dots as __)."""
    sources = product_sources()
    for name, text in modules.items():
        name = name.replace("__", ".")
        sources[name] = (text, sources.get(name, ("", False))[1])
    return violations(sources)


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("udpflannel.core.subnet", "from ..policy.manager import LeaseManager", "upward, core -> policy"),
        ("udpflannel.core.subnet", "import udpflannel.agent", "upward, core -> agent"),
        ("udpflannel.adapters.etcd", "from ..retry import Waiting\nfrom ..policy import manager",
         "adapters -> policy: adapters use no lease policy"),
        ("udpflannel.backends.hostgw", "def f():\n    from ..agent import Agent", "upward, backends -> agent"),
        ("udpflannel.datapath.loop", "from udpflannel.core.subnet import Lease", "the data plane never imports"),
        ("udpflannel.backends.udp", "from pyroute2 import IPRoute", "only adapters may import pyroute2"),
        ("udpflannel.core.subnet", "import pyroute2.netlink", "only adapters may import pyroute2"),
        ("udpflannel.cli", "from .lab.command import lab", "upward, cli -> lab"),
        ("udpflannel.agent", "def f():\n    from .lab import netlab", "upward, agent -> lab"),
        ("udpflannel.gadget", "import os", "udpflannel.gadget: in no layer"),
    ],
)
def test_the_check_catches(module, source, expected):
    found = check(**{module.replace(".", "__"): source})
    assert len(found) == 1 and expected in found[0], found


def test_the_check_allows():
    assert check(udpflannel__cli="def lab_command():\n    from .lab.command import lab") == []
    assert check(udpflannel__lab__command="from ..agent import Agent\nfrom ..adapters.netlink import Netlink") == []
    assert check(udpflannel__adapters__iface="from ..core.events import ExternalInterface\nimport pyroute2") == []


def test_relative_imports_resolve_from_packages_and_modules():
    assert [t for _, t, _ in imports("udpflannel.backends", "from ..errors import E\nfrom .base import B", True)] == [
        "udpflannel.errors",
        "udpflannel.backends.base",
    ]
    assert [t for _, t, _ in imports("udpflannel.lab.command", "from . import netlab\nfrom .. import x")] == [
        "udpflannel.lab.netlab",
        "udpflannel.x",
    ]


# -- the lab is loaded only when it runs -------------------------------------------------------


def loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.splitlines()[-1].split()


def test_the_agent_starts_without_the_lab():
    mods = loaded_after("import udpflannel.cli")
    assert "udpflannel.cli" in mods and not [m for m in mods if m.startswith("udpflannel.lab")]
    mods = loaded_after("from udpflannel.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not [m for m in mods if m.startswith("udpflannel.lab")]
    mods = loaded_after("from udpflannel.cli import main\ntry:\n    main(['lab', '--help'])\nexcept SystemExit:\n    pass")
    assert "udpflannel.lab.command" in mods


def test_the_help_line_for_lab_is_the_labs_own():
    import click
    from click.testing import CliRunner

    from udpflannel.cli import LAB_HELP, main
    from udpflannel.lab.command import lab

    for limit in range(10, 100 - 6 - len("docker-opts")):  # every terminal width up to max_content_width
        assert click.Command("lab", help=LAB_HELP).get_short_help_str(limit) == lab.get_short_help_str(limit)
    assert "  lab          Reproduce the flannel multi-host" in CliRunner().invoke(main, ["--help"]).output
