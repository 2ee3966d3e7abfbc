"""Inside a built image: no shell or installer, and every installed module still imports.

deploy/image-test.sh runs it in both images as ``python3 -c "$(cat deploy/image/check_image.py)"``.
The images carry a trimmed standard library (deploy/image/rootfs.py), so this imports every
module of every installed distribution, the project's and its dependencies', and fails if one
needs a stdlib module, an extension or a shared library the image lacks. A module may still
fail on an optional third-party package that is not installed (aiohttp's gunicorn worker,
msal's broker): that is the package's choice, not the image's, and is only counted.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import warnings

FORBIDDEN = ("sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "pip", "pip3")
FORBIDDEN += ("gcc", "cc", "c++", "clang", "make", "ldd")
# Modules that need a stdlib part the images leave out on purpose (rootfs.STDLIB_OMIT), with
# the part: cffi's helpers for compiling bindings need distutils or setuptools, which an image
# without an installer has neither of; nothing imports them at run time.
BUILD_TIME_ONLY = {("cffi._shimmed_dist_utils", "distutils")}
SEARCHED = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


def tools_present() -> list[str]:
    dirs = {*SEARCHED, *os.environ.get("PATH", "").split(os.pathsep)}
    return sorted(
        os.path.join(d, tool)
        for d in dirs
        for tool in FORBIDDEN
        if os.path.lexists(os.path.join(d, tool))
    )


def installed_modules() -> tuple[list[str], set[str]]:
    """Every importable module name the installed distributions ship, and their top names."""
    names: set[str] = set()
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            parts = file.parts
            if ".." in parts or "__pycache__" in parts or not parts:
                continue
            stem = parts[-1]
            if stem.endswith(".py"):
                stem = stem[:-3]
            elif stem.endswith(".so"):
                stem = stem.split(".")[0]
            else:
                continue
            module = [*parts[:-1], stem]
            if module[-1] == "__init__":
                module.pop()
            if module and all(p.isidentifier() for p in module) and module[-1] != "__main__":
                names.add(".".join(module))
    return sorted(names), {n.split(".")[0] for n in names}


def _missing_module(exc: BaseException) -> str | None:
    """The top-level name an import failed on, looking through wrapping exceptions."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImportError):
            return (seen.name or "").split(".")[0] or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def main() -> int:
    problems = [f"present: {path}" for path in tools_present()]
    for installer in ("pip", "ensurepip", "setuptools"):
        try:
            importlib.import_module(installer)
        except ImportError:
            continue
        problems.append(f"importable: {installer}")

    modules, ours = installed_modules()
    stdlib = sys.stdlib_module_names
    optional: list[str] = []
    other: list[str] = []
    warnings.simplefilter("ignore")
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # module-level code may raise anything, SystemExit too
            missing = _missing_module(exc)
            if missing is None:
                other.append(f"{name}: {type(exc).__name__}: {exc}")
            elif (name, missing) in BUILD_TIME_ONLY:
                optional.append(f"{name} (needs {missing}, build time only)")
            elif missing in stdlib or missing in ours or "shared object" in str(exc):
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                optional.append(f"{name} (needs {missing})")
    print(
        f"imported {len(modules) - len(optional) - len(other)} of {len(modules)} installed"
        f" modules; {len(optional)} need an optional package that is not installed"
    )
    for line in other:
        print(f"  failed on its own (not a missing part of the image): {line}")
    for line in problems:
        print(f"  PROBLEM {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
