"""Which processes listen on a TCP port, from Linux's /proc: each worker's gRPC server holds a
socket of its own on GRPC_PORT (SO_REUSEPORT), unlike HTTP's one socket, held by the master."""

import os
from collections.abc import Sequence
from pathlib import Path

LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP `port`, IPv4 and IPv6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == LISTEN:
                inodes.add(fields[9])
    return inodes


def listening_pids(port: int, pids: Sequence[int]) -> list[int]:
    """Those of `pids` that hold a socket listening on TCP `port`."""
    inodes = listening_inodes(port)
    holders = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except (FileNotFoundError, PermissionError):
            continue  # exited meanwhile, or not ours to read
        sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:")}
        if sockets & inodes:
            holders.append(pid)
    return holders


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (gunicorn's workers are the master's children)."""
    try:
        return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except FileNotFoundError:
        return []
