"""Fixed places of the cluster tier on the host.

Fixed, not per run, for two reasons: the Go build caches (about 3 GB) must survive from one
`make test` to the next to keep the bring-up warm, and a run that was killed must be found
and cleaned up by the next one, which needs to know where the previous one kept its pids,
mounts and state.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR = Path(os.environ.get("IMDS_PROXY_TEST_CACHE") or "/var/cache/imds-oidc-proxy-tests")
"""Everything worth keeping between runs: Go caches, built binaries, image tarballs. The
same directory (and override) as the SDK clients' caches (tests/support/sdk_clients.py): point
IMDS_PROXY_TEST_CACHE at an empty directory to time a cold run without emptying it."""

K8S_CACHE = CACHE_DIR / "k8s"
GO_MODULE_DIR = K8S_CACHE / "module"
"""The throwaway Go module generated to build the Kubernetes commands."""
K8S_BIN = K8S_CACHE / "bin"
IMAGES_CACHE = CACHE_DIR / "images"

RUN_DIR = Path("/var/lib/imds-oidc-proxy-tests/run")
"""State of the running cluster (etcd data, containerd root, kubelet root, pidfiles, logs).

On disk rather than under /run: containerd's overlay snapshots of the images are a few
hundred MB, more than a tmpfs /run may hold. Wiped at the start and the end of each run.
"""

LOCK_FILE = Path("/var/lib/imds-oidc-proxy-tests/lock")
"""flock'ed while a run owns the cluster: its absence of a holder means leftovers are stale."""

K8S_VERSION = "v1.34.4"
"""1.34: the last kubelet that runs on a cgroup v1 host by default and talks to containerd 1.x."""

K8S_COMMANDS = ("kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler")
