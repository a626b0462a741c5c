"""systemd's notification protocol (sd_notify), without libsystemd.

When systemd starts us with Type=notify it sets NOTIFY_SOCKET: a datagram socket (a path,
or "@name" in the abstract namespace) to which we send newline-separated KEY=VALUE lines:
READY=1 once the host is set up, STATUS=<text> while waiting, STOPPING=1 on shutdown,
WATCHDOG=1 every half WatchdogSec (systemd sets WATCHDOG_USEC, and WATCHDOG_PID when it
means another process). Without NOTIFY_SOCKET every call does nothing. A failed send is
logged once and never stops the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger("udpflannel.sdnotify")


class SdNotify:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        path = environ.get("NOTIFY_SOCKET", "")
        self.address: Optional[str] = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval: Optional[float] = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send KEY=VALUE lines (READY=1 is notify(READY=1)). True when sent."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(msg)
        except OSError as e:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), e)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1, STATUS="stopping")

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)
