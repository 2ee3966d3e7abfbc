"""Checks that the redirect can work at all, before installing it.

A connect() to the metadata address is routed *before* the nat OUTPUT chain sees the packet:
without a route it fails with "network unreachable" and the redirect is never consulted. And
REDIRECT sends locally generated packets to 127.0.0.1, so the loopback link must be up. Either
fault would otherwise show up only later, as an app that cannot get a token.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFF_UP = 0x1


class PreflightError(Exception):
    """The network namespace cannot carry the redirect; the message says why."""


def check(metadata_ip: ipaddress.IPv4Address) -> None:
    """Raise PreflightError unless loopback is up and ``metadata_ip`` has a route."""
    try:
        _check(metadata_ip)
    except (NetlinkError, OSError) as exc:  # netlink itself failed, not a finding
        raise PreflightError(f"cannot inspect the network namespace: {exc}") from None


def _check(metadata_ip: ipaddress.IPv4Address) -> None:
    with IPRoute() as ipr:
        loopback = ipr.link_lookup(ifname="lo")
        if not loopback:
            raise PreflightError("no loopback interface 'lo' in this network namespace")
        links = list(ipr.get_links(loopback[0]))
        if not links or not links[0]["flags"] & IFF_UP:
            raise PreflightError(
                "loopback interface 'lo' is down: redirected traffic to 127.0.0.1 would fail"
            )
        try:
            list(ipr.route("get", dst=str(metadata_ip)))
        except NetlinkError as exc:
            reason = os.strerror(exc.code) if exc.code else str(exc)
            hint = " (no route)" if exc.code == errno.ENETUNREACH else ""
            raise PreflightError(
                f"cannot route to METADATA_IP {metadata_ip}: {reason}{hint};"
                " connections would fail before the redirect is applied"
            ) from None
