"""Assemble a shell-less root filesystem for a container image from a builder stage.

Run in the builder stage of Dockerfile.proxy / .init / .tools, with the base image's own
interpreter; the final stage is ``FROM scratch`` plus a copy of the tree this writes:

    python3 rootfs.py --dest /rootfs --venv /opt/venv [--strip-debug] [--copy PATH_OR_GLOB ...]

The tree holds the interpreter, its standard library less ``STDLIB_OMIT``, the virtual
environment (the project and its dependencies as pip installed them), any ``--copy`` paths
(the init image's iptables binaries and xtables modules) and then every shared library that
an ELF file in the tree needs, found with ``ldd`` (so the closure follows whatever the
dependencies link against). ``--strip-debug`` removes the debug sections of those binaries.
Paths stay exactly as in the builder, symlinks included, so the venv's interpreter link and
``pyvenv.cfg`` stay valid. No shell, no package manager, no pip.

Bytecode is compiled for the whole tree with unchecked-hash pycs: the root filesystem is
read-only and immutable, so Python can neither write nor needs to re-validate them, and a
start never compiles anything.

``--sourceless-stdlib`` (the init image, whose budget is half the proxy's) ships the standard
library as bytecode only: each module's ``.pyc`` in place of its ``.py``, which Python
imports the same way; a traceback through the standard library then shows file and line but
not the line's text. The project and its dependencies (the venv) keep their sources.
"""

from __future__ import annotations

import argparse
import compileall
import fnmatch
import functools
import glob
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path

# The one list of what the images leave out of the standard library. Only what no installed
# module imports and no run of the proxy or the init program needs: the test suite, GUI and
# interactive tools, build-time helpers, and the extensions for terminals and old databases
# (whose native libraries would come along otherwise). Everything else stays, so that a new
# pure-Python dependency's stdlib imports keep working; image-test imports every module of
# every installed distribution inside both images to prove it, and tests/test_image_rootfs.py
# checks that nothing the project imports is in here.
STDLIB_OMIT: tuple[str, ...] = (
    "test",
    "idlelib",
    "tkinter",
    "turtle.py",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "distutils",
    "pydoc_data",
    "curses",
    "config-*",  # static library and Makefile for building extensions
    "lib-dynload/_test*",
    "lib-dynload/_ctypes_test*",
    "lib-dynload/_xxtestfuzz*",
    "lib-dynload/xxlimited*",
    "lib-dynload/_tkinter*",
    "lib-dynload/_curses*",
    "lib-dynload/readline*",
    "lib-dynload/_dbm*",
    "lib-dynload/_gdbm*",
    "lib-dynload/nis*",
    "lib-dynload/ossaudiodev*",
)

# Always there: glibc dlopen()s libgcc_s for thread cancellation and unwinding, which ldd
# cannot see. The CA bundle and OpenSSL's configuration are what ssl's defaults look for.
ALWAYS_COPY: tuple[str, ...] = (
    "/lib/*-linux-gnu/libgcc_s.so.1",
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/lib/ssl/cert.pem",
    "/usr/lib/ssl/certs",
    "/usr/lib/ssl/openssl.cnf",
    "/etc/ssl/openssl.cnf",
)

# What ``getpwuid`` and host lookups read; the pod's /etc/hosts and resolv.conf are mounted.
# The images' users: 1501 the sidecar, 65532 the tools (the webhook's Deployment).
ETC_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/nonexistent\n"
        "imds-proxy:x:1501:1501:imds-proxy:/nonexistent:/nonexistent\n"
        "nonroot:x:65532:65532:nonroot:/nonexistent:/nonexistent\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n"
    ),
    "etc/group": "root:x:0:\nimds-proxy:x:1501:\nnonroot:x:65532:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}

_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def omitted(relative: str) -> bool:
    """Whether a path relative to the stdlib directory (``a/b.py``) is left out."""
    parts = relative.split("/")
    for pattern in STDLIB_OMIT:
        depth = pattern.count("/") + 1
        if len(parts) >= depth and fnmatch.fnmatch("/".join(parts[:depth]), pattern):
            return True
    return False


def omitted_modules(names: Iterable[str]) -> list[str]:
    """The module names among ``names`` whose files ``STDLIB_OMIT`` leaves out."""
    found = []
    for name in names:
        top = name.split(".")[0]
        if omitted(top) or omitted(f"{top}.py") or omitted(f"lib-dynload/{top}.cpython"):
            found.append(name)
    return sorted(found)


class Tree:
    """A destination tree into which host paths are copied at the same place."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._done: set[str] = set()

    def copy(self, path: str, skip: Callable[[str], bool] = lambda _: False) -> None:
        """Copy ``path`` with every symlink on the way (and its target), skipping ``skip``."""
        path = os.path.normpath(os.path.abspath(path))
        if path in self._done:
            return
        self._done.add(path)
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                self._link(prefix)
                target = os.path.join(os.path.dirname(prefix), os.readlink(prefix))
                self.copy(os.path.join(target, *parts[i:]), skip)
                return
        if os.path.isdir(path):
            self._mkdir(path)
            for entry in sorted(os.listdir(path)):
                child = os.path.join(path, entry)
                if not skip(child):
                    self.copy(child, skip)
        elif os.path.exists(path):
            self._mkdir(os.path.dirname(path))
            shutil.copy2(path, self._at(path), follow_symlinks=False)
        else:
            raise FileNotFoundError(path)

    def _at(self, path: str) -> Path:
        return self.dest / path.lstrip("/")

    def _mkdir(self, path: str) -> None:
        self._at(path).mkdir(parents=True, exist_ok=True)

    def _link(self, path: str) -> None:
        at = self._at(path)
        if not at.is_symlink():
            at.parent.mkdir(parents=True, exist_ok=True)
            at.symlink_to(os.readlink(path))

    def elf_files(self) -> list[Path]:
        """Every regular ELF file in the tree."""
        found = []
        for root, _, files in os.walk(self.dest):
            for name in files:
                file = Path(root, name)
                if not file.is_symlink() and file.stat().st_size > 4:
                    with file.open("rb") as f:
                        if f.read(4) == b"\x7fELF":
                            found.append(file)
        return found

    def add_libraries(self) -> None:
        """Copy the shared libraries every ELF file needs until the closure is complete."""
        checked: set[Path] = set()
        while pending := [f for f in self.elf_files() if f not in checked]:
            for file in pending:
                checked.add(file)
                for library in needed_libraries(file):
                    self.copy(library)


def needed_libraries(file: Path) -> list[str]:
    """The absolute paths ``ldd`` resolves for ``file``; an unresolved one is an error."""
    result = subprocess.run(["ldd", str(file)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" in result.stdout + result.stderr:
        return []
    if result.returncode != 0:
        raise RuntimeError(f"ldd {file}: {result.stderr.strip()}")
    if "not found" in result.stdout:
        raise RuntimeError(f"{file} needs a library that is not installed:\n{result.stdout}")
    return [m.group(1) for m in map(_LDD_PATH.search, result.stdout.splitlines()) if m]


def _left_out(stdlib: str, path: str) -> bool:
    """Omitted from the stdlib, or optimised bytecode (nothing runs with -O here)."""
    return omitted(path[len(stdlib) + 1 :]) or path.endswith((".opt-1.pyc", ".opt-2.pyc"))


def _left_out_sourceless(stdlib: str, path: str) -> bool:
    """As ``_left_out``, and every source and cached bytecode: compile_sourceless writes it."""
    return _left_out(stdlib, path) or path.endswith(".py") or path.endswith("/__pycache__")


def compile_sourceless(source: str, dest: Path, skip: Callable[[str], bool]) -> list[str]:
    """Compile every ``.py`` under ``source`` to a ``.pyc`` beside where it would be in
    ``dest`` (legacy placement, imported without the source); return those that failed."""
    failed = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not skip(os.path.join(root, d)))
        for name in sorted(files):
            path = os.path.join(root, name)
            if not name.endswith(".py") or _left_out(source, path):
                continue
            target = dest / path.lstrip("/")
            target = target.with_suffix(".pyc")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                py_compile.compile(
                    path,
                    cfile=str(target),
                    dfile=path,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
            except py_compile.PyCompileError:
                failed.append(path)
    return failed


def stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["stdlib"], paths["platstdlib"]})


def strip_debug(files: Iterable[Path]) -> None:
    """Drop debug sections (never symbols) from binaries; wheels often ship them unstripped."""
    for file in files:
        subprocess.run(["strip", "--strip-debug", "--preserve-dates", str(file)], check=True)


def build(
    dest: Path, venv: str, extra: list[str], strip: bool = False, sourceless: bool = False
) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tree = Tree(dest)
    tree.copy(os.path.realpath(sys.executable))
    for stdlib in stdlib_dirs():
        tree.copy(
            stdlib,
            skip=functools.partial(_left_out_sourceless if sourceless else _left_out, stdlib),
        )
        if sourceless:
            for path in compile_sourceless(stdlib, dest, functools.partial(_left_out, stdlib)):
                # Python 2 leftovers in some test data; such a module was never importable.
                print(f"rootfs: {path} did not compile", file=sys.stderr)
    tree.copy(venv)
    for pattern in (*ALWAYS_COPY, *extra):
        matches = sorted(glob.glob(pattern))
        if not matches and pattern in extra:
            raise FileNotFoundError(pattern)
        for match in matches:
            tree.copy(match)
    tree.add_libraries()
    if strip:
        strip_debug(tree.elf_files())
    for name, text in ETC_FILES.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    for empty in ("tmp", "run"):  # iptables-legacy takes its lock in /run
        (dest / empty).mkdir(mode=0o1777 if empty == "tmp" else 0o755, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    compile_bytecode(dest, [venv] if sourceless else [*stdlib_dirs(), venv])


def compile_bytecode(dest: Path, dirs: list[str]) -> None:
    """Compile every module in place, recording the paths the image will have."""
    for directory in dirs:
        ok = compileall.compile_dir(
            str(dest / directory.lstrip("/")),
            ddir=directory,
            quiet=1,
            force=True,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        if not ok:
            # Modules that cannot compile (Python 2 leftovers in some packages' test data)
            # would be compiled, and fail, only if imported; the same as with pip's pycs.
            print(f"rootfs: some files under {directory} did not compile", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--venv", required=True)
    parser.add_argument("--copy", action="append", default=[], metavar="PATH_OR_GLOB")
    parser.add_argument(
        "--strip-debug", action="store_true", help="strip debug sections (needs binutils)"
    )
    parser.add_argument(
        "--sourceless-stdlib",
        action="store_true",
        help="the standard library as bytecode only (.pyc in place of each .py)",
    )
    args = parser.parse_args(argv)
    build(
        args.dest, args.venv, args.copy, strip=args.strip_debug, sourceless=args.sourceless_stdlib
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
