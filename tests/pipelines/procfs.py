"""Process and socket facts read from Linux's /proc, for tests about what a run leaves behind.

/proc rather than psutil: psutil is no dependency of this project (only Ray's vendored copy exists).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    """A process as first seen: `start` (clock ticks since boot) tells it apart from a reused pid."""

    pid: int
    start: int
    cmdline: str


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


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
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(name))  # fields[1]: the parent's pid
            starts[int(name)] = int(fields[19])  # starttime
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(Proc(child, starts[child], cmdline(child)))
            stack.append(child)
    return found


def alive(proc: Proc) -> bool:
    """Whether `proc` still runs: same pid and start time, and not a zombie (exited, unreaped)."""
    fields = _stat_fields(proc.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == proc.start


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
