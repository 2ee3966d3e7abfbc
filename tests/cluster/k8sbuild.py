"""Building kube-apiserver, kubelet, the scheduler and the controller-manager from the Go module.

`go install k8s.io/kubernetes/cmd/...@version` cannot work: k8s.io/kubernetes's go.mod
replaces its staging modules (k8s.io/api, k8s.io/client-go, ...) with `./staging/...` paths,
which Go refuses in a dependency. So a throwaway module is generated under the cache
directory: it requires k8s.io/kubernetes, copies that module's own `require` blocks (they pin
every third-party version it was released with) and points each staging module at its
published v0.X.Y tag. Nothing of it is in the repository; the Go caches stay beside it so
that a second run rebuilds nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from pathlib import Path

from tests.cluster.paths import GO_MODULE_DIR, K8S_BIN, K8S_CACHE, K8S_COMMANDS, K8S_VERSION
from tests.cluster.steps import BringUpError, run

GO_PROXY_MOD = "https://proxy.golang.org/k8s.io/kubernetes/@v/{version}.mod"
BUILD_TIMEOUT = 40 * 60
"""A cold build took 3.5 min idle and 9.5 min on a busy 2-core machine; generous on purpose."""


def staging_version(version: str) -> str:
    """k8s.io/kubernetes v1.34.4 is released with its staging modules at v0.34.4."""
    major, minor, patch = version.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {version}")
    return f"v0.{minor}.{patch}"


def throwaway_go_mod(upstream: str, version: str) -> str:
    """The go.mod of the throwaway module, derived from k8s.io/kubernetes's own go.mod."""
    staging = staging_version(version)
    replaced = re.findall(r"^\s*(k8s\.io/\S+)\s*=>\s*\./staging/\S+\s*$", upstream, re.M)
    if not replaced:
        raise ValueError("k8s.io/kubernetes's go.mod has no staging replaces: format changed?")
    go_line = re.search(r"^go \S+$", upstream, re.M)
    godebug = re.findall(r"^godebug .*$", upstream, re.M)
    blocks = re.findall(r"^require \((.*?)^\)", upstream, re.M | re.S)
    lines: list[str] = []
    for block in blocks:
        for raw in block.splitlines():
            line = raw.split("//")[0].strip()
            if not line:
                continue
            name, _ = line.split()[:2]
            lines.append(f"\t{name} {staging if name in replaced else _}")
    out = ["module imds-oidc-proxy-tests/k8s-build", ""]
    if go_line:
        out.append(go_line.group(0))
    out += [*godebug, "", "require (", f"\tk8s.io/kubernetes {version}", *lines, ")", ""]
    out += ["replace (", *(f"\t{name} => {name} {staging}" for name in replaced), ")", ""]
    return "\n".join(out)


TOOLS_GO = """//go:build tools

// Package tools keeps the Kubernetes commands this module exists to build in its graph.
package tools

import (
{imports}
)
"""


def go_env() -> dict[str, str]:
    """Go's caches at the fixed path; static binaries; the environment's proxy settings kept."""
    env = dict(os.environ)
    env.update(
        GOCACHE=str(K8S_CACHE / "gocache"),
        GOMODCACHE=str(K8S_CACHE / "gomodcache"),
        GOPATH=str(K8S_CACHE / "gopath"),
        CGO_ENABLED="0",
        GOFLAGS="-mod=mod -buildvcs=false",
        GOTOOLCHAIN="local",
    )
    return env


def go_binary() -> str:
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if found is None:
        raise BringUpError(
            "no Go toolchain on PATH (nor /usr/local/go/bin/go): cannot build Kubernetes"
        )
    return found


def ldflags(version: str) -> str:
    major, minor, _ = version.lstrip("v").split(".")
    base = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {base}.gitVersion={version}",
            f"-X {base}.gitMajor={major}",
            f"-X {base}.gitMinor={minor}",
            f"-X {base}.gitTreeState=clean",
        ]
    )


def build_kubectl(log: Path, version: str = K8S_VERSION) -> Path:
    """kubectl from the same module, for hosts whose apt has no kubectl package."""
    build(log, version)
    target = K8S_BIN / "kubectl"
    if not target.exists():
        _go_build("kubectl", log, version)
    return target


def _go_build(command: str, log: Path, version: str) -> None:
    run(
        [
            go_binary(),
            "build",
            "-trimpath",
            "-ldflags",
            ldflags(version),
            "-o",
            K8S_BIN / command,
            f"k8s.io/kubernetes/cmd/{command}",
        ],
        log=log,
        timeout=BUILD_TIMEOUT,
        what=f"go build {command} {version}",
        cwd=GO_MODULE_DIR,
        env=go_env(),
    )


def binaries_present(version: str = K8S_VERSION) -> bool:
    stamp = K8S_BIN / "VERSION"
    return (
        stamp.exists()
        and stamp.read_text().strip() == version
        and all((K8S_BIN / c).exists() for c in K8S_COMMANDS)
    )


def build(log: Path, version: str = K8S_VERSION) -> Path:
    """The directory holding the built commands; builds only what is missing."""
    if binaries_present(version):
        return K8S_BIN
    GO_MODULE_DIR.mkdir(parents=True, exist_ok=True)
    go_mod = GO_MODULE_DIR / "go.mod"
    upstream_copy = GO_MODULE_DIR / f"kubernetes-{version}.go.mod"
    if not upstream_copy.exists():
        try:
            with urllib.request.urlopen(GO_PROXY_MOD.format(version=version), timeout=60) as r:
                upstream_copy.write_bytes(r.read())
        except OSError as e:
            raise BringUpError(f"cannot read k8s.io/kubernetes@{version}'s go.mod: {e}") from e
    wanted = throwaway_go_mod(upstream_copy.read_text(), version)
    # `go build -mod=mod` completes go.mod and go.sum itself; keep them while the version holds.
    if not go_mod.exists() or f"k8s.io/kubernetes {version}\n" not in go_mod.read_text():
        go_mod.write_text(wanted)
        (GO_MODULE_DIR / "go.sum").unlink(missing_ok=True)
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in K8S_COMMANDS)
    (GO_MODULE_DIR / "tools.go").write_text(TOOLS_GO.format(imports=imports))
    K8S_BIN.mkdir(parents=True, exist_ok=True)
    for command in K8S_COMMANDS:
        _go_build(command, log, version)
    (K8S_BIN / "VERSION").write_text(version + "\n")
    return K8S_BIN
