"""Every ELF file of an image's file system is for one architecture, and loads.

deploy/image-test.sh runs it on the host, on each built image's exported file system:

    python3 elf_check.py ROOT --arch arm64

It reads the ELF headers itself (no ldd, no emulation): every regular ELF file under ROOT
must be for ``--arch``; its program interpreter must be in ROOT; and each library it needs
(DT_NEEDED) must be found in ROOT where the dynamic loader looks: the file's DT_RPATH or
DT_RUNPATH (``$ORIGIN`` expanded) and the loader's default directories. Symbolic links are
followed inside ROOT, never out to the host. This is the same closure deploy/image/rootfs.py
builds with ``ldd`` in the builder, checked again on the image as shipped.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

# e_machine of each architecture an image is built for, and its Debian multiarch triplet.
MACHINES = {"amd64": (62, "x86_64-linux-gnu"), "arm64": (183, "aarch64-linux-gnu")}
MACHINE_NAMES = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm"}

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29


class NotElf(Exception):
    pass


@dataclass
class Elf:
    machine: int
    interpreter: str | None = None
    needed: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)  # DT_RPATH / DT_RUNPATH entries


def read_elf(data: bytes) -> Elf:
    """The fields of a 64-bit little-endian ELF file this check needs."""
    if data[:4] != b"\x7fELF":
        raise NotElf
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", data, 18)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    elf = Elf(machine)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
        elif p_type == PT_INTERP:
            elf.interpreter = data[offset : offset + filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return elf  # statically linked
    entries: list[tuple[int, int]] = []
    for at in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, at)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab is None:
        return elf
    base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), None)
    if base is None:
        raise ValueError("DT_STRTAB is outside every loaded segment")

    def string(at: int) -> str:
        return data[base + at : data.index(b"\0", base + at)].decode()

    for tag, value in entries:
        if tag == DT_NEEDED:
            elf.needed.append(string(value))
        elif tag in (DT_RPATH, DT_RUNPATH):
            elf.search.extend(p for p in string(value).split(":") if p)
    return elf


class Root:
    """Paths inside an image's file system, with symbolic links resolved inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def resolve(self, path: str, depth: int = 0) -> Path | None:
        """The file ``path`` (absolute, inside the image) names, or None."""
        if depth > 40:
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        current = "/"
        for i, part in enumerate(parts):
            if part == "..":
                current = os.path.dirname(current.rstrip("/")) or "/"
                continue
            candidate = os.path.join(current, part)
            host = self.root / candidate.lstrip("/")
            if host.is_symlink():
                target = os.readlink(host)
                target = target if target.startswith("/") else os.path.join(current, target)
                rest = "/".join(parts[i + 1 :])
                return self.resolve(os.path.join(target, rest) if rest else target, depth + 1)
            if not host.exists():
                return None
            current = candidate
        return self.root / current.lstrip("/")


def elf_files(root: Path) -> list[Path]:
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            file = Path(folder, name)
            if not file.is_symlink() and file.is_file() and file.stat().st_size > 4:
                with file.open("rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(file)
    return sorted(found)


def check(root: Path, arch: str) -> tuple[int, list[str]]:
    """(number of ELF files, problems) for the image file system at ``root``."""
    machine, triplet = MACHINES[arch]
    defaults = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib", "/lib64"]
    tree = Root(root)
    problems = []
    files = elf_files(root)
    for file in files:
        inside = "/" + str(file.relative_to(root))
        try:
            elf = read_elf(file.read_bytes())
        except ValueError as exc:
            problems.append(f"{inside}: {exc}")
            continue
        if elf.machine != machine:
            name = MACHINE_NAMES.get(elf.machine, str(elf.machine))
            problems.append(f"{inside}: built for {name}, not {arch}")
        if elf.interpreter and tree.resolve(elf.interpreter) is None:
            problems.append(f"{inside}: its interpreter {elf.interpreter} is not in the image")
        origin = os.path.dirname(inside)
        dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in elf.search]
        for library in elf.needed:
            candidates = (
                [library] if "/" in library else [f"{d}/{library}" for d in dirs + defaults]
            )
            if not any(tree.resolve(c) is not None for c in candidates):
                problems.append(f"{inside}: needs {library}, which is not in the image")
    return len(files), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--arch", choices=sorted(MACHINES), required=True)
    args = parser.parse_args(argv)
    count, problems = check(args.root, args.arch)
    for problem in problems:
        print(f"  PROBLEM {problem}")
    if count == 0:
        print("  PROBLEM no ELF file at all: not an image file system")
        return 1
    if not problems:
        machine = MACHINE_NAMES[MACHINES[args.arch][0]]
        print(f"{count} ELF files, every one {machine}; all they load is in the image")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
