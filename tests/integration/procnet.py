"""Which TCP addresses a process listens on, and whether it runs, from Linux's /proc (no psutil)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

__all__ = ["listening_addresses", "process_alive"]

_LISTEN = "0A"


def _decode(hex_address: str) -> tuple[str, int]:
    """Decode ``0100007F:1F90`` (little-endian words) into ``("127.0.0.1", 8080)``."""
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    # /proc/net/tcp{,6} prints the address as 32-bit words in host (little-endian) order.
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    return str(ipaddress.ip_address(b"".join(words))), int(port_hex, 16)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process *pid*."""
    inodes = _socket_inodes(pid)
    found: set[tuple[str, int]] = set()
    for table in (Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and inode in inodes:
                found.add(_decode(local))
    return found


def process_alive(pid: int) -> bool:
    """True while *pid* runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:  # it ended between the two looks
        return False
