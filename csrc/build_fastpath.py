"""Build of the eBPF fast path: the BPF object (clang -target bpf) and its loader's extension
(cffi, linked with libbpf) -> udpflannel.datapath.uf_fastpath.bpf.o and ._fastpath.

Both are optional: where clang cannot target BPF or libbpf's headers are missing (or
UDPFLANNEL_BPF=0 asks for it), setup.py leaves them out, the package installs as before and
`udpflannel.datapath.fastpath` reports the fast path unavailable, with this module's reason.

    python csrc/build_fastpath.py            # in place: both next to the package under src/
    python csrc/build_fastpath.py --object F # only the BPF object, to F (fuzz/run.sh)

setup.py wires the extension in with ``cffi_modules=["csrc/build_fastpath.py:ffibuilder"]``
(only when `problem()` is None) and the object through `BuildPy`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from build_datapath import _REGION  # noqa: E402  (the same cffi-region convention)

OBJECT = "uf_fastpath.bpf.o"
BPF_SOURCE = HERE / "bpf" / "fastpath.bpf.c"
# cdef order: a header's declarations may use types from earlier ones
HEADERS = ["common.h", "checks.h", "bpf/fastpath_abi.h", "fastpath.h"]
DEPENDS = ["common.h", "checks.h", "lookup.h", "loop.h", "bpf/fastpath_abi.h", "fastpath.h"]
CLANG = os.environ.get("CLANG", "clang")


def _multiarch() -> str:
    """Debian's include directory for <asm/types.h> (linux/bpf.h needs it)."""
    for cc in ("gcc", "cc", CLANG):
        try:
            out = subprocess.run([cc, "-print-multiarch"], capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            continue
        if out:
            return out
    return ""


def bpf_cflags() -> list[str]:
    arch = _multiarch()
    return ["-O2", "-g", "-target", "bpf", "-ffreestanding", "-std=gnu11", "-Wall", "-Wextra",
            "-Wno-unused-parameter", "-iquote", str(HERE), *(["-idirafter", f"/usr/include/{arch}"] if arch else [])]


def compile_object(out: Path) -> None:
    """clang -target bpf csrc/bpf/fastpath.bpf.c -> out. Raises CalledProcessError / OSError."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([CLANG, *bpf_cflags(), "-c", str(BPF_SOURCE), "-o", str(out)], check=True,
                   capture_output=True, text=True, timeout=300)


def problem() -> str | None:
    """Why the fast path cannot be built here, or None when it can."""
    if os.environ.get("UDPFLANNEL_BPF", "1") == "0":
        return "UDPFLANNEL_BPF=0 at build time"
    if shutil.which(CLANG) is None:
        return f"{CLANG} not found at build time (Debian: apt-get install clang)"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <bpf/libbpf.h>\nint main(void) { return libbpf_major_version() > 0 ? 0 : 1; }\n")
        cc = os.environ.get("CC", "cc")
        p = subprocess.run([cc, str(src), "-o", str(Path(tmp) / "probe"), "-lbpf"], capture_output=True, text=True)
        if p.returncode != 0:
            return "libbpf headers or library not found at build time (Debian: apt-get install libbpf-dev)"
        try:
            compile_object(Path(tmp) / "probe.bpf.o")
        except (subprocess.CalledProcessError, OSError) as e:
            err = getattr(e, "stderr", "") or str(e)
            return f"{CLANG} -target bpf failed: {err.strip().splitlines()[-1] if err.strip() else e}"
    return None


def _cdef_text() -> str:
    parts = []
    for name in HEADERS:
        found = _REGION.findall((HERE / name).read_text())
        if not found:
            raise RuntimeError(f"csrc/{name}: no cffi region")
        parts.extend(found)
    return "\n".join(parts)


def make_ffibuilder(prefix: str = "csrc") -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef_text())
    ffi.set_source(
        "udpflannel.datapath._fastpath",
        '#include "fastpath.h"\n',
        sources=[f"{prefix}/fastpath.c", f"{prefix}/common.c"],  # common.c: uf_counter_name, in the cdef
        depends=[f"{prefix}/{h}" for h in DEPENDS],
        libraries=["bpf"],
        extra_compile_args=["-iquote", prefix, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return ffi


ffibuilder = make_ffibuilder()


def _build_py_class():
    """setup.py's build_py: the Python files, then the BPF object next to them (when it can)."""
    from setuptools.command.build_py import build_py

    class BuildPy(build_py):
        def run(self) -> None:
            super().run()
            why = problem()
            dest = Path(self.build_lib) / "udpflannel" / "datapath" / OBJECT
            if why is not None:
                self.announce(f"udpflannel: no eBPF fast path: {why}", level=3)
                dest.unlink(missing_ok=True)  # not an earlier build's
                return
            compile_object(dest)

    return BuildPy


if __name__ == "__main__":
    if "--object" in sys.argv:  # only the BPF object, to that path (fuzz/run.sh)
        compile_object(Path(sys.argv[sys.argv.index("--object") + 1]))
        sys.exit(0)
    why = problem()
    if why is not None:
        sys.exit(f"build_fastpath: {why}")
    pkg = ROOT / "src" / "udpflannel" / "datapath"
    compile_object(pkg / OBJECT)
    built = Path(make_ffibuilder(str(HERE)).compile(tmpdir=str(ROOT / "build" / "cffi-fastpath"), verbose="-v" in sys.argv))
    shutil.copy2(built, pkg / built.name)
    print(pkg / OBJECT)
    print(pkg / built.name)
