"""One installable per image: each image's packages import only what that image installs.

pyproject.toml's ``[tool.imds-oidc-proxy.images]`` names each image's packages and
requirements, and deploy/image/distribution.py turns an entry into the image's wheel. Here:

- statically, every import in those packages (at load time and inside functions) resolves
  to a module of the image's packages, the standard library or a distribution its
  requirements bring; the only ways out are the CLI's optional subcommands, listed below;
- for real, the proxy serves a token, the init program runs and the webhook answers a review
  with every other module made unimportable (a ``sitecustomize`` finder), as in the image;
- a subcommand whose package is not installed exits 2 with one line (the sidecar itself
  too, in the tools image).

deploy/image-test.sh then checks the built images (check_image.py, `/proxy inject`,
`imds-proxy webhook --help` and `imds-proxy inject --help` in the tools image).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.fake_entra import FakeEntra
from harness.proxy_process import free_port, running_proxy
from proxy.devissuer.pki import generate_tls_files
from tests.support import image_scripts
from tests.support.kube_stand_in import KubeStandIn
from tests.support.netns import init_env, iptables_available, pod_network, requires_root, run_init
from tests.support.webhook_process import WebhookProcess, pod_creation_review

ROOT = Path(__file__).resolve().parent.parent
OURS = ("proxy", "init")


distribution = image_scripts.load("distribution")
PROJECT = distribution.load(ROOT / "pyproject.toml")
IMAGES = sorted(distribution.images(PROJECT))

# Imports that leave an image's packages on purpose: the optional commands, whose entry
# proxy.cli imports by name, answering a missing one in one line (test_missing_subcommands_exit_2);
# in the tools image, the sidecar's own start (proxy.cli.run), answered the same way.
LEAVING: dict[str, set[tuple[str, str]]] = {
    "proxy": set(),
    "init": set(),
    "tools": {("proxy.cli", "proxy.eventloop"), ("proxy.cli", "proxy.server")},
}
# What each image must never carry (the reason for the split).
NEVER = {
    "proxy": {"ruamel.yaml", "jsonpatch", "pyroute2"},
    "init": {"aiohttp", "msal", "cryptography", "structlog", "ruamel.yaml", "pyroute2"},
    "tools": {"msal", "requests", "PyJWT", "uvloop", "pyroute2"},
}


def test_every_image_is_covered() -> None:
    assert set(IMAGES) == set(LEAVING) == set(NEVER) == {"proxy", "init", "tools"}


def modules_of(image: str) -> dict[str, Path]:
    """Module name -> file for every module of the image's packages and single modules."""
    entry = distribution.image_entry(PROJECT, image)
    found = {}
    for package in entry["packages"]:
        folder = ROOT / package.replace(".", "/")
        for file in sorted(folder.glob("*.py")):
            found[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    for module in entry.get("modules", []):
        package, _, stem = module.rpartition(".")
        found[module] = ROOT / package.replace(".", "/") / f"{stem}.py"
        if package:  # its __init__ comes along (setuptools' py-modules)
            found[package] = ROOT / package.replace(".", "/") / "__init__.py"
    assert all(file.is_file() for file in found.values()), found
    return found


def imports_in(name: str, file: Path) -> Iterator[str]:
    """Every module name an import statement in ``file`` may load, wherever it stands."""
    package = name if file.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            yield base
            # `from proxy import config` loads the submodule proxy.config.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def is_our_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def closure(image: str) -> set[str]:
    """Canonical names of the distributions the image's requirements bring (as installed)."""
    env = {"extra": ""}
    todo = [Requirement(r) for r in distribution.requirements(PROJECT, image)]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({**env, "extra": extra}) for extra in ("", *req.extras)
        ):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(req.name) or ():
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate({**env, "extra": extra}) for extra in ("", *req.extras)
            ):
                todo.append(sub)
    return seen


def top_level_names(dists: set[str]) -> set[str]:
    """The top-level import names the given distributions install."""
    return {
        top
        for top, owners in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in dists for owner in owners)
    }


@pytest.mark.parametrize("image", IMAGES)
def test_every_import_stays_inside_the_image(image: str) -> None:
    ours = modules_of(image)
    dists = closure(image)
    tops = top_level_names(dists)
    leaving = set()
    foreign = set()
    for name, file in ours.items():
        for imported in imports_in(name, file):
            top = imported.partition(".")[0]
            if top in OURS:
                if is_our_module(imported) and imported not in ours:
                    leaving.add((name, imported))
            elif top not in sys.stdlib_module_names and top not in tops and top != "__future__":
                foreign.add(f"{name} imports {imported}")
    assert leaving == LEAVING[image]
    assert foreign == set(), "not brought by the image's requirements"
    assert not {canonicalize_name(d) for d in NEVER[image]} & dists


def test_the_images_leave_the_tools_out() -> None:
    assert "proxy.doctor.cli" in modules_of("proxy")
    assert "proxy.report.cli" in modules_of("proxy")
    for image in ("proxy", "init"):
        names = set(modules_of(image))
        assert not any(
            n.startswith(("proxy.devissuer", "proxy.inject", "proxy.webhook")) for n in names
        )
    assert set(modules_of("init")) == {
        f"init.{n}" for n in ("cli", "iptables", "preflight", "rules", "settings", "__main__")
    } | {"init"}
    # The tools image: both tools and the command line, nothing of the sidecar's server.
    tools = set(modules_of("tools"))
    assert {"proxy.webhook.cli", "proxy.webhook.server", "proxy.inject.cli", "proxy.cli"} <= tools
    assert not any(
        n.startswith(("proxy.devissuer", "proxy.tokens", "proxy.doctor", "proxy.report", "init"))
        for n in tools
    )
    assert not {"proxy.server", "proxy.app", "proxy.imds", "proxy.eventloop"} & tools


def test_the_image_pyproject_is_a_wheel_of_just_the_image() -> None:
    import tomllib

    text = distribution.pyproject(PROJECT, "init")
    written = tomllib.loads(text)
    assert written["project"]["name"] == "imds-oidc-proxy-init"
    assert written["project"]["dependencies"] == []
    assert written["project"]["scripts"] == {"imds-proxy-init": "init.cli:main"}
    assert written["tool"]["setuptools"]["packages"] == ["init"]
    proxy = tomllib.loads(distribution.pyproject(PROJECT, "proxy"))
    assert proxy["project"]["dependencies"] == PROJECT["project"]["dependencies"]
    assert proxy["project"]["version"] == PROJECT["project"]["version"]
    assert "py-modules" not in proxy["tool"]["setuptools"]
    tools = tomllib.loads(distribution.pyproject(PROJECT, "tools"))
    assert tools["project"]["name"] == "imds-oidc-proxy-tools"
    assert tools["project"]["scripts"] == {"imds-proxy": "proxy.cli:main"}
    assert tools["tool"]["setuptools"]["packages"] == ["proxy.inject", "proxy.webhook"]
    assert "proxy.cli" in tools["tool"]["setuptools"]["py-modules"]
    extras = PROJECT["project"]["optional-dependencies"]
    assert tools["project"]["dependencies"] == extras["inject"] + extras["tools"]


# Every finder of the process under test made blind to the modules outside the image, so an
# import of one fails (and importlib.util.find_spec returns None) as in the image. Installed
# through a sitecustomize module on its PYTHONPATH, after the .pth files set up the finders.
BLOCKER = """
import json, os, sys

_allowed = json.loads(os.environ["IMDS_IMAGE_MODULES"])
_ours = set(_allowed["ours"])
_tops = set(_allowed["tops"]) | set(sys.stdlib_module_names) | {"sitecustomize"}


def _in_image(fullname):
    top = fullname.partition(".")[0]
    if top in ("proxy", "init"):
        return fullname in _ours
    return top in _tops or top.startswith("__editable__")


class _OnlyTheImage:
    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, fullname, path=None, target=None):
        if not _in_image(fullname):
            return None
        return self._inner.find_spec(fullname, path, target)

    def __getattr__(self, name):
        return getattr(self._inner, name)


sys.meta_path[:] = [_OnlyTheImage(finder) for finder in sys.meta_path]
"""


def image_env(image: str, tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "image-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    allowed = {"ours": sorted(modules_of(image)), "tops": sorted(top_level_names(closure(image)))}
    return {"PYTHONPATH": str(site), "IMDS_IMAGE_MODULES": json.dumps(allowed)}


def _run_in_image(image: str, tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**image_env(image, tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_blocker_blocks(tmp_path: Path) -> None:
    done = _run_in_image("proxy", tmp_path, "import ruamel.yaml")
    assert "ModuleNotFoundError: No module named 'ruamel'" in done.stderr
    done = _run_in_image("init", tmp_path, "import aiohttp")
    assert "ModuleNotFoundError: No module named 'aiohttp'" in done.stderr
    done = _run_in_image("proxy", tmp_path, "import proxy.devissuer")
    assert "ModuleNotFoundError: No module named 'proxy.devissuer'" in done.stderr
    done = _run_in_image("proxy", tmp_path, "import aiohttp, msal, proxy.doctor")
    assert done.returncode == 0, done.stderr
    done = _run_in_image("tools", tmp_path, "import proxy.server")
    assert "ModuleNotFoundError: No module named 'proxy.server'" in done.stderr
    done = _run_in_image("tools", tmp_path, "import msal")
    assert "ModuleNotFoundError: No module named 'msal'" in done.stderr


def test_the_sidecar_serves_a_token_with_only_its_image(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Start, a token (MSAL, TLS), metrics and shutdown, with nothing outside the image."""
    env = {**fake_entra.env(), **image_env("proxy", tmp_path)}
    with running_proxy(env, tmp_path) as proxy:
        answer = requests.get(
            proxy.url("https://management.azure.com/"), headers={"Metadata": "true"}, timeout=15
        )
        assert answer.status_code == 200, answer.text
        assert "# HELP" in proxy.metrics()
    assert "ModuleNotFoundError" not in proxy.log_text()


def test_every_sidecar_module_loads_with_only_its_image(tmp_path: Path) -> None:
    names = sorted(n for n in modules_of("proxy") if not n.endswith("__main__"))
    done = _run_in_image(
        "proxy",
        tmp_path,
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(sys.modules)))\n",
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert not {m for m in loaded if m.startswith(("proxy.devissuer", "proxy.inject", "ruamel"))}


@pytest.mark.parametrize(
    ("command", "missing"), [("inject", "proxy.inject"), ("dev", "proxy.devissuer")]
)
def test_missing_subcommands_exit_2(command: str, missing: str, tmp_path: Path) -> None:
    done = _run_in_image(
        "proxy",
        tmp_path,
        f"import sys\nfrom proxy.cli import main\nsys.exit(main([{command!r}, '--help']))",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"imds-proxy {command}: not installed here ({missing} is missing)")


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["--proxy-port=8000"], "proxy.server"),
        (["run"], "proxy.server"),
        (["doctor", "--help"], "proxy.doctor"),
        (["report", "--help"], "proxy.report"),
        (["dev", "--help"], "proxy.devissuer"),
    ],
)
def test_the_tools_image_has_no_sidecar(argv: list[str], missing: str, tmp_path: Path) -> None:
    done = _run_in_image(
        "tools", tmp_path, f"import sys\nfrom proxy.cli import main\nsys.exit(main({argv!r}))"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"not installed here ({missing} is missing)" in lines[0]


@pytest.mark.parametrize("command", ["webhook", "inject"])
def test_tools_help_with_only_their_image(command: str, tmp_path: Path) -> None:
    done = _run_in_image(
        "tools",
        tmp_path,
        f"import sys\nfrom proxy.cli import main\nsys.exit(main([{command!r}, '--help']))",
    )
    assert done.returncode == 0, done.stderr
    assert f"imds-proxy {command}" in done.stdout


def test_the_webhook_answers_a_review_with_only_its_image(tmp_path: Path) -> None:
    """Start (certificate, kubeconfig read with ruamel.yaml, API server version), a review
    that adds the sidecar, metrics and SIGTERM, with nothing outside the tools image."""
    tls = generate_tls_files(tmp_path / "tls")
    with KubeStandIn(version="v1.30.6") as api:
        api.namespace("default")
        client_id = "00000000-0000-0000-0000-000000000001"
        api.service_account("default", "app", {"azure.workload.identity/client-id": client_id})
        port, metrics_port = free_port(), free_port()
        webhook = WebhookProcess(
            [
                "--host=127.0.0.1",
                f"--port={port}",
                f"--metrics-port={metrics_port}",
                "--metrics-host=127.0.0.1",
                f"--tls-cert-file={tls.cert}",
                f"--tls-key-file={tls.key}",
                f"--kubeconfig={api.kubeconfig(tmp_path)}",
                "--tenant-id=00000000-0000-0000-0000-0000000000aa",
            ],
            port,
            metrics_port,
            tmp_path / "webhook.log",
            env=image_env("tools", tmp_path),
        )
        try:
            webhook.wait_ready(tls.ca_bundle)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "app",
                    "annotations": {"azure.workload.identity/inject-proxy-sidecar": "true"},
                    "labels": {"azure.workload.identity/use": "true"},
                },
                "spec": {
                    "serviceAccountName": "app",
                    "containers": [{"name": "app", "image": "app"}],
                },
            }
            uid = "0f0e0d0c-0000-4000-8000-000000000002"
            status, body = webhook.review(pod_creation_review(pod, uid), tls.ca_bundle)
            assert status == 200, body
            response = json.loads(body)["response"]
            assert response["uid"] == uid and response["allowed"] is True
            assert response["patch"], response  # the sidecar added
            assert "imds_proxy_webhook_reviews_total" in webhook.metrics()
        finally:
            code = webhook.stop()
    assert code == 0, webhook.log.read_text()
    assert "ModuleNotFoundError" not in webhook.log.read_text()


def test_init_help_with_only_its_image(tmp_path: Path) -> None:
    done = _run_in_image(
        "init", tmp_path, "import sys\nfrom init.cli import main\nmain(['--help'])"
    )
    assert done.returncode == 0, done.stderr
    assert "PROXY_PORT" in done.stdout


@requires_root
def test_init_applies_its_rules_with_only_its_image(tmp_path: Path) -> None:
    """The init program for real, in a pod namespace the test creates, with only its image."""
    backend = "nft" if iptables_available("nft") else "legacy"
    with pod_network() as net:
        done = run_init(net.pod, env={**init_env(backend), **image_env("init", tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
