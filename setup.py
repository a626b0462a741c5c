"""Build glue: pyproject.toml holds the metadata; this wires the cffi builds of the C data path
and, where the toolchain allows (csrc/build_fastpath.py: clang -target bpf, libbpf), the eBPF
fast path's object and loader."""
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "csrc"))
import build_fastpath  # noqa: E402

modules = ["csrc/build_datapath.py:ffibuilder"]
why = build_fastpath.problem()
if why is None:
    modules.append("csrc/build_fastpath.py:ffibuilder")
else:
    print(f"udpflannel: building without the eBPF fast path: {why}", file=sys.stderr)

setup(cffi_modules=modules, cmdclass={"build_py": build_fastpath._build_py_class()})
