"""A `docker load` archive of a base image from a root file system tar, for any architecture.

deploy/image-test.sh builds the bases with debootstrap and loads them with this:

    python3 base_image.py --layer rootfs.tar --arch arm64 --tag imds-proxy-base:bookworm-arm64 \\
        --out base.tar
    docker load -i base.tar

`docker import` would do for the host's architecture, but Docker 20.10 ignores its
``--platform``, so an arm64 tree would be labelled amd64 and a ``--platform linux/arm64``
build would not take it as its base. Here the image config says the architecture, with the
PATH, locale and command of a Debian image (an imported tree has no config of its own).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

VARIANTS = {"arm64": "v8"}


def config(arch: str, layer_digest: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ],
            "Cmd": ["/bin/bash"],
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "debootstrap (deploy/image-test.sh)"}],
    }
    if arch in VARIANTS:
        found["variant"] = VARIANTS[arch]
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write(out: Path, layer: Path, arch: str, tag: str) -> None:
    layer_digest = sha256_file(layer)
    raw = json.dumps(config(arch, layer_digest), sort_keys=True).encode()
    config_name = hashlib.sha256(raw).hexdigest() + ".json"
    layer_name = f"{layer_digest}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]
    with tarfile.open(out, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add(config_name, raw)
        tar.add(layer, arcname=layer_name)
        add("manifest.json", json.dumps(manifest).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=Path, required=True, help="the root file system, a tar")
    parser.add_argument("--arch", required=True, help="Docker's name: amd64, arm64")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    write(args.out, args.layer, args.arch, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
