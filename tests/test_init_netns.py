"""The init program for real, in network namespaces the tests create (root only), with both
iptables backends: what the redirect does to traffic, idempotence, --check, --cleanup, and every
failure's exit code and message. All traffic stays inside the test's own namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from init import cli
from tests.support.netns import (
    BACKENDS,
    METADATA_IP,
    OTHER_METADATA_PORT,
    PROXY_PORT,
    PROXY_UID,
    SETPRIV,
    Netns,
    PodNetwork,
    http_get,
    init_env,
    iptables_available,
    nat_table,
    netns,
    pod_network,
    requires_root,
    run_init,
    start_fake_imds,
    start_stand_in_proxy,
)

pytestmark = requires_root

APP_UID = 1000
INSTANCE_PATH = "/metadata/instance?api-version=2021-02-01"
INSTANCE_URL = f"http://{METADATA_IP}{INSTANCE_PATH}"
RULES = [
    f"-A OUTPUT -d {METADATA_IP}/32 -p tcp -m tcp --dport 80 -j AZWI_PROXY_OUTPUT",
    f"-A AZWI_PROXY_OUTPUT -m owner --uid-owner {PROXY_UID} -j ACCEPT",
    "-A AZWI_PROXY_OUTPUT -j AZWI_PROXY_REDIRECT",
    f"-A AZWI_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports {PROXY_PORT}",
]

# Unrelated rules a pod's namespace may already hold (another sidecar's, a CNI's); apply and
# cleanup must leave them exactly as they are.
UNRELATED = """\
*nat
:KEEP_ME - [0:0]
-A PREROUTING -p tcp -m tcp --dport 15001 -j REDIRECT --to-ports 15006
-A OUTPUT -p udp -m udp --dport 53 -j ACCEPT
-A OUTPUT -j KEEP_ME
-A KEEP_ME -d 10.0.0.0/8 -j RETURN
-A POSTROUTING -o veth0 -j MASQUERADE
COMMIT
"""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    with pod_network() as network:
        yield network


@pytest.fixture
def served(net: PodNetwork) -> PodNetwork:
    """The pod network with the fake IMDS and a stand-in proxy listening."""
    start_fake_imds(net)
    start_stand_in_proxy(net)
    return net


def apply(ns: Netns, backend: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = run_init(ns, *args, env=init_env(backend, **env))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def our_rules(ns: Netns, backend: str) -> list[str]:
    return [line for line in nat_table(ns, backend).splitlines() if "AZWI_PROXY" in line]


def restore(ns: Netns, backend: str, text: str) -> None:
    subprocess.run(
        ns.argv([f"iptables-{backend}-restore", "--noflush"]),
        input=text,
        text=True,
        check=True,
        capture_output=True,
        timeout=15,
    )


# --- what the redirect does to traffic ------------------------------------------------------


def test_without_rules_the_pod_reaches_the_fake_imds(served: PodNetwork) -> None:
    body = http_get(served.pod, INSTANCE_URL)
    assert body["served_by"] == "imds"
    assert body["compute"]["name"] == "fake-imds-vm"


def test_apply_prints_the_installed_rules(net: PodNetwork, backend: str) -> None:
    done = apply(net.pod, backend)
    assert done.stdout.splitlines() == [
        f"imds-proxy-init: installed with iptables-{backend} (table nat):",
        *(f"  {rule}" for rule in RULES),
    ]
    assert done.stderr == ""


@pytest.mark.other_user
@pytest.mark.parametrize("uid", [0, APP_UID], ids=["root", "app-uid"])
def test_metadata_traffic_is_redirected_to_the_proxy_port(
    served: PodNetwork, backend: str, uid: int
) -> None:
    apply(served.pod, backend)
    body = http_get(served.pod, INSTANCE_URL, user=uid)
    assert body == {"served_by": "proxy", "port": PROXY_PORT, "path": INSTANCE_PATH}


@pytest.mark.other_user
def test_proxy_uid_reaches_the_real_imds(served: PodNetwork, backend: str) -> None:
    apply(served.pod, backend)
    body = http_get(served.pod, INSTANCE_URL, user=PROXY_UID)
    assert body["served_by"] == "imds"
    assert body["port"] == 80
    assert body["compute"] == {"name": "fake-imds-vm", "location": "netnsland"}


def test_other_ports_on_the_metadata_address_are_untouched(
    served: PodNetwork, backend: str
) -> None:
    apply(served.pod, backend)
    body = http_get(served.pod, f"http://{METADATA_IP}:{OTHER_METADATA_PORT}/metadata/instance")
    assert body["served_by"] == "imds"
    assert body["port"] == OTHER_METADATA_PORT


def test_custom_settings_redirect_accordingly(served: PodNetwork, backend: str) -> None:
    start_stand_in_proxy(served, port=8111)
    apply(served.pod, backend, PROXY_PORT="8111", METADATA_PORT=str(OTHER_METADATA_PORT))
    redirected = http_get(served.pod, f"http://{METADATA_IP}:{OTHER_METADATA_PORT}/x")
    assert (redirected["served_by"], redirected["port"]) == ("proxy", 8111)
    untouched = http_get(served.pod, INSTANCE_URL)
    assert (untouched["served_by"], untouched["port"]) == ("imds", 80)


def test_nothing_listening_on_the_proxy_port_fails_fast(net: PodNetwork, backend: str) -> None:
    start_fake_imds(net)
    apply(net.pod, backend)
    body = http_get(net.pod, INSTANCE_URL)
    assert "Connection refused" in body["error"]


# --- idempotence, --check, --cleanup ---------------------------------------------------------


def test_applying_twice_leaves_exactly_one_copy(net: PodNetwork, backend: str) -> None:
    apply(net.pod, backend)
    first = nat_table(net.pod, backend)
    apply(net.pod, backend)
    assert nat_table(net.pod, backend) == first
    assert our_rules(net.pod, backend) == [
        ":AZWI_PROXY_OUTPUT -",
        ":AZWI_PROXY_REDIRECT -",
        *RULES,
    ]


def test_apply_removes_jumps_stacked_by_a_non_idempotent_predecessor(
    net: PodNetwork, backend: str
) -> None:
    apply(net.pod, backend)
    stacked = f"*nat\n{RULES[0]}\n{RULES[0]}\nCOMMIT\n"
    restore(net.pod, backend, stacked)
    assert our_rules(net.pod, backend).count(RULES[0]) == 3
    assert run_init(net.pod, "--check", env=init_env(backend)).returncode == cli.EXIT_MISMATCH
    apply(net.pod, backend)
    assert our_rules(net.pod, backend).count(RULES[0]) == 1
    assert run_init(net.pod, "--check", env=init_env(backend)).returncode == cli.EXIT_OK


def test_reapplying_with_new_settings_replaces_the_old_rules(net: PodNetwork, backend: str) -> None:
    apply(net.pod, backend)
    new = {"PROXY_PORT": "8001", "METADATA_PORT": "8080", "PROXY_UID": "2000"}
    apply(net.pod, backend, **new)
    assert our_rules(net.pod, backend)[2:] == [
        f"-A OUTPUT -d {METADATA_IP}/32 -p tcp -m tcp --dport 8080 -j AZWI_PROXY_OUTPUT",
        "-A AZWI_PROXY_OUTPUT -m owner --uid-owner 2000 -j ACCEPT",
        "-A AZWI_PROXY_OUTPUT -j AZWI_PROXY_REDIRECT",
        "-A AZWI_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 8001",
    ]
    assert run_init(net.pod, "--check", env=init_env(backend, **new)).returncode == 0
    assert run_init(net.pod, "--check", env=init_env(backend)).returncode == cli.EXIT_MISMATCH


def test_check_fails_before_and_passes_after(net: PodNetwork, backend: str) -> None:
    before = run_init(net.pod, "--check", env=init_env(backend))
    assert before.returncode == cli.EXIT_MISMATCH
    assert "chain AZWI_PROXY_OUTPUT is missing" in before.stdout
    apply(net.pod, backend)
    after = run_init(net.pod, "--check", env=init_env(backend))
    assert after.returncode == cli.EXIT_OK, after.stdout + after.stderr
    assert after.stdout.startswith(f"imds-proxy-init: rules match (iptables-{backend}):")


def test_check_notices_a_changed_rule(net: PodNetwork, backend: str) -> None:
    apply(net.pod, backend)
    restore(net.pod, backend, "*nat\n-A AZWI_PROXY_REDIRECT -p udp -j RETURN\nCOMMIT\n")
    done = run_init(net.pod, "--check", env=init_env(backend))
    assert done.returncode == cli.EXIT_MISMATCH
    assert "chain AZWI_PROXY_REDIRECT holds" in done.stdout


def test_cleanup_restores_the_original_table_exactly(net: PodNetwork, backend: str) -> None:
    restore(net.pod, backend, UNRELATED)
    original = nat_table(net.pod, backend)
    assert "KEEP_ME" in original
    apply(net.pod, backend)
    apply(net.pod, backend)
    assert nat_table(net.pod, backend) != original
    done = apply(net.pod, backend, "--cleanup")
    assert done.stdout.splitlines()[1:] == [f"  {rule}" for rule in RULES]
    assert nat_table(net.pod, backend) == original
    again = apply(net.pod, backend, "--cleanup")
    assert "nothing to remove" in again.stdout
    assert nat_table(net.pod, backend) == original


def test_after_cleanup_traffic_goes_to_the_real_imds_again(
    served: PodNetwork, backend: str
) -> None:
    apply(served.pod, backend)
    apply(served.pod, backend, "--cleanup")
    assert http_get(served.pod, INSTANCE_URL)["served_by"] == "imds"


# --- backend choice --------------------------------------------------------------------------


def test_auto_detection_prefers_the_backend_that_has_rules(net: PodNetwork, backend: str) -> None:
    if not (iptables_available("nft") and iptables_available("legacy")):
        pytest.skip("needs both iptables-nft and iptables-legacy")
    apply(net.pod, backend)
    done = run_init(net.pod, "--check", env=init_env(None))
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert f"(iptables-{backend})" in done.stdout


def test_auto_detection_on_an_empty_namespace_uses_nft(net: PodNetwork) -> None:
    if not iptables_available("nft"):
        pytest.skip("iptables-nft not installed")
    done = run_init(net.pod, env=init_env(None))
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert "installed with iptables-nft" in done.stdout


def _path_with(tmp_path: Path, links: dict[str, str]) -> str:
    """A PATH holding only ``links`` (name -> binary it points to)."""
    for name, target in links.items():
        real = shutil.which(target)
        assert real is not None
        (tmp_path / name).symlink_to(os.path.realpath(real))
    return str(tmp_path)


def test_plain_iptables_is_the_last_resort(net: PodNetwork, backend: str, tmp_path: Path) -> None:
    path = _path_with(
        tmp_path,
        {
            "iptables-save": f"iptables-{backend}-save",
            "iptables-restore": f"iptables-{backend}-restore",
        },
    )
    done = run_init(net.pod, env={**init_env(None), "PATH": path})
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert "installed with iptables (table nat)" in done.stdout
    assert our_rules(net.pod, backend)[2:] == RULES


# --- failures: exit codes and messages -------------------------------------------------------


def _single_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("imds-proxy-init: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("PROXY_PORT", "70000", "out of range"),
        ("PROXY_PORT", "eighty", "not a TCP port"),
        ("METADATA_PORT", "0", "out of range"),
        ("PROXY_UID", "root", "not a numeric user id"),
        ("METADATA_IP", "169.254.169.256", "not an IPv4 address"),
        ("METADATA_IP", "fe80::1", "only IPv4"),
    ],
)
def test_invalid_settings_exit_2_and_change_nothing(
    net: PodNetwork, backend: str, name: str, value: str, complaint: str
) -> None:
    before = nat_table(net.pod, backend)
    done = run_init(net.pod, env=init_env(backend, **{name: value}))
    assert done.returncode == cli.EXIT_CONFIG
    line = _single_error_line(done)
    assert f"{name}={value!r}" in line
    assert complaint in line
    assert nat_table(net.pod, backend) == before


@pytest.mark.other_user
def test_not_root_exits_3(net: PodNetwork, backend: str) -> None:
    done = run_init(net.pod, env=init_env(backend), user=PROXY_UID)
    assert done.returncode == cli.EXIT_PERMISSION
    assert "uid 1501 lacks CAP_NET_ADMIN" in _single_error_line(done)


def test_root_without_net_admin_exits_3(net: PodNetwork, backend: str) -> None:
    done = net.pod.run(
        [SETPRIV, "--bounding-set=-net_admin", "--", sys.executable, "-m", "init"],
        env=init_env(backend),
        check=False,
    )
    assert done.returncode == cli.EXIT_PERMISSION
    assert "uid 0 lacks CAP_NET_ADMIN" in _single_error_line(done)


def test_net_admin_without_net_raw_is_enough_for_nft(net: PodNetwork) -> None:
    """A container with ``drop: [ALL]`` and ``add: [NET_ADMIN]``, as in many pod specs."""
    if not iptables_available("nft"):
        pytest.skip("iptables-nft not installed")
    only_net_admin = [SETPRIV, "--bounding-set=-all,+net_admin", "--inh-caps=-all", "--"]
    argv = [*only_net_admin, sys.executable, "-m", "init"]
    done = net.pod.run(argv, env=init_env(None), check=False)
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert "installed with iptables-nft" in done.stdout
    if iptables_available("legacy"):
        done = net.pod.run(argv, env=init_env("legacy"), check=False)
        assert done.returncode == cli.EXIT_PERMISSION
        assert "iptables-legacy also needs CAP_NET_RAW" in _single_error_line(done)


def test_no_iptables_binary_exits_4(net: PodNetwork, backend: str, tmp_path: Path) -> None:
    done = run_init(net.pod, env={**init_env(backend), "PATH": str(tmp_path)})
    assert done.returncode == cli.EXIT_NO_IPTABLES
    assert "not on PATH" in _single_error_line(done)
    done = run_init(net.pod, env={**init_env(None), "PATH": str(tmp_path)})
    assert done.returncode == cli.EXIT_NO_IPTABLES
    assert "no iptables on PATH" in _single_error_line(done)


def test_forced_backend_without_its_binary_exits_4(
    net: PodNetwork, backend: str, tmp_path: Path
) -> None:
    other = "legacy" if backend == "nft" else "nft"
    if not iptables_available(other):
        pytest.skip(f"iptables-{other} not installed")
    path = _path_with(
        tmp_path,
        {f"iptables-{other}-{tool}": f"iptables-{other}-{tool}" for tool in ("save", "restore")},
    )
    done = run_init(net.pod, env={**init_env(backend), "PATH": path})
    assert done.returncode == cli.EXIT_NO_IPTABLES
    assert f"IPTABLES_BACKEND={backend}" in _single_error_line(done)


def test_no_route_to_the_metadata_address_fails_preflight(backend: str) -> None:
    with netns("azwi-noroute") as ns:
        before = nat_table(ns, backend)
        done = run_init(ns, env=init_env(backend))
        assert done.returncode == cli.EXIT_PREFLIGHT
        line = _single_error_line(done)
        assert f"cannot route to METADATA_IP {METADATA_IP}" in line
        assert "no route" in line
        assert nat_table(ns, backend) == before


def test_loopback_down_fails_preflight(backend: str) -> None:
    with netns("azwi-nolo", loopback_up=False) as ns:
        done = run_init(ns, env=init_env(backend))
        assert done.returncode == cli.EXIT_PREFLIGHT
        assert "loopback interface 'lo' is down" in _single_error_line(done)


def test_dry_run_in_a_namespace_changes_nothing(net: PodNetwork, backend: str) -> None:
    before = nat_table(net.pod, backend)
    done = apply(net.pod, backend, "--dry-run")
    assert done.stdout.splitlines()[-2:] == [RULES[0], "COMMIT"]
    assert nat_table(net.pod, backend) == before
