"""A multi-architecture image index (OCI image layout) from one `docker save` per architecture.

deploy/image-test.sh builds each image once per architecture and runs, for each image:

    python3 oci_index.py --out imds-proxy.oci.tar --ref image-test proxy-amd64.tar proxy-arm64.tar

Each input is a `docker save` archive of one single-platform image. The output is an OCI
image layout as a tar (an "oci-archive"): each image's config and layers as blobs, a manifest
per architecture, and one image index listing them with their platform (from each config's
architecture, os and variant), named ``--ref`` in index.json. Pushing that one reference to a
registry (``skopeo copy oci-archive:FILE:REF docker://...``, or ``crane push``) publishes one
tag that a node of either architecture pulls its own image from. No Docker engine needed and
no registry: this machine reaches none.

``--verify FILE`` reads an archive back: every blob's digest and size match what refers to it,
and every manifest's config has the architecture its index entry says.
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

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Layout:
    """An OCI image layout being written into a tar, blob by blob (each blob once)."""

    def __init__(self, out: tarfile.TarFile) -> None:
        self.out = out
        self.written: set[str] = set()
        self._add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self.out.addfile(info, io.BytesIO(data))

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.written:
            self.written.add(digest)
            self._add(f"blobs/sha256/{digest}", data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def index(self, descriptor: dict[str, Any]) -> None:
        self._add(
            "index.json", _json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [descriptor]})
        )


def platform_of(config: dict[str, Any]) -> dict[str, str]:
    found = {"architecture": config["architecture"], "os": config["os"]}
    if config.get("variant"):
        found["variant"] = config["variant"]
    return found


def add_image(layout: Layout, saved: Path) -> dict[str, Any]:
    """One `docker save` archive's image as blobs and a manifest; its index entry."""
    with tarfile.open(saved) as archive:

        def read(name: str) -> bytes:
            member = archive.extractfile(name)
            if member is None:
                raise ValueError(f"{saved}: {name} is not a file")
            return member.read()

        entries = json.loads(read("manifest.json"))
        if len(entries) != 1:
            raise ValueError(f"{saved}: holds {len(entries)} images, not one")
        raw_config = read(entries[0]["Config"])
        config = json.loads(raw_config)
        layers = [layout.blob(read(name), LAYER) for name in entries[0]["Layers"]]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": layout.blob(raw_config, CONFIG),
        "layers": layers,
    }
    return {**layout.blob(_json(manifest), MANIFEST), "platform": platform_of(config)}


def build(out: Path, ref: str, saved: list[Path]) -> dict[str, Any]:
    """Write the layout; return the image index."""
    with tarfile.open(out, "w") as tar:
        layout = Layout(tar)
        manifests = [add_image(layout, path) for path in saved]
        platforms = [json.dumps(m["platform"], sort_keys=True) for m in manifests]
        if len(set(platforms)) != len(platforms):
            raise ValueError(f"two inputs have the same platform: {platforms}")
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
        descriptor = layout.blob(_json(index), INDEX)
        layout.index({**descriptor, "annotations": {REF_NAME: ref}})
    return {**index, "digest": descriptor["digest"]}


def verify(archive: Path) -> list[str]:
    """Problems found reading an archive back (none: it is sound)."""
    problems = []
    blobs: dict[str, bytes] = {}
    top: dict[str, Any] = {"manifests": []}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            file = tar.extractfile(member) if member.isfile() else None
            if file is None:
                continue
            if member.name.startswith("blobs/sha256/"):
                data = file.read()
                digest = "sha256:" + member.name.rsplit("/", 1)[1]
                if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"{member.name}: content does not match its digest")
                blobs[digest] = data
            elif member.name == "index.json":
                top = json.loads(file.read())
    if not top["manifests"]:
        problems.append("index.json is missing or lists nothing")

    def get(descriptor: dict[str, Any]) -> bytes:
        data = blobs.get(descriptor["digest"], b"")
        if len(data) != descriptor["size"]:
            problems.append(f"{descriptor['digest']}: missing or of another size")
        return data

    for entry in top["manifests"]:
        for manifest in json.loads(get(entry))["manifests"]:
            image = json.loads(get(manifest))
            config = json.loads(get(image["config"]))
            for layer in image["layers"]:
                get(layer)
            if platform_of(config) != manifest["platform"]:
                problems.append(f"{manifest['digest']}: config is {platform_of(config)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ref", default="latest")
    parser.add_argument("--verify", type=Path, metavar="ARCHIVE")
    parser.add_argument("saved", nargs="*", type=Path, help="docker save archives")
    args = parser.parse_args(argv)
    if args.verify:
        problems = verify(args.verify)
        for problem in problems:
            print(f"  PROBLEM {problem}")
        return 1 if problems else 0
    if not args.out or not args.saved:
        parser.error("--out and at least one docker save archive are needed")
    index = build(args.out, args.ref, args.saved)
    print(f"{args.out}: image index {index['digest']} ({args.ref})")
    for manifest in index["manifests"]:
        p = manifest["platform"]
        name = "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
        print(f"  {name:<16} {manifest['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
