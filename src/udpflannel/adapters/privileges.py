"""What this process may do: its effective capabilities, read from /proc/self/status."""

from __future__ import annotations

from typing import Optional

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}


def parse_capeff(status_text: str) -> Optional[int]:
    """The CapEff bit mask from /proc/<pid>/status text (None when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return None


def effective_capabilities(path: str = "/proc/self/status") -> int:
    """This process's effective capability mask (0 when it cannot be read)."""
    try:
        with open(path) as f:
            return parse_capeff(f.read()) or 0
    except OSError:
        return 0


def missing(needed: dict[int, str], have: int) -> list[str]:
    """'CAP_X (why)' for each needed capability not in the mask `have`."""
    return [f"{NAMES.get(cap, f'capability {cap}')} ({why})" for cap, why in sorted(needed.items())
            if not have & (1 << cap)]  # fmt: skip
