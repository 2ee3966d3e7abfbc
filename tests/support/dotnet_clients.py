""".NET clients, unmodified: Azure.Identity and MSAL.NET on a .NET runtime, all from PyPI.

There is no NuGet here, but PyPI carries every piece: the .NET Core 3.1 runtime
(`dotnetcore2`), the Azure.Identity 1.10.3 / Azure.Core / MSAL.NET 4.56.0 assemblies that
`azureml-dataprep` ships for its engine, and MSAL.NET 4.83.3 inside `semantic-link-sempy`.
Only the assemblies the clients need are taken out of those wheels, into ``CACHE`` (downloads
retried, once per machine); nothing fetched enters the repository.

tests/clients/dotnet/GetToken.cs, the app, is compiled by Debian's Mono C# compiler (`mcs`,
package mono-mcs) against the runtime's own assemblies, so no .NET SDK is needed. Each app
directory gets a `runtimeconfig.json` (the 3.1 framework, invariant globalization: no ICU
needed) and a `.deps.json` listing the app's assemblies with their real versions, written by
tests/clients/dotnet/DepsJson.cs: without it the host prefers the framework's older copies
(System.Diagnostics.DiagnosticSource) and Azure.Core fails to load.

Two app directories: `azure-identity` (Azure.Identity 1.10.3 with the MSAL.NET 4.56.0 it was
released with) and `msal-4.83` (the same, with MSAL.NET 4.83.3 in place of 4.56.0).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.sdk_clients import (
    CACHE,
    CLIENTS,
    BuildFailed,
    _once,
    _run,
    _with_retries,
    require,
)

DOTNET_PROJECT = CLIENTS / "dotnet"
RUNTIME_VERSION = "3.1.23"
DATAPREP = "azureml-dataprep==4.14.1"
SEMPY = "semantic-link-sempy==0.14.3"
WHEEL_PYTHON = "3.11"
"""The Python version pip downloads the wheels for: they only carry assemblies for us."""

AZURE_IDENTITY_ASSEMBLIES = (
    "Azure.Core",
    "Azure.Identity",
    "Microsoft.Bcl.AsyncInterfaces",
    "Microsoft.Identity.Client",
    "Microsoft.Identity.Client.Extensions.Msal",
    "Microsoft.IdentityModel.Abstractions",
    "System.Diagnostics.DiagnosticSource",
    "System.Memory.Data",
    "System.Runtime.CompilerServices.Unsafe",
    "System.Security.Cryptography.ProtectedData",
    "System.Text.Encodings.Web",
    "System.Text.Json",
)
"""Azure.Identity 1.10.3 and what it loads on .NET Core 3.1, from azureml-dataprep."""
ASSEMBLY_SETS = {
    "azure-identity": (DATAPREP, "azureml/dataprep/api/engineapi/bin/", AZURE_IDENTITY_ASSEMBLIES),
    "msal-4.83": (SEMPY, "sempy/lib/", ("Microsoft.Identity.Client",)),
}
APPS = {"azure-identity": ("azure-identity",), "msal-4.83": ("azure-identity", "msal-4.83")}
"""Each app directory: assembly sets laid over one another, later ones winning."""

FRAMEWORK_REFERENCES = (
    "System.Private.CoreLib",
    "System.Runtime",
    "System.Runtime.Extensions",
    "netstandard",
    "System.Console",
    "System.Threading.Tasks",
    "System.IO.FileSystem",
    "System.Diagnostics.FileVersionInfo",
)
RUNTIME_CONFIG = {
    "runtimeOptions": {
        "tfm": "netcoreapp3.1",
        "framework": {"name": "Microsoft.NETCore.App", "version": "3.1.0"},
        "configProperties": {"System.Globalization.Invariant": True},
    }
}


@dataclass(frozen=True, slots=True)
class DotnetClients:
    """The runtime's host and the built app directories."""

    host: Path
    apps: dict[str, Path]
    """App name to its GetToken.dll."""

    def argv(self, app: str, sdk: str, *args: str | None) -> list[str]:
        """``GetToken <sdk> [<resource> [<client id>]]`` in one app directory; sdk is
        `managed-identity`, `default` (DefaultAzureCredential), `msal` or `msal-source`."""
        return [str(self.host), str(self.apps[app]), sdk, *(a for a in args if a)]


def _fresh(directory: Path) -> Path:
    """An empty `<directory>.partial` to build in, renamed into place when complete."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args]


def _runtime() -> Path:
    """The .NET Core runtime, installed from its wheel under CACHE once per machine."""
    target = CACHE / f"dotnet-runtime-{RUNTIME_VERSION}"
    host = target / "dotnetcore2" / "bin" / "dotnet"
    if not host.exists():
        partial = _fresh(target)
        install = _pip("install", "--no-deps", "--target", str(partial))
        _with_retries([*install, f"dotnetcore2=={RUNTIME_VERSION}"], CACHE)
        partial.rename(target)
    return host


def _assemblies() -> Path:
    """The assembly sets, taken out of their wheels once per machine (the wheels, 70 MB,
    are not kept)."""
    target = CACHE / (
        "dotnet-assemblies-" + "-".join(w.replace("==", "-") for w in (DATAPREP, SEMPY))
    )
    if not target.exists():
        partial = _fresh(target)
        wheels = partial / "wheels"
        download = _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(wheels))
        download += ["--python-version", WHEEL_PYTHON]
        _with_retries([*download, DATAPREP, SEMPY], CACHE)
        for name, (requirement, folder, assemblies) in ASSEMBLY_SETS.items():
            project = requirement.split("==")[0].replace("-", "_")
            (wheel,) = wheels.glob(f"{project}-*.whl")
            (partial / name).mkdir()
            with zipfile.ZipFile(wheel) as archive:
                for assembly in assemblies:
                    (partial / name / f"{assembly}.dll").write_bytes(
                        archive.read(f"{folder}{assembly}.dll")
                    )
        shutil.rmtree(wheels)
        partial.rename(target)
    return target


def _compile(mcs: str, framework: Path, source: Path, output: Path, refs: Sequence[Path]) -> None:
    argv = [mcs, "-nologo", "-noconfig", "-nostdlib", "-target:exe", f"-out:{output}"]
    argv += [f"-r:{framework / name}.dll" for name in FRAMEWORK_REFERENCES]
    argv += [f"-r:{ref}" for ref in refs]
    if failure := _run([*argv, str(source)], output.parent, 120):
        raise BuildFailed(f"mcs {source.name}:\n{failure}")


def _build(host: Path, assemblies: Path) -> Path:
    """The app directories, built once per change of the sources or of this recipe (older
    builds removed)."""
    mcs = require("mcs")
    sources = [Path(__file__), *sorted(DOTNET_PROJECT.glob("*.cs"))]
    digest = hashlib.sha256(assemblies.name.encode())
    for source in sources:
        digest.update(source.read_bytes())
    target = CACHE / f"dotnet-build-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
    partial = _fresh(target)
    framework = host.parent / "shared" / "Microsoft.NETCore.App" / RUNTIME_VERSION
    config = json.dumps(RUNTIME_CONFIG)
    tools = partial / "tools"
    tools.mkdir()
    _compile(mcs, framework, DOTNET_PROJECT / "DepsJson.cs", tools / "DepsJson.dll", [])
    (tools / "DepsJson.runtimeconfig.json").write_text(config)
    base = assemblies / "azure-identity"
    references = [base / f"{name}.dll" for name in ("Azure.Core", "Azure.Identity")]
    references.append(base / "Microsoft.Identity.Client.dll")
    program = tools / "GetToken.dll"
    _compile(mcs, framework, DOTNET_PROJECT / "GetToken.cs", program, references)
    for app, layers in APPS.items():
        directory = partial / app
        directory.mkdir()
        for layer in layers:
            for assembly in (assemblies / layer).glob("*.dll"):
                shutil.copyfile(assembly, directory / assembly.name)
        shutil.copyfile(program, directory / program.name)
        (directory / "GetToken.runtimeconfig.json").write_text(config)
        deps = subprocess.run(
            [str(host), str(tools / "DepsJson.dll"), "GetToken", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if deps.returncode != 0:
            raise BuildFailed(f"DepsJson for {app}:\n{deps.stdout}{deps.stderr}")
        (directory / "GetToken.deps.json").write_text(deps.stdout)
    for old in CACHE.glob("dotnet-build-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.rename(target)
    return target


DOTNET_SDKS = {  # name: (app directory, GetToken's sdk argument, the version it must report)
    "ManagedIdentityCredential": ("azure-identity", "managed-identity", "1.10.3"),
    "DefaultAzureCredential": ("azure-identity", "default", "1.10.3"),
    "MSAL.NET-4.56": ("azure-identity", "msal", "4.56.0"),
    "MSAL.NET-4.83": ("msal-4.83", "msal", "4.83.3"),
}


@_once
def dotnet_clients() -> DotnetClients:
    """Runtime, assemblies and apps: downloaded and built on the first run, then reused."""
    require("mcs")  # before any download: without the compiler the tests skip
    CACHE.mkdir(parents=True, exist_ok=True)
    host = _runtime()
    built = _build(host, _assemblies())
    return DotnetClients(host, {app: built / app / "GetToken.dll" for app in APPS})
