"""deploy/image/oci_index.py: one image index from single-platform `docker save` archives.

The archives here are written the way Docker 20.10's `docker save` writes them (manifest.json,
the config, one layer.tar per layer); deploy/image-test.sh runs it on the real images.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support import image_scripts

ROOT = Path(__file__).resolve().parent.parent


oci_index = image_scripts.load("oci_index")


def saved_image(path: Path, arch: str, content: bytes) -> Path:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("proxy")
        info.size = len(content)
        t.addfile(info, io.BytesIO(content))
    config = {"architecture": arch, "os": "linux", "config": {"User": "1501:1501"}}
    if arch == "arm64":
        config["variant"] = "v8"
    files = {
        "abc.json": json.dumps(config).encode(),
        "l1/layer.tar": layer.getvalue(),
        "manifest.json": json.dumps(
            [{"Config": "abc.json", "RepoTags": ["x:y"], "Layers": ["l1/layer.tar"]}]
        ).encode(),
    }
    with tarfile.open(path, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_an_index_of_two_platforms(tmp_path: Path) -> None:
    amd = saved_image(tmp_path / "amd.tar", "amd64", b"x86 binary")
    arm = saved_image(tmp_path / "arm.tar", "arm64", b"arm binary")
    out = tmp_path / "index.oci.tar"
    index = oci_index.build(out, "image-test", [amd, arm])
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert oci_index.verify(out) == []
    with tarfile.open(out) as t:
        top = json.loads(t.extractfile("index.json").read())  # type: ignore[union-attr]
        assert json.loads(t.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
    assert top["manifests"][0]["digest"] == index["digest"]
    assert top["manifests"][0]["annotations"] == {oci_index.REF_NAME: "image-test"}


def test_a_changed_layer_is_found(tmp_path: Path) -> None:
    out = tmp_path / "index.oci.tar"
    oci_index.build(out, "t", [saved_image(tmp_path / "a.tar", "amd64", b"a")])
    with tarfile.open(out) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]  # type: ignore[union-attr]
    layer = max(range(len(members)), key=lambda i: len(members[i][1]))  # the layer tar
    member, data = members[layer]
    members[layer] = (member, data[:512] + b"b" + data[513:])  # the file's content
    with tarfile.open(out, "w") as t:
        for member, data in members:
            t.addfile(member, io.BytesIO(data))
    assert oci_index.verify(out) == [f"{members[layer][0].name}: content does not match its digest"]


def test_one_platform_twice_is_refused(tmp_path: Path) -> None:
    a = saved_image(tmp_path / "a.tar", "amd64", b"a")
    b = saved_image(tmp_path / "b.tar", "amd64", b"b")
    with pytest.raises(ValueError, match="same platform"):
        oci_index.build(tmp_path / "out.tar", "t", [a, b])
