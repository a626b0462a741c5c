"""The compiled C core (built by csrc/build_datapath.py). Import ffi and lib from here only."""

from __future__ import annotations

try:
    from udpflannel.datapath._core import ffi, lib
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "udpflannel's C data path is not built: run `pip install -e .` or "
        "`python csrc/build_datapath.py` in the repository"
    ) from exc

__all__ = ["ffi", "lib"]
