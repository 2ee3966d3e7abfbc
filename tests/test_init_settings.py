"""Environment → Settings: upstream's defaults, and one clear line for every bad value."""

from __future__ import annotations

import ipaddress

import pytest

from init.settings import Settings, SettingsError, from_env

UPSTREAM_METADATA_IP = "169.254.169.254"


def test_defaults_are_upstreams() -> None:
    settings = from_env({})
    assert settings == Settings(
        proxy_port=8000,
        metadata_ip=ipaddress.IPv4Address(UPSTREAM_METADATA_IP),
        metadata_port=80,
        proxy_uid=1501,
        backend=None,
    )


def test_empty_values_mean_default_like_upstreams_shell_script() -> None:
    names = ("PROXY_PORT", "METADATA_IP", "METADATA_PORT", "PROXY_UID", "IPTABLES_BACKEND")
    assert from_env(dict.fromkeys(names, "")) == Settings()


def test_every_variable_is_read() -> None:
    settings = from_env(
        {
            "PROXY_PORT": "8123",
            "METADATA_IP": "10.0.0.5",
            "METADATA_PORT": "8080",
            "PROXY_UID": "0",
            "IPTABLES_BACKEND": "legacy",
        }
    )
    assert settings == Settings(
        proxy_port=8123,
        metadata_ip=ipaddress.IPv4Address("10.0.0.5"),
        metadata_port=8080,
        proxy_uid=0,
        backend="legacy",
    )


def test_leading_zeros_and_limits_are_accepted() -> None:
    settings = from_env({"PROXY_PORT": "65535", "METADATA_PORT": "0080", "PROXY_UID": "4294967294"})
    assert (settings.proxy_port, settings.metadata_port, settings.proxy_uid) == (
        65535,
        80,
        4294967294,
    )


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("PROXY_PORT", "0", "out of range"),
        ("PROXY_PORT", "65536", "out of range"),
        ("PROXY_PORT", "-1", "not a TCP port"),
        ("PROXY_PORT", "80a", "not a TCP port"),
        ("PROXY_PORT", " 80", "not a TCP port"),
        ("PROXY_PORT", "+80", "not a TCP port"),
        ("PROXY_PORT", "8_0", "not a TCP port"),
        ("METADATA_PORT", "http", "not a TCP port"),
        ("METADATA_PORT", "100000", "out of range"),
        ("PROXY_UID", "-1", "not a numeric user id"),
        ("PROXY_UID", "nobody", "not a numeric user id"),
        ("PROXY_UID", "4294967295", "out of range"),
        ("METADATA_IP", "169.254.169", "not an IPv4 address"),
        ("METADATA_IP", "169.254.169.254/32", "not an IPv4 address"),
        ("METADATA_IP", "metadata.internal", "not an IPv4 address"),
        ("METADATA_IP", "fd00:ec2::254", "IPv6"),
        ("METADATA_IP", "0.0.0.0", "cannot be a metadata address"),
        ("METADATA_IP", "127.0.0.1", "cannot be a metadata address"),
        ("IPTABLES_BACKEND", "nftables", "expected 'nft' or 'legacy'"),
    ],
)
def test_invalid_values_name_the_variable_and_the_problem(
    name: str, value: str, complaint: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        from_env({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}={value!r} ")
    assert complaint in message
    assert "\n" not in message
