"""The images' trimmed standard library (deploy/image/rootfs.py) against real runs.

The images leave parts of the standard library out. Every module a real run of the proxy or
of the init program imports, traced with ``-X importtime`` (lazy imports included), must stay.
deploy/image-test.sh then checks the built images themselves (deploy/image/check_image.py).
"""

from __future__ import annotations

from pathlib import Path

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import running_proxy
from tests.support import image_scripts
from tests.support.netns import init_env, iptables_available, pod_network, requires_root, run_init

ROOT = Path(__file__).resolve().parent.parent
TRACE = {"PYTHONPROFILEIMPORTTIME": "1"}


rootfs = image_scripts.load("rootfs")


def imported(trace: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = set()
    for line in trace.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            names.add(line.rsplit("|", 1)[-1].strip())
    return names


def test_omissions_are_whole_stdlib_parts() -> None:
    assert rootfs.omitted("test/test_os.py")
    assert rootfs.omitted("lib2to3")
    assert rootfs.omitted("lib-dynload/_curses.cpython-311-x86_64-linux-gnu.so")
    assert rootfs.omitted("config-3.11-x86_64-linux-gnu/Makefile")
    for kept in ("asyncio/base_events.py", "encodings/idna.py", "email", "ssl.py"):
        assert not rootfs.omitted(kept), kept
    # A name that merely starts like an omitted one stays.
    assert not rootfs.omitted("testing.py")
    assert rootfs.omitted_modules(["tkinter.ttk", "json", "curses", "readline"]) == [
        "curses",
        "readline",
        "tkinter.ttk",
    ]


def test_a_proxy_run_imports_nothing_the_images_omit(fake_entra: FakeEntra, tmp_path: Path) -> None:
    """Start, token (MSAL and TLS to the fake Entra ID), metrics, shutdown: all traced."""
    with running_proxy({**fake_entra.env(), **TRACE}, tmp_path) as proxy:
        answer = requests.get(
            proxy.url("https://management.azure.com/"), headers={"Metadata": "true"}, timeout=15
        )
        assert answer.status_code == 200, answer.text
        assert "# HELP" in proxy.metrics()
    names = imported(proxy.log_text())
    assert {"aiohttp", "msal", "ssl", "proxy.app"} <= names  # the trace is really there
    assert rootfs.omitted_modules(names) == []
    # Installed (MSAL needs them for certificates) but never loaded by a pod: PyJWT and the
    # native bindings of cryptography it imports, 9 MiB idle (proxy/jwtpayload.py).
    assert {"cryptography", "jwt"} & names == set()


@requires_root
def test_an_init_run_imports_nothing_the_images_omit() -> None:
    """The init program applying its rules for real, in a pod namespace the test creates."""
    backend = "nft" if iptables_available("nft") else "legacy"
    with pod_network() as net:
        done = run_init(net.pod, env=init_env(backend, **TRACE))
    assert done.returncode == 0, done.stdout + done.stderr
    names = imported(done.stderr)
    assert {"init.cli", "init.preflight", "fcntl", "subprocess"} <= names
    assert rootfs.omitted_modules(names) == []


def test_the_check_script_runs_with_the_full_stdlib() -> None:
    """check_image.py finds the dependencies' modules (the project itself is an editable
    install here, so its own files are not in its distribution's record)."""
    modules, tops = image_scripts.load("check_image").installed_modules()
    assert {"aiohttp.web", "msal", "yarl", "cryptography.x509"} <= set(modules)
    assert {"aiohttp", "cryptography", "structlog"} <= tops
    assert not any(name.endswith("__main__") for name in modules)


def test_a_sourceless_stdlib_imports_from_bytecode_alone(tmp_path: Path) -> None:
    """--sourceless-stdlib (the init image): a .pyc in place of each .py, omissions kept out."""
    import subprocess
    import sys

    source = tmp_path / "lib"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("")
    (source / "pkg" / "mod.py").write_text("def where():\n    return 1\n")
    (source / "test").mkdir()
    (source / "test" / "test_x.py").write_text("x = 1\n")
    (source / "broken.py").write_text("print 'python 2'\n")
    dest = tmp_path / "root"
    skip = lambda path: rootfs._left_out(str(source), path)  # noqa: E731
    failed = rootfs.compile_sourceless(str(source), dest, skip)
    assert failed == [str(source / "broken.py")]
    inside = dest / str(source).lstrip("/")
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*") if p.is_file()) == [
        "pkg/__init__.pyc",
        "pkg/mod.pyc",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import pkg.mod as m; print(m.__file__, m.where.__code__.co_filename)",
        ],
        env={"PYTHONPATH": str(inside)},
        capture_output=True,
        text=True,
        check=True,
    )
    # Loaded from the bytecode, whose code names the source path (what tracebacks show).
    loaded, code = done.stdout.split()
    assert loaded == str(inside / "pkg" / "mod.pyc")
    assert code == str(source / "pkg" / "mod.py")
