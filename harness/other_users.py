"""The project installed where every user can run it, for processes tests start as another uid.

The proxy (uid 1501) and app clients (uid 1000) run with no capabilities, so they must reach
their interpreter, the standard library and every imported file themselves. The project's
``.venv`` is an editable install inside the checkout, and the checkout often sits under a
private directory (``/root``, a ``mktemp -d``): from there such a process would die with
``No module named proxy``. So, once per test run and only when first needed, a venv is built
under the temporary directory (mode 0755) on an interpreter whose own installation others can
read, holding hard links to this venv's packages (copies where linking is not possible) and a
plain copy of the project's packages, as a wheel would install them. Nothing the user owns has
its permissions changed: a file is linked only if others may already read it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST_NAME = _PYPROJECT["project"]["name"].replace("-", "_")
TOP_PACKAGES = sorted(
    {
        pattern.split(".")[0].rstrip("*")
        for pattern in _PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
)
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# The interpreter this venv was made from.
BASE_PYTHON: str = getattr(sys, "_base_executable", sys.executable)
# Where to look for an interpreter of this version when this one lives in a private directory.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
TIMEOUT = 60.0


class Unreachable(RuntimeError):
    """The shared install cannot be built; the message is one line naming the fix."""


def closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not enter, or ``path``
    itself if they may not read it; None when every user can reach it (by mode bits)."""
    path = path.resolve()
    for directory in reversed(path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return directory
    needed = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
    return None if path.stat().st_mode & needed == needed else path


def _is_editable_artefact(name: str) -> bool:
    """What ``pip install -e`` left in site-packages: it points back into a checkout."""
    return name.startswith("__editable__") or (
        name.startswith(f"{DIST_NAME}-") and name.endswith(".dist-info")
    )


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a file others may read; copy any other, and make the copy readable."""
    mode = os.stat(src).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, stat.S_IMODE(mode) | 0o444)


def _open_up(root: Path) -> None:
    """Everything under ``root`` reachable by all, whatever the umask: its directories and
    files were made here (a hard link is shared with its source, but only readable ones were
    linked, so none is changed)."""
    root.chmod(0o755)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            os.chmod(os.path.join(directory, name), 0o755)
        for name in files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and not mode & stat.S_IROTH:
                os.chmod(path, stat.S_IMODE(mode) | 0o444)


def copy_venv(dest: Path, base_python: str) -> Path:
    """A new venv at ``dest`` on ``base_python`` holding this venv's packages, without the
    project's editable install; returns its site-packages directory."""
    subprocess.run(
        [base_python, "-m", "venv", "--without-pip", "--symlinks", str(dest)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    site = dest / "lib" / f"python{VERSION}" / "site-packages"
    ours = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")}
    for source in sorted(ours):
        shutil.copytree(
            source,
            site,
            symlinks=True,
            ignore=lambda _dir, names: [n for n in names if _is_editable_artefact(n)],
            copy_function=_link_or_copy,
            dirs_exist_ok=True,
        )
    return site


def _interpreter_prefix(python: str) -> tuple[str, Path] | None:
    """(version, prefix) of ``python``, asked as root; None if it does not run."""
    try:
        done = subprocess.run(
            [
                python,
                "-c",
                "import sys; print(sys.version_info[0], sys.version_info[1], sys.prefix)",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor, prefix = done.stdout.split(maxsplit=2)
    return f"{major}.{minor}", Path(prefix.strip())


def shared_base_python() -> str:
    """An interpreter of this version that others can run with its own standard library."""
    candidates = [BASE_PYTHON, shutil.which(f"python{VERSION}", path=SYSTEM_PATH)]
    refusals = []
    for python in dict.fromkeys(c for c in candidates if c):
        found = _interpreter_prefix(python)
        if found is None or found[0] != VERSION:
            continue
        closed = closed_ancestor(Path(python)) or closed_ancestor(found[1])
        if closed is None:
            return python
        refusals.append(f"{python} (behind {closed}, mode {stat.S_IMODE(closed.stat().st_mode):o})")
    raise Unreachable(
        f"no python{VERSION} that other users can run: {', '.join(refusals) or 'none found'}; "
        f"install one outside private directories, e.g. apt-get install python{VERSION}-venv"
    )


def _shared_tempdir() -> Path:
    for candidate in (tempfile.gettempdir(), "/tmp"):
        if closed_ancestor(Path(candidate)) is None:
            return Path(candidate)
    raise Unreachable(
        f"the temporary directory {tempfile.gettempdir()} is private: set TMPDIR to one every "
        "user can enter, e.g. TMPDIR=/tmp"
    )


@functools.cache
def _shared_python() -> str | Unreachable:
    """Build the shared install (once per run; removed at exit); its python, or why not."""
    try:
        base = shared_base_python()
        root = Path(tempfile.mkdtemp(prefix="imds-proxy-shared-", dir=_shared_tempdir()))
    except Unreachable as exc:
        return exc
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    python = root / "venv" / "bin" / "python"
    try:
        site = copy_venv(root / "venv", base)
        for package in TOP_PACKAGES:
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / package, site / package, ignore=ignore)
        # Compiled now, as root: the other users may not write __pycache__ here.
        packages = [str(site / package) for package in TOP_PACKAGES]
        compile_all = [str(python), "-m", "compileall", "-q", *packages]
        subprocess.run(compile_all, check=True, capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return Unreachable(f"cannot build the shared install in {root}: {exc}")
    _open_up(root)
    return str(python)


@functools.cache
def reachable(path: Path) -> Path:
    """``path`` itself when every user can reach it; otherwise a mirror of it (hard links to
    what others may read, copies of the rest) under the shared temporary directory, made once
    per run and removed at exit. For build outputs inside the checkout (compiled clients,
    node_modules) that processes of another uid must run."""
    if closed_ancestor(path) is None:
        return path
    root = Path(tempfile.mkdtemp(prefix="imds-proxy-reachable-", dir=_shared_tempdir()))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    mirror = root / path.name
    if path.is_dir():
        shutil.copytree(path, mirror, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(path), str(mirror))
    _open_up(root)
    return mirror


@functools.cache
def _checked_for(user: int) -> str | Unreachable:
    """The shared python, once ``user`` has shown it can import the project from there."""
    python = _shared_python()
    if isinstance(python, Unreachable):
        return python
    probe = "import proxy.cli, init.cli; print(proxy.__file__)"
    done = subprocess.run(
        [python, "-c", probe],
        user=user,
        group=user,
        extra_groups=[],
        cwd="/",
        env={"PATH": SYSTEM_PATH},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    where = Path(python).parent.parent
    if done.returncode != 0 or not done.stdout.strip().startswith(str(where)):
        last = (done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]
        return Unreachable(f"uid {user} cannot run the project from {where}: {last}")
    return python


def _same_user(user: int | None) -> bool:
    return user is None or user == os.geteuid()


def python_for(user: int | None) -> str:
    """The interpreter a process run as ``user`` should use: this one if that is who runs the
    tests, the shared install for anyone else. Fails the test in one line if impossible."""
    if _same_user(user):
        return sys.executable
    python = _checked_for(user)
    if isinstance(python, Unreachable):
        pytest.fail(str(python), pytrace=False)
    return python


def cwd_for(user: int | None) -> Path:
    """Where a process run as ``user`` starts: the checkout if that is who runs the tests,
    else ``/``, so that it imports nothing from the checkout even when it could reach it."""
    return REPO if _same_user(user) else Path("/")
