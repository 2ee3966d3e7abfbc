"""The images the cluster runs, as tarballs imported into its containerd.

No registry is reachable, so every image comes from this host:
- the pause image (each pod's sandbox) is a static binary that waits for SIGTERM, built with
  gcc and wrapped into a docker-archive tarball here;
- the project's proxy and init images are built exactly as `make image-test` builds them
  (deploy/image-test.sh, build-only mode), with their debootstrap base, which has python3
  and serves as the tests' app image; the proxy image has the project installed and runs the
  in-pod fake Entra ID (`python3 -m proxy.devissuer`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from tests.cluster.paths import IMAGES_CACHE
from tests.cluster.settings import PAUSE_IMAGE
from tests.cluster.steps import run

REPO = Path(__file__).resolve().parents[2]
PROXY_IMAGE = "docker.io/library/imds-proxy:image-test"
INIT_IMAGE = "docker.io/library/imds-proxy-init:image-test"
DEV_IMAGE = "docker.io/library/imds-proxy-dev:image-test"
"""The sidecar image plus the dev issuer (no shipped image has it): the in-pod Entra ID."""
APP_IMAGE = "docker.io/library/imds-proxy-base:bookworm"
"""Debian bookworm with python3: the apps in the tests are plain python3 scripts."""
PROJECT_TARBALLS = ("base", "proxy", "init", "dev")
BUILD_TIMEOUT = 30 * 60

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def _docker_archive(tag: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> bytes:
    """A `docker save` tarball of a one-layer image holding `files` (name: (data, mode))."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (
            ("layer/layer.tar", layer_bytes),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pause_tarball(log: Path) -> Path:
    """The pause image tarball, built once and cached."""
    target = IMAGES_CACHE / "pause.tar"
    if target.exists():
        return target
    IMAGES_CACHE.mkdir(parents=True, exist_ok=True)
    source, binary = IMAGES_CACHE / "pause.c", IMAGES_CACHE / "pause"
    source.write_text(PAUSE_C)
    run(
        ["gcc", "-static", "-Os", "-s", "-o", binary, source],
        log=log,
        timeout=120,
        what="building the pause binary (gcc -static)",
    )
    tag = PAUSE_IMAGE.removeprefix("docker.io/")
    data = _docker_archive(tag, {"pause": (binary.read_bytes(), 0o755)}, ["/pause"])
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.rename(target)
    return target


def project_tarballs(log: Path) -> list[Path]:
    """The base, proxy, init and dev images of this checkout, built by deploy/image-test.sh.

    Docker's layer cache keeps a second build to seconds; the tarballs are written anew each
    run, so the cluster always runs this checkout's code.
    """
    env = dict(os.environ, IMAGE_TEST_BUILD_ONLY="1", IMAGE_EXPORT_DIR=str(IMAGES_CACHE))
    run(
        ["bash", REPO / "deploy" / "image-test.sh"],
        log=log,
        timeout=BUILD_TIMEOUT,
        what="building the images (deploy/image-test.sh, build-only mode)",
        env=env,
        cwd=REPO,
    )
    return [IMAGES_CACHE / f"{name}.tar" for name in PROJECT_TARBALLS]


def import_all(ctr: list[str], tarballs: list[Path], log: Path) -> None:
    for tarball in tarballs:
        run(
            [*ctr, "-n", "k8s.io", "images", "import", tarball],
            log=log,
            timeout=300,
            what=f"ctr images import {tarball.name}",
        )
