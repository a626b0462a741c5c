"""Every input kept in fuzz/corpus/py-<target>/ (hand-written hostile values and what the
atheris runs found reaching new code) replayed through its Python fuzz target: the
regression cases of fuzz/py_targets.py, run without atheris on every test run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("py_targets", ROOT / "fuzz" / "py_targets.py")
py_targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(py_targets)

CASES = sorted((t, p) for t in py_targets.TARGETS for p in (ROOT / "fuzz" / "corpus" / f"py-{t}").glob("*"))


def test_every_target_has_kept_inputs():
    assert {t for t, _ in CASES} == set(py_targets.TARGETS)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}-{p.name[:12]}" for t, p in CASES])
def test_kept_input(target, path):
    err = py_targets.run(target, path.read_bytes())
    assert err is None, f"{target} on {path}: {err!r}"


def test_the_watch_target_can_fail():
    """The harness is not blind: a view that routes our own key breaks its invariant."""
    view = py_targets.PeerView(py_targets.LeaseContext((py_targets.NETWORK,)))
    view.reset([py_targets.OWN])  # no own lease in the context: our key would be a peer
    with pytest.raises(AssertionError):
        py_targets._check_view(view)
