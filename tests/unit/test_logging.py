"""-v levels (cli.setup_logging): libraries stay at WARNING unless -v 2 or more."""

from __future__ import annotations

import logging

import pytest

from udpflannel import cli


@pytest.fixture(autouse=True)
def restore_levels():
    names = ("", "udpflannel", *cli.LIBRARY_LOGGERS)
    saved = {n: logging.getLogger(n).level for n in names}
    handlers = list(logging.root.handlers)
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)
    for h in list(logging.root.handlers):
        if h not in handlers:
            logging.root.removeHandler(h)
    logging.root.handlers[:] = handlers


def effective(name: str) -> int:
    return logging.getLogger(name).getEffectiveLevel()


@pytest.mark.parametrize("verbose,ours,libs", [
    (0, logging.INFO, logging.WARNING),
    (1, logging.DEBUG, logging.WARNING),
    (2, logging.DEBUG, logging.DEBUG),
    (5, logging.DEBUG, logging.DEBUG),
])
def test_levels(verbose, ours, libs):
    logging.getLogger().setLevel(logging.NOTSET)
    logging.root.handlers.clear()  # basicConfig only configures an unconfigured root
    cli.setup_logging(verbose)
    assert effective("udpflannel.agent") == ours
    assert effective("udpflannel.adapters.ipmasq") == ours
    for name in ("grpc._cython.cygrpc", "grpc.aio._call", "aetcd.client", "asyncio", "pyroute2.netlink.core"):
        assert effective(name) == libs, name


def test_help_documents_the_levels():
    from click.testing import CliRunner

    out = CliRunner().invoke(cli.main, ["--help"]).output
    flat = " ".join(out.split())
    assert "0 info" in flat and "1 (-v alone)" in flat and "2 or more" in flat and "grpc" in flat
