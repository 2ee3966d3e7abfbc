"""Leaving nothing behind: the same cleanup after a run and before one (a killed run's rest).

Order matters: the kubelet first (it would restart what is killed), then every container
process (through the kubepods cgroups, which works even when containerd is gone), then the
control plane, containerd and its shims, then mounts, network namespaces, the bridge, the
iptables chain and the cgroups, and last the run directory itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.cluster import settings
from tests.cluster.daemons import (
    processes_with,
    reap_adopted_shims,
    recorded,
    stop_pid,
    wait_gone,
)
from tests.cluster.paths import K8S_BIN, K8S_COMMANDS, RUN_DIR

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "k8s.io")
STOP_ORDER = ("kubelet", "kube-scheduler", "kube-controller-manager")
LATE_ORDER = ("kube-apiserver", "etcd")


def _quiet(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def _cgroup_dirs() -> list[Path]:
    """This cluster's cgroup directories in every hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        for name in CGROUP_NAMES:
            top = hierarchy / name
            if top.is_dir():
                found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
    return pids


def kill_containers() -> list[int]:
    """SIGKILL every process in the kubepods cgroups; return any that survived."""
    for _ in range(3):
        pids = _cgroup_pids()
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(sorted(pids), 10)
    return sorted(_cgroup_pids())


def _mounts_under(root: Path) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == str(root) or mount_point.startswith(f"{root}/"):
                found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything under `root`; return what is still mounted."""
    for _ in range(3):
        mounts = _mounts_under(root)
        if not mounts:
            break
        for m in mounts:
            if _quiet(["umount", m]).returncode != 0:
                _quiet(["umount", "-l", m])
    return _mounts_under(root)


def _our_netns() -> list[str]:
    """containerd's cni-* network namespaces holding an address of this cluster's pod range."""
    net = ipaddress.ip_network(settings.POD_CIDR)
    ours = []
    for ns in Path("/run/netns").glob("cni-*"):
        out = _quiet(["ip", "-n", ns.name, "-o", "-4", "addr", "show"]).stdout
        for field in out.split():
            with contextlib.suppress(ValueError):
                if "/" in field and ipaddress.ip_interface(field).ip in net:
                    ours.append(ns.name)
                    break
    return ours


def remove_network() -> None:
    """The pods' network namespaces, the bridge and the iptables chain."""
    for ns in _our_netns():
        _quiet(["ip", "netns", "delete", ns])
    if Path(f"/sys/class/net/{settings.BRIDGE}").exists():
        _quiet(["ip", "link", "delete", settings.BRIDGE])
    chain = settings.IPTABLES_CHAIN
    for parent in ("INPUT", "FORWARD"):
        while _quiet(["iptables", "-w", "5", "-D", parent, "-j", chain]).returncode == 0:
            pass
    _quiet(["iptables", "-w", "5", "-F", chain])
    _quiet(["iptables", "-w", "5", "-X", chain])


def remove_cgroups() -> list[Path]:
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()
    return _cgroup_dirs()


def leftovers(root: Path = RUN_DIR, *, host_wide: bool = True) -> list[str]:
    """What of a cluster is still on the host: processes, mounts, bridge, cgroups."""
    found: list[str] = []
    layout = settings.Layout(root)
    found += [
        f"process {pid} ({name}, from its pidfile)" for name, pid in recorded(layout.pids).items()
    ]
    if host_wide:
        found += _host_leftovers()
    for pid in processes_with(str(layout.containerd_socket)):
        found.append(f"process {pid} (containerd or shim of {layout.containerd_socket})")
    for pid in processes_with(f"--data-dir={layout.etcd_data}"):
        found.append(f"process {pid} (etcd)")
    found += [f"mount {m}" for m in _mounts_under(root)]
    return found


def _host_leftovers() -> list[str]:
    found: list[str] = []
    exes = {str(K8S_BIN / c) for c in K8S_COMMANDS}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") in exes:
                    found.append(f"process {entry.name} ({os.readlink(entry / 'exe')})")
    if Path(f"/sys/class/net/{settings.BRIDGE}").exists():
        found.append(f"bridge {settings.BRIDGE}")
    found += [f"cgroup {d}" for d in _cgroup_dirs()]
    found += [f"netns {ns}" for ns in _our_netns()]
    return found


def clean(root: Path = RUN_DIR, *, host_wide: bool = True) -> list[str]:
    """Stop and remove everything a cluster under `root` may have left; return what stayed.

    `host_wide=False` leaves what is not under `root` (container cgroups, the bridge, the
    iptables chain, network namespaces) alone: for tests of this cleanup itself, which may
    run while the real cluster is up. Call it with the host lock held otherwise.
    """
    layout = settings.Layout(root)
    running = recorded(layout.pids)
    for name in STOP_ORDER:
        if name in running:
            stop_pid(running.pop(name), grace=10)
    if host_wide:
        kill_containers()
    for name in LATE_ORDER:
        if name in running:
            stop_pid(running.pop(name), grace=15)
    # containerd last but one: its shims first (they hold the containers' mounts).
    socket = str(layout.containerd_socket)
    shims = [p for p in processes_with(socket) if p != running.get("containerd")]
    for pid in shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(shims, 10)
    for pid in running.values():
        stop_pid(pid, grace=10)
    for pid in processes_with(socket) + processes_with(f"--data-dir={layout.etcd_data}"):
        stop_pid(pid, grace=5)
    reap_adopted_shims()
    unmount_all(root)
    if host_wide:
        remove_network()
        remove_cgroups()
    if not _mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)
    return leftovers(root, host_wide=host_wide)
