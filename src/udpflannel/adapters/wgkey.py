"""The wireguard backend's private key file: made once, then read at every start.

flanneld keeps the key in /run/flannel/wgkey (environment WIREGUARD_KEY_FILE for another
path): the base64 key, no newline. udpflannel reads and writes the same file, so a host
moving between the two keeps its key, and a restart keeps the public key its peers know.
/run is a tmpfs on most systems: a reboot makes a new key, which the lease then announces.

A new file is written whole before it appears (a temporary file in the same directory,
then a hard link: a crash never leaves half a key, and a file another process made first
wins), with mode 0600. A file readable by group or others is narrowed to 0600, with a
warning; flanneld's 0400 is owner-only already and stays.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Callable

from ..core.wireguard import KEY_LEN, encode_key, parse_key, private_key_from
from ..errors import UdpFlannelError

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/flannel/wgkey"  # flanneld's
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"  # flanneld's way to move it


class KeyFileError(UdpFlannelError):
    """The key file cannot be read, parsed or written."""


def load_or_create(path: str, random: Callable[[int], bytes] = os.urandom) -> tuple[str, bool]:
    """The private key (base64) kept at `path`, made there first if there is none; and
    whether it was made now."""
    p = Path(path)
    try:
        return _read(p), False
    except FileNotFoundError:
        pass
    key = encode_key(private_key_from(random(KEY_LEN)))
    try:
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)
        except FileExistsError:  # made meanwhile by someone else: theirs counts
            return _read(p), False
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot write the WireGuard private key to {p}: {e}") from e
    return key, True


def _read(p: Path) -> str:
    try:
        mode = p.stat().st_mode
        text = p.read_text(errors="replace")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError(f"cannot read the WireGuard private key {p}: {e}") from e
    if parse_key(text.strip()) is None:
        raise KeyFileError(f"{p} holds no WireGuard private key (the base64 of {KEY_LEN} bytes); "
                           "delete it to have a new one made (peers learn the new public key from the lease)")  # fmt: skip
    if mode & 0o077:
        log.warning("%s is readable by others (mode %04o); narrowing it to 0600", p, stat.S_IMODE(mode))
        try:
            os.chmod(p, 0o600)
        except OSError as e:
            raise KeyFileError(f"cannot narrow the mode of {p}: {e}") from e
    return text.strip()
