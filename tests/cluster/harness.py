"""Bringing a single-node Kubernetes up on loopback, and down again whatever happened.

`running_cluster()` is the one way in: it takes the host-wide lock, cleans up what a killed
run left, installs and builds what is missing, starts etcd, containerd, the API server, the
controller-manager, the scheduler and the kubelet, imports the images, and on the way out
stops and removes all of it. A bring-up that fails raises `BringUpError` with the failing
component's last log lines, after the same cleanup.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import daemons, images, k8sbuild, pki, settings, teardown
from tests.cluster.kube import Kube
from tests.cluster.paths import K8S_VERSION, LOCK_FILE, RUN_DIR
from tests.cluster.steps import BringUpError, run

PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "etcd": "etcd-server",
    "kubectl": "kubectl",
    "gcc": "gcc",
    "iptables": "iptables",
    "ip": "iproute2",
}
"""What the bring-up runs, and the Debian package that has it."""
LOCK_WAIT = 20 * 60
"""Another run on this host owns the cluster: wait for it this long (a run takes minutes)."""


@dataclass
class Timings:
    """Seconds per bring-up phase, printed in the test report's header."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started

    def __str__(self) -> str:
        total = sum(self.phases.values())
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.phases.items())
        return f"{total:.0f}s ({parts})"


@dataclass
class Cluster:
    """A running cluster: kubectl access, its issuer, its logs."""

    layout: settings.Layout
    kube: Kube
    timings: Timings
    components: dict[str, daemons.Daemon]

    @property
    def issuer(self) -> str:
        return settings.SERVICE_ACCOUNT_ISSUER

    def component_logs(self, lines: int = 20) -> str:
        return "\n".join(f"{n}:\n{d.last_lines(lines)}" for n, d in self.components.items())


def ensure_packages(log: Path) -> None:
    """apt-get install whatever of PACKAGES is missing (one update, one install)."""
    missing = sorted(
        {
            pkg
            for tool, pkg in PACKAGES.items()
            if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))
        }
    )
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], log=log, timeout=600, what="apt-get update", env=env)
    try:
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            log=log,
            timeout=900,
            what=f"apt-get install {' '.join(missing)}",
            env=env,
        )
    except BringUpError:
        if "kubectl" not in missing:
            raise
        # No kubectl package in this apt: build it with the other commands instead.
        others = [p for p in missing if p != "kubectl"]
        if others:
            run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *others],
                log=log,
                timeout=900,
                what=f"apt-get install {' '.join(others)}",
                env=env,
            )


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """One cluster per host: the lock dies with its holder, so a killed run frees it."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a+") as f:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    raise BringUpError(
                        f"another test run (pid {f.read().strip()}) has owned the cluster "
                        f"lock {LOCK_FILE} for over {LOCK_WAIT}s"
                    ) from None
                time.sleep(2)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _add_iptables_chain() -> None:
    """Pods may send nothing to the host or beyond (see settings.IPTABLES_CHAIN)."""
    chain = settings.IPTABLES_CHAIN
    for args in (
        ["-N", chain],
        ["-A", chain, "-s", settings.POD_CIDR, "-j", "DROP"],
        ["-I", "INPUT", "-j", chain],
        ["-I", "FORWARD", "-j", chain],
    ):
        subprocess.run(["iptables", "-w", "5", *args], check=True, capture_output=True, timeout=30)


def _bring_up(
    layout: settings.Layout, timings: Timings, components: dict[str, daemons.Daemon]
) -> Kube:
    logs = layout.logs
    with timings.phase("packages"):
        ensure_packages(logs / "apt.log")
    with timings.phase("build"):
        bin_dir = k8sbuild.build(logs / "go-build.log")
    with timings.phase("images"):
        tarballs = [images.pause_tarball(logs / "images.log")]
        tarballs += images.project_tarballs(logs / "images.log")

    with timings.phase("start"):
        pki_files = pki.create(layout.pki.directory, [settings.SERVICE_IP])
        for user in ("admin", "kubelet", "controller-manager", "scheduler"):
            _write(layout.kubeconfig(user), settings.kubeconfig(layout, user))
        _write(layout.containerd / "config.toml", settings.containerd_config(layout))
        _write(layout.cni_conf / "10-imds-tests.conflist", settings.cni_config(layout))
        _write(layout.kubelet / "config.yaml", settings.kubelet_config(layout))
        _add_iptables_chain()
        kubectl = shutil.which("kubectl") or str(k8sbuild.build_kubectl(logs / "go-build.log"))
        kube = Kube(kubectl, layout.kubeconfig("admin"))

        def start(name: str, *args: str | os.PathLike[str]) -> daemons.Daemon:
            components[name] = daemons.start(name, args, layout.pids, logs)
            return components[name]

        etcd = start(
            "etcd",
            shutil.which("etcd") or "etcd",
            "--name=imds-tests",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{settings.ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{settings.ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{settings.ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{settings.ETCD_PEER_PORT}",
            f"--initial-cluster=imds-tests=http://127.0.0.1:{settings.ETCD_PEER_PORT}",
            "--listen-metrics-urls=",
            "--log-level=warn",
            "--unsafe-no-fsync",
        )
        daemons.adopt_orphans()
        containerd = start(
            "containerd",
            shutil.which("containerd") or "containerd",
            "--config",
            layout.containerd / "config.toml",
        )
        ctr = [shutil.which("ctr") or "ctr", "--address", str(layout.containerd_socket)]
        etcd.wait_until(lambda: _etcd_healthy(), 30, "etcd healthy")
        containerd.wait_until(
            lambda: (
                subprocess.run([*ctr, "version"], capture_output=True, timeout=5).returncode == 0
            ),
            30,
            "containerd answering",
        )
        apiserver = start(
            "kube-apiserver",
            bin_dir / "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{settings.ETCD_CLIENT_PORT}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={settings.APISERVER_PORT}",
            f"--tls-cert-file={pki_files.cert('apiserver')}",
            f"--tls-private-key-file={pki_files.key('apiserver')}",
            f"--client-ca-file={pki_files.ca}",
            f"--kubelet-client-certificate={pki_files.cert('apiserver-kubelet')}",
            f"--kubelet-client-key={pki_files.key('apiserver-kubelet')}",
            f"--kubelet-certificate-authority={pki_files.ca}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            f"--service-account-issuer={settings.SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki_files.sa_pub}",
            f"--service-account-signing-key-file={pki_files.sa_key}",
            f"--service-cluster-ip-range={settings.SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        )
        apiserver.wait_until(lambda: kube.ok("get", "--raw", "/readyz"), 90, "/readyz")
        start(
            "kube-controller-manager",
            bin_dir / "kube-controller-manager",
            f"--kubeconfig={layout.kubeconfig('controller-manager')}",
            f"--authentication-kubeconfig={layout.kubeconfig('controller-manager')}",
            f"--authorization-kubeconfig={layout.kubeconfig('controller-manager')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={settings.CONTROLLER_MANAGER_PORT}",
            f"--service-account-private-key-file={pki_files.sa_key}",
            f"--root-ca-file={pki_files.ca}",
            f"--cluster-signing-cert-file={pki_files.ca}",
            f"--cluster-signing-key-file={pki_files.key('ca')}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,"
            "-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,"
            "-ephemeral-volume,-pv-protection,-pvc-protection",
        )
        start(
            "kube-scheduler",
            bin_dir / "kube-scheduler",
            f"--kubeconfig={layout.kubeconfig('scheduler')}",
            f"--authentication-kubeconfig={layout.kubeconfig('scheduler')}",
            f"--authorization-kubeconfig={layout.kubeconfig('scheduler')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={settings.SCHEDULER_PORT}",
            "--leader-elect=false",
        )
        kubelet = start(
            "kubelet",
            bin_dir / "kubelet",
            f"--config={layout.kubelet / 'config.yaml'}",
            f"--kubeconfig={layout.kubeconfig('kubelet')}",
            f"--root-dir={layout.kubelet}",
            f"--cert-dir={layout.kubelet / 'pki'}",
            f"--hostname-override={pki.NODE_NAME}",
            "--v=1",
        )

    with timings.phase("images-import"):
        images.import_all(ctr, tarballs, logs / "images.log")

    with timings.phase("node-ready"):
        kubelet.wait_until(
            lambda: kube.ok(
                "wait", "--for=condition=Ready", f"node/{pki.NODE_NAME}", "--timeout=2s"
            ),
            90,
            "node Ready",
        )
        # The controller-manager creates each namespace's default ServiceAccount.
        components["kube-controller-manager"].wait_until(
            lambda: kube.ok("-n", "default", "get", "serviceaccount", "default"),
            60,
            "default ServiceAccount",
        )
    return kube


def _etcd_healthy() -> bool:
    import urllib.request

    url = f"http://127.0.0.1:{settings.ETCD_CLIENT_PORT}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=2) as r:
        return b'"true"' in r.read()


@contextlib.contextmanager
def running_cluster(root: Path = RUN_DIR) -> Iterator[Cluster]:
    """The cluster, up for the duration of the block; nothing of it remains afterwards."""
    layout = settings.Layout(root)
    timings = Timings()
    components: dict[str, daemons.Daemon] = {}
    with host_lock():
        stale = teardown.clean(root)
        if stale:
            raise BringUpError(f"a previous run left what cannot be removed: {stale}")
        layout.logs.mkdir(parents=True, exist_ok=True)
        try:
            kube = _bring_up(layout, timings, components)
            cluster = Cluster(layout, kube, timings, components)
        except BaseException as e:
            # Keep the evidence: the error carries the tail, the log dir goes with the rest.
            saved = _save_logs(layout)
            left = teardown.clean(root)
            note = f"\n(component logs saved in {saved})" if saved else ""
            if left:
                note += f"\nleft behind despite the cleanup: {left}"
            if isinstance(e, BringUpError):
                raise BringUpError(f"{e}{note}") from None
            raise
        try:
            yield cluster
        finally:
            _save_logs(layout)
            left = teardown.clean(root)
            if left:
                raise BringUpError(f"the cluster's teardown left: {left}")


def _save_logs(layout: settings.Layout) -> Path | None:
    """Copy the components' logs next to the caches, for a look after the run."""
    target = RUN_DIR.parent / "last-run-logs"
    with contextlib.suppress(OSError):
        shutil.rmtree(target, ignore_errors=True)
        if layout.logs.is_dir():
            shutil.copytree(layout.logs, target)
            return target
    return None


__all__ = ["K8S_VERSION", "BringUpError", "Cluster", "running_cluster"]
