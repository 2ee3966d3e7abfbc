"""deploy/image/base_image.py: a `docker load` archive of a debootstrap tree, any architecture.

The archive must say the architecture in its config (Docker 20.10's `docker import` ignores
--platform), carry the layer under its digest, and name the tag; deploy/image-test.sh loads
the real bases with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from tests.support import image_scripts

ROOT = Path(__file__).resolve().parent.parent


base_image = image_scripts.load("base_image")


def test_an_arm64_base_archive(tmp_path: Path) -> None:
    layer = tmp_path / "rootfs.tar"
    with tarfile.open(layer, "w") as t:
        info = tarfile.TarInfo("usr/bin/python3")
        info.size = 4
        t.addfile(info, io.BytesIO(b"\x7fELF"))
    out = tmp_path / "base.tar"
    assert (
        base_image.main(
            ["--layer", str(layer), "--arch", "arm64", "--tag", "b:arm64", "--out", str(out)]
        )
        == 0
    )
    digest = hashlib.sha256(layer.read_bytes()).hexdigest()
    with tarfile.open(out) as t:

        def read(name: str) -> bytes:
            file = t.extractfile(name)
            assert file is not None
            return file.read()

        (entry,) = json.loads(read("manifest.json"))
        assert entry["RepoTags"] == ["b:arm64"]
        assert entry["Layers"] == [f"{digest}/layer.tar"]
        raw = read(entry["Config"])
        assert entry["Config"] == hashlib.sha256(raw).hexdigest() + ".json"
        config = json.loads(raw)
        assert read(entry["Layers"][0]) == layer.read_bytes()
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{digest}"]}
    assert "LANG=C.UTF-8" in config["config"]["Env"]
