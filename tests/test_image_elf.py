"""deploy/image/elf_check.py, the architecture and library-closure check of the images.

On a small tree assembled from this host's own binaries the way rootfs.py assembles an image
(the same Tree and ldd closure); deploy/image-test.sh runs it on every built image.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest

from tests.support import image_scripts

ROOT = Path(__file__).resolve().parent.parent
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())

pytestmark = pytest.mark.skipif(
    HOST_ARCH is None or shutil.which("ldd") is None, reason="needs an amd64 or arm64 glibc host"
)


elf_check = image_scripts.load("elf_check")
rootfs = image_scripts.load("rootfs")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """ls and the stdlib's _ssl extension with every library they load, as in an image."""
    import _ssl

    dest = tmp_path / "root"
    dest.mkdir()
    built = rootfs.Tree(dest)
    built.copy(shutil.which("ls") or "/bin/ls")
    built.copy(_ssl.__file__)
    built.add_libraries()
    return dest


def test_a_complete_tree_passes(tree: Path) -> None:
    count, problems = elf_check.check(tree, HOST_ARCH)
    assert problems == []
    assert count >= 4  # ls, _ssl, libc, the loader at least


def test_another_architecture_is_named(tree: Path) -> None:
    other = "arm64" if HOST_ARCH == "amd64" else "amd64"
    _, problems = elf_check.check(tree, other)
    assert problems and all("not " + other in p or "not in the image" in p for p in problems)


def test_a_missing_library_is_named(tree: Path) -> None:
    libc = next(p for p in tree.rglob("libc.so.6"))
    libc.unlink()
    _, problems = elf_check.check(tree, HOST_ARCH)
    assert any(p.endswith("needs libc.so.6, which is not in the image") for p in problems)


def test_the_command_line(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert elf_check.main([str(tree), "--arch", HOST_ARCH]) == 0
    assert "every one" in capsys.readouterr().out
    assert elf_check.main([str(tree.parent / "empty"), "--arch", HOST_ARCH]) == 1
