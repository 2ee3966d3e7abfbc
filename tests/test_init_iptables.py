"""Backend choice, privilege detection and error mapping, with fake binaries (no root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from init.iptables import (
    Iptables,
    IptablesError,
    IptablesNotFound,
    IptablesPermissionDenied,
    choose,
    discover,
    has_net_admin,
    rule_count,
)

ALL = (
    "iptables-nft-save",
    "iptables-nft-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "iptables-save",
    "iptables-restore",
)


def which_of(*present: str) -> Callable[[str], str | None]:
    def which(name: str) -> str | None:
        return f"/sbin/{name}" if name in present else None

    return which


def probe_of(**counts: int | None) -> Callable[[Iptables], int | None]:
    def probe(iptables: Iptables) -> int | None:
        return counts[iptables.name]

    return probe


@pytest.mark.parametrize(
    ("nft", "legacy", "chosen"),
    [
        (0, 0, "nft"),
        (3, 3, "nft"),
        (0, 5, "legacy"),
        (7, 2, "nft"),
        (None, 0, "legacy"),
        (0, None, "nft"),
        (None, None, None),
    ],
)
def test_choose_prefers_rules_then_nft(nft: int | None, legacy: int | None, chosen: str) -> None:
    assert choose({"nft": nft, "legacy": legacy}) == chosen


def test_discover_auto_picks_the_backend_with_rules() -> None:
    found = discover(None, which_of(*ALL), probe_of(nft=0, legacy=4))
    assert found == Iptables(
        "legacy", "/sbin/iptables-legacy-save", "/sbin/iptables-legacy-restore"
    )
    assert found.label == "iptables-legacy"


def test_discover_falls_back_to_plain_iptables() -> None:
    which = which_of("iptables-save", "iptables-restore")
    found = discover(None, which, probe_of())
    assert found == Iptables("iptables", "/sbin/iptables-save", "/sbin/iptables-restore")
    assert found.label == "iptables"


def test_discover_falls_back_to_plain_when_no_variant_works() -> None:
    found = discover(None, which_of(*ALL), probe_of(nft=None, legacy=None))
    assert found.name == "iptables"


def test_discover_ignores_a_half_installed_backend() -> None:
    which = which_of("iptables-nft-save", "iptables-legacy-save", "iptables-legacy-restore")
    found = discover(None, which, probe_of(legacy=0))
    assert found.name == "legacy"


def test_forced_backend_is_used_without_probing() -> None:
    def probe(iptables: Iptables) -> int | None:
        raise AssertionError("a forced backend is not probed")

    assert discover("legacy", which_of(*ALL), probe).name == "legacy"


def test_forced_backend_that_is_missing_is_reported() -> None:
    with pytest.raises(IptablesNotFound, match="IPTABLES_BACKEND=nft"):
        discover("nft", which_of("iptables-legacy-save", "iptables-legacy-restore"))


def test_no_iptables_at_all_is_reported() -> None:
    with pytest.raises(IptablesNotFound, match="no iptables on PATH"):
        discover(None, which_of(), probe_of())


def _fake_binary(tmp_path: Path, name: str, script: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_permission_errors_from_iptables_are_recognised(tmp_path: Path) -> None:
    save = _fake_binary(
        tmp_path,
        "iptables-save",
        'echo "iptables-save v1.8.9: Cannot initialize: Permission denied (you must be root)" >&2;'
        " exit 4",
    )
    with pytest.raises(IptablesPermissionDenied, match="you must be root"):
        Iptables("iptables", save, save).save_nat()


def test_other_failures_keep_iptables_message_on_one_line(tmp_path: Path) -> None:
    restore = _fake_binary(
        tmp_path,
        "iptables-restore",
        'cat >/dev/null; printf "line 4 failed\\nbad rule\\n" >&2; exit 1',
    )
    with pytest.raises(IptablesError) as raised:
        Iptables("iptables", restore, restore).restore_noflush("*nat\nCOMMIT\n")
    assert not isinstance(raised.value, IptablesPermissionDenied)
    assert "line 4 failed bad rule" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_restore_feeds_the_transaction_on_stdin_with_noflush(tmp_path: Path) -> None:
    log = tmp_path / "log"
    restore = _fake_binary(tmp_path, "iptables-restore", f'echo "$@" > {log}; cat >> {log}')
    Iptables("iptables", restore, restore).restore_noflush("*nat\nCOMMIT\n")
    assert log.read_text() == "--noflush --wait=5\n*nat\nCOMMIT\n"


def test_a_backend_that_fails_to_save_does_not_work_here(tmp_path: Path) -> None:
    broken = _fake_binary(tmp_path, "broken-save", 'echo "no nf_tables" >&2; exit 1')
    assert rule_count(Iptables("nft", broken, broken)) is None
    ok = _fake_binary(tmp_path, "ok-save", 'printf "*nat\\n-A OUTPUT -j ACCEPT\\n-A X -j Y\\n"')
    assert rule_count(Iptables("nft", ok, ok)) == 2
    # As iptables-legacy without CAP_NET_RAW: nft may still work, so this is not fatal.
    denied = _fake_binary(tmp_path, "denied-save", 'echo "Permission denied" >&2; exit 4')
    assert rule_count(Iptables("legacy", denied, denied)) is None


@pytest.mark.parametrize(
    ("capeff", "expected"),
    [("0000000000001000", True), ("000001ffffffffff", True), ("0000000000000fff", False)],
)
def test_net_admin_is_bit_12_of_capeff(tmp_path: Path, capeff: str, expected: bool) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
    assert has_net_admin(str(status)) is expected


def test_net_admin_unknown_without_proc(tmp_path: Path) -> None:
    assert has_net_admin(str(tmp_path / "missing")) is None
