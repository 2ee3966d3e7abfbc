"""The components' settings: ports on loopback, containerd, the kubelet, CNI and kubeconfigs.

Every port is on 127.0.0.1 and away from the defaults, so the cluster neither collides with
another Kubernetes on the host nor listens anywhere but loopback. The reasons behind the
less obvious settings are in ../shared/KUBERNETES-HERE.md and repeated where they are set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.pki import NODE_NAME, Pki

ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
APISERVER_PORT = 16443
KUBELET_PORT = 10350
KUBELET_HEALTHZ_PORT = 10348
CONTROLLER_MANAGER_PORT = 10357
SCHEDULER_PORT = 10359

SERVICE_CIDR = "10.213.128.0/24"
SERVICE_IP = "10.213.128.1"
POD_CIDR = "10.213.0.0/24"
BRIDGE = "imdsk8s0"
CNI_NETWORK = "imds-tests"
IPTABLES_CHAIN = "IMDS-K8S-TESTS"
"""Drops whatever pods send to the host or beyond: the tests need no traffic out of a pod,
and a request for 169.254.169.254 that escaped a pod's redirect must never reach a real
metadata service."""

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
PAUSE_IMAGE = "docker.io/imds-tests/pause:1"


@dataclass(frozen=True)
class Layout:
    """The run directory's parts."""

    root: Path

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_state(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    def kubeconfig(self, user: str) -> Path:
        return self.root / "kubeconfig" / f"{user}.yaml"


def kubeconfig(layout: Layout, user: str) -> str:
    """A kubeconfig for one client certificate (JSON is YAML)."""
    pki = layout.pki
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "imds-tests",
                "cluster": {
                    "server": f"https://127.0.0.1:{APISERVER_PORT}",
                    "certificate-authority": str(pki.ca),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.cert(user)),
                    "client-key": str(pki.key(user)),
                },
            }
        ],
        "contexts": [{"name": "imds-tests", "context": {"cluster": "imds-tests", "user": user}}],
        "current-context": "imds-tests",
    }
    return json.dumps(doc, indent=2)


def containerd_config(layout: Layout) -> str:
    """containerd 1.6 with its own root, state and socket; the CRI plugin set for this host."""
    c = layout.containerd
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here may not lower oom_score_adj: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  max_container_log_line_size = 16384

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{layout.cni_conf}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
"""


def cni_config(layout: Layout) -> str:
    """A bridge with host-local addresses; no masquerade (nothing leaves the host)."""
    doc = {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    # A route to 169.254.169.254, as a node has: the init container checks
                    # for one (connect() needs a route before the nat table applies).
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_state),
                },
            },
            {"type": "loopback"},
        ],
    }
    return json.dumps(doc, indent=2)


def kubelet_config(layout: Layout) -> str:
    pki = layout.pki
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(pki.cert("kubelet-serving")),
        "tlsPrivateKeyFile": str(pki.key("kubelet-serving")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki.ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        # With it false the kubelet adds no iptables chains to the host.
        "makeIPTablesUtilChains": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "podLogsDir": str(layout.pod_logs),
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        "serializeImagePulls": False,
        "registerNode": True,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "60s",
        "shutdownGracePeriod": "0s",
    }
    return json.dumps(doc, indent=2)


def node_name() -> str:
    return NODE_NAME
