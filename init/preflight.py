"""Checks that the redirect can work at all, before installing it.

A connect() to the metadata address is routed *before* the nat OUTPUT chain sees the packet:
without a route it fails with "network unreachable" and the redirect is never consulted. And
REDIRECT sends locally generated packets to 127.0.0.1, so the loopback link must be up. Either
fault would otherwise show up only later, as an app that cannot get a token.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913  # the same on every Linux architecture
# struct ifreq: the interface name (IFNAMSIZ = 16), then a union whose first member here is
# the short ifr_flags; 40 bytes on 64-bit Linux.
_IFREQ = struct.Struct("16sH22x")


class PreflightError(Exception):
    """The network namespace cannot carry the redirect; the message says why."""


def check(metadata_ip: ipaddress.IPv4Address) -> None:
    """Raise PreflightError unless loopback is up and ``metadata_ip`` has a route."""
    try:
        _check(metadata_ip)
    except OSError as exc:  # the kernel would not answer, not a finding
        raise PreflightError(f"cannot inspect the network namespace: {exc}") from None


def _check(metadata_ip: ipaddress.IPv4Address) -> None:
    # The standard library's socket calls, no netlink library: the init image carries no
    # dependency at all (deploy/README.md).
    try:
        socket.if_nametoindex("lo")
    except OSError:
        raise PreflightError("no loopback interface 'lo' in this network namespace") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        if not _IFREQ.unpack(answer)[1] & IFF_UP:
            raise PreflightError(
                "loopback interface 'lo' is down: redirected traffic to 127.0.0.1 would fail"
            )
        # connect() of a UDP socket sends nothing: it only looks the route up, as a TCP
        # connect() would before the nat table is consulted.
        try:
            sock.connect((str(metadata_ip), 80))
        except OSError as exc:
            if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM):
                raise
            reason = os.strerror(exc.errno)
            hint = " (no route)" if exc.errno == errno.ENETUNREACH else ""
            raise PreflightError(
                f"cannot route to METADATA_IP {metadata_ip}: {reason}{hint};"
                " connections would fail before the redirect is applied"
            ) from None
