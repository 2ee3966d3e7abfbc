"""The init program's settings: environment variables in, one validated frozen object out.

The variable names and defaults are the upstream init container's, so a pod spec written for
it works unchanged. As in upstream's shell script (``${VAR:-default}``), an empty value means
"use the default". Anything else that is not valid is refused with one line naming the
variable, so ``kubectl logs`` of a failed init container says what to fix.

Only IPv4 is handled: the metadata address is IPv4 (IMDS has no IPv6 endpoint), and the
redirect is installed with ``iptables``, not ``ip6tables``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Backend = Literal["nft", "legacy"]

DEFAULT_PROXY_PORT = 8000
DEFAULT_METADATA_IP = ipaddress.IPv4Address("169.254.169.254")
DEFAULT_METADATA_PORT = 80
DEFAULT_PROXY_UID = 1501

# uid_t is 32 bits and (uid_t)-1 means "no uid", so the largest real uid is 2**32 - 2.
MAX_UID = 2**32 - 2

_DIGITS = re.compile(r"[0-9]+")


class SettingsError(ValueError):
    """A variable has a value the program cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    proxy_port: int = DEFAULT_PROXY_PORT
    metadata_ip: ipaddress.IPv4Address = DEFAULT_METADATA_IP
    metadata_port: int = DEFAULT_METADATA_PORT
    proxy_uid: int = DEFAULT_PROXY_UID
    # None: choose automatically (see init.iptables.discover).
    backend: Backend | None = None


def from_env(env: Mapping[str, str]) -> Settings:
    """Read the settings from ``env``; raise SettingsError on the first invalid value."""
    return Settings(
        proxy_port=_port(env, "PROXY_PORT", DEFAULT_PROXY_PORT),
        metadata_ip=_ipv4(env, "METADATA_IP", DEFAULT_METADATA_IP),
        metadata_port=_port(env, "METADATA_PORT", DEFAULT_METADATA_PORT),
        proxy_uid=_uid(env, "PROXY_UID", DEFAULT_PROXY_UID),
        backend=_backend(env, "IPTABLES_BACKEND"),
    )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "")
    return value if value != "" else None


def _integer(name: str, raw: str, what: str) -> int:
    # int() would also accept " 80", "+80" and "8_0"; a pod spec value should be plain digits.
    if not _DIGITS.fullmatch(raw):
        raise SettingsError(f"{name}={raw!r} is not {what}")
    return int(raw)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    what = "a TCP port (an integer from 1 to 65535)"
    port = _integer(name, raw, what)
    if not 1 <= port <= 65535:
        raise SettingsError(f"{name}={raw!r} is out of range: expected {what}")
    return port


def _uid(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    what = f"a numeric user id (an integer from 0 to {MAX_UID})"
    uid = _integer(name, raw, what)
    if uid > MAX_UID:
        raise SettingsError(f"{name}={raw!r} is out of range: expected {what}")
    return uid


def _ipv4(
    env: Mapping[str, str], name: str, default: ipaddress.IPv4Address
) -> ipaddress.IPv4Address:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not an IPv4 address (expected e.g. 169.254.169.254)"
        ) from None
    if not isinstance(address, ipaddress.IPv4Address):
        raise SettingsError(f"{name}={raw!r} is an IPv6 address; only IPv4 is supported")
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise SettingsError(
            f"{name}={raw!r} cannot be a metadata address (unspecified, multicast or loopback)"
        )
    return address


def _backend(env: Mapping[str, str], name: str) -> Backend | None:
    raw = _get(env, name)
    if raw is None:
        return None
    if raw == "nft":
        return "nft"
    if raw == "legacy":
        return "legacy"
    raise SettingsError(f"{name}={raw!r} is not a backend: expected 'nft' or 'legacy'")
