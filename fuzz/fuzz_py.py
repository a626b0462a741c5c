#!/usr/bin/env python3
"""Run one Python fuzz target (fuzz/py_targets.py) under atheris, libFuzzer's engine for CPython.

    .venv/bin/python fuzz/fuzz_py.py TARGET [libFuzzer flags] CORPUS_DIR [MORE_DIRS]
    .venv/bin/python fuzz/fuzz_py.py watch -max_total_time=60 build/fuzz/corpus-py-watch fuzz/corpus/py-watch

TARGET is lease, config or watch. udpflannel's modules are instrumented for coverage;
a target's AssertionError or any other exception is a crash (libFuzzer writes the input
to -artifact_prefix). fuzz/run.sh runs these as py-lease, py-config, py-watch.
"""

import logging
import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["udpflannel", "py_targets"]):
    import py_targets


def main() -> None:
    logging.disable(logging.CRITICAL)  # the registry's warnings about each bad input
    args = sys.argv[1:]
    if args and args[0] in py_targets.TARGETS:  # libFuzzer re-runs us (merge) without it: keep it in the environment
        os.environ["UF_FUZZ_TARGET"] = args.pop(0)
    name = os.environ.get("UF_FUZZ_TARGET")
    if name not in py_targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(py_targets.TARGETS)}}} [libFuzzer flags] CORPUS...")
    atheris.Setup([sys.argv[0], *args], py_targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
