"""Process and socket facts read from Linux's /proc, for tests about what a run leaves behind.

/proc rather than psutil: psutil is no dependency of this project (only Ray's vendored copy exists).
/proc/<pid>/stat is read by `pipelines.procfs`, the parser the lease and the watchdog use.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from pipelines.procfs import pids, read_stat


@dataclass(frozen=True)
class Proc:
    """A process as first seen: `start` (clock ticks since boot) tells it apart from a reused pid."""

    pid: int
    start: int
    cmdline: str


def cmdline(pid: int) -> str:
    """The process's command line, spaces for NULs ('' when gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[Proc]:
    """Every living descendant of `root` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for pid in pids():
        if (stat := read_stat(pid)) is not None:
            children.setdefault(stat.ppid, []).append(pid)
            starts[pid] = stat.start
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(Proc(child, starts[child], cmdline(child)))
            stack.append(child)
    return found


def alive(proc: Proc) -> bool:
    """Whether `proc` still runs: same pid and start time, and not a zombie (exited, unreaped)."""
    stat = read_stat(proc.pid)
    return stat is not None and stat.state != "Z" and stat.start == proc.start


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/{tcp,udp}[6] writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def bound_sockets(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """The listening TCP and the bound UDP sockets of `pids`: (pid, protocol, address, port).

    An IPv6 socket bound to `::ffff:127.0.0.1` (IPv4-mapped) is reported as 127.0.0.1.
    """
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            # 0A: TCP LISTEN; 07: UDP unconnected (a bound socket that takes datagrams from anyone)
            if inode not in owners or state != ("0A" if table.startswith("tcp") else "07"):
                continue
            hex_ip, hex_port = local.split(":")
            ip = _address(hex_ip)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found.append((owners[inode], table.rstrip("6"), str(ip), int(hex_port, 16)))
    return found


def is_loopback(address: str) -> bool:
    """Whether a socket bound to `address` is reachable from this machine only."""
    return ipaddress.ip_address(address).is_loopback
