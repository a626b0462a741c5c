"""The data path's exceptions: every negative return code of the C core becomes one of these."""

from __future__ import annotations

import errno as _errno
import os


class DataPathError(OSError):
    """A C data path call failed; ``errno`` holds the (positive) error number."""

    def __init__(self, err: int, what: str):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what


class TableFullError(DataPathError):
    """The lease table already holds UF_TABLE_MAX_LEASES leases."""


class InvalidArgumentError(DataPathError, ValueError):
    """The C core rejected an argument (EINVAL)."""


_BY_ERRNO: dict[int, type[DataPathError]] = {
    _errno.ENOSPC: TableFullError,
    _errno.EINVAL: InvalidArgumentError,
}


def check(rc: int, what: str) -> int:
    """Return rc when it is >= 0, else raise the typed exception for -rc."""
    if rc >= 0:
        return rc
    err = -rc
    raise _BY_ERRNO.get(err, DataPathError)(err, what)
