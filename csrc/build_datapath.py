"""cffi build of the C data path (out-of-line API mode) -> udpflannel.datapath._core.

setup.py wires this in with ``cffi_modules=["csrc/build_datapath.py:ffibuilder"]``;
``python csrc/build_datapath.py`` builds the extension in place under src/.

The cdef is the text between the ``/* cffi:begin */`` and ``/* cffi:end */``
markers of each header, so declarations live in exactly one place.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Order matters: a header's declarations may use types from earlier ones.
HEADERS = ["common.h", "csum.h", "checks.h", "lookup.h", "packet.h", "offload.h", "pipeline.h", "steer.h", "features.h",
           "loop.h"]
SOURCES = ["common.c", "csum.c", "lookup.c", "packet.c", "offload.c", "pipeline.c", "steer.c", "features.c", "loop.c"]
_REGION = re.compile(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", re.S)


def _cdef_text() -> str:
    parts = []
    for name in HEADERS:
        text = (HERE / name).read_text()
        found = _REGION.findall(text)
        if not found:
            raise RuntimeError(f"csrc/{name}: no cffi region")
        parts.extend(found)
    return "\n".join(parts)


def make_ffibuilder(prefix: str = "csrc", sanitize: str = "") -> FFI:
    """The builder; source paths start with prefix (relative to the repo root for setuptools).

    sanitize (e.g. "address,undefined") builds with those sanitizers: the script run as
    `UF_SANITIZE=... build_datapath.py --out DIR` (tests/integration/test_dp_asan.py), never
    the module-level builder setup.py uses, whatever the environment.
    """
    san = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"] if sanitize else []
    ffi = FFI()
    ffi.cdef(_cdef_text())
    ffi.set_source(
        "udpflannel.datapath._core",
        "".join(f'#include "{h}"\n' for h in HEADERS),
        sources=[f"{prefix}/{s}" for s in SOURCES],
        # -iquote, not -I: csrc/features.h must not shadow glibc's <features.h>
        depends=[f"{prefix}/{h}" for h in HEADERS + ["internal.h"]],
        # -fvisibility=hidden: calls between the data path's files stay direct (no PLT); only the
        # module's init function, which Python.h marks visible, is exported
        extra_compile_args=["-iquote", prefix, "-O2", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra",
                            "-Wno-unused-parameter", "-pthread", *san],
        extra_link_args=["-pthread", *san],
    )
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    # In-place build: cffi compiles inside tmpdir (so it gets absolute paths);
    # objects stay under build/, only the extension is copied next to the package.
    import shutil

    # --out DIR: put the extension in DIR instead of next to the package (the ASan test does)
    out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else None
    tmp = (out or ROOT / "build") / "cffi"
    builder = make_ffibuilder(str(HERE), sanitize=os.environ.get("UF_SANITIZE", ""))
    built = Path(builder.compile(tmpdir=str(tmp), verbose="-v" in sys.argv))
    dest = (out or ROOT / "src" / "udpflannel" / "datapath") / built.name
    shutil.copy2(built, dest)
    print(dest)
