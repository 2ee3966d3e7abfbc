"""Who is calling: a token request's SDK family and version, read from its headers.

Each SDK names itself in `User-Agent` (the Azure SDKs' `azsdk-<lang>-<package>/<version>`,
legacy libraries' own tokens) or in MSAL's `x-client-SKU`/`x-client-Ver`; bare HTTP
runtimes only name the runtime. The family says whether that version could fetch its
tokens with workload identity natively (the federated token file, `WorkloadIdentityCredential`),
and if not, what to do about it. Families are a fixed set (and one per other language, 16
letters at most, all under one metric label), versions are bounded in length and character
set: both are safe as log fields, and the family's label as a metric label.

The minimum versions are the first stable releases that ship `WorkloadIdentityCredential`
(Microsoft's published minimums, checked against each package's release history; C++ 1.6.0
from its changelog; Rust 0.22.0, the first supported release of the crate as Microsoft ships
it now, which has WorkloadIdentityCredential). The advice names each family's own credential.
An Azure Identity library of another language (`azsdk-<language>-identity/<version>`) is
named by its language and version, with advice to find its first release with workload
identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.requestlog import json_fields

MAX_USER_AGENT_READ = 512
"""SDK tokens stand near the start; a 10 KB agent is not searched to its end."""
DIRECT = (
    "can use workload identity directly: remove the sidecar once its pods are redeployed without it"
)


@dataclass(frozen=True, slots=True)
class Family:
    """A kind of caller: an SDK, an MSAL, a legacy library, a bare runtime."""

    name: str
    """Metric label and log value, e.g. `azure-identity-python`."""
    title: str
    """What people call it, e.g. `azure-identity (Python)`."""
    kind: str
    """`sdk` (can be upgraded), `msal` and `legacy` (must be replaced), `runtime`, `unknown`."""
    minimum: str | None = None
    """For an SDK: the first version with workload identity."""
    instead: str | None = None
    """For MSAL and legacy libraries: what replaces them; for runtimes: what it may be."""
    credential: str | None = None
    """For an SDK: its own workload-identity credential, as the upgrade advice names it."""
    label: str | None = None
    """The metric label when it is not `name` (one label for every unknown language)."""

    @property
    def metric_label(self) -> str:
        return self.label or self.name


_WI_OR_DEFAULT = "WorkloadIdentityCredential or DefaultAzureCredential"


def _sdk(name: str, title: str, minimum: str, credential: str = _WI_OR_DEFAULT) -> Family:
    return Family(name, title, "sdk", minimum=minimum, credential=credential)


PY_SDK = _sdk("azure-identity-python", "azure-identity (Python)", "1.13.0")
NET_SDK = _sdk("azure-identity-dotnet", "Azure.Identity (.NET)", "1.9.0")
JAVA_SDK = _sdk("azure-identity-java", "azure-identity (Java)", "1.9.0")
GO_SDK = _sdk(
    "azidentity-go",
    "azidentity (Go)",
    "1.3.0",
    "NewWorkloadIdentityCredential or NewDefaultAzureCredential",
)
JS_SDK = _sdk("azure-identity-js", "@azure/identity (JavaScript)", "3.2.0")
CPP_SDK = _sdk("azure-identity-cpp", "azure-identity (C++)", "1.6.0")
RUST_SDK = _sdk(
    "azure-identity-rust", "azure_identity (Rust)", "0.22.0", "WorkloadIdentityCredential"
)
OTHER_SDK_LABEL = "azure-identity-other"
"""Every `azsdk-<language>-identity` whose language is not in the table: one metric label."""

_PY_WI = "azure-identity ≥ 1.13.0 (WorkloadIdentityCredential or DefaultAzureCredential)"
_NET_WI = "Azure.Identity ≥ 1.9.0 (WorkloadIdentityCredential or DefaultAzureCredential)"
_JAVA_WI = "azure-identity ≥ 1.9.0 (WorkloadIdentityCredential or DefaultAzureCredential)"
_GO_WI = "azidentity ≥ 1.3.0 (NewWorkloadIdentityCredential or NewDefaultAzureCredential)"
_JS_WI = "@azure/identity ≥ 3.2.0 (WorkloadIdentityCredential or DefaultAzureCredential)"
_MSAL_NOTE = ", or a confidential client whose client assertion is the federated token file"


def _msal(lang: str, title: str, instead: str) -> Family:
    return Family(f"msal-{lang}", title, "msal", instead=instead + _MSAL_NOTE)


MSAL_PYTHON = _msal("python", "MSAL Python (ManagedIdentityClient)", _PY_WI)
MSAL_DOTNET = _msal("dotnet", "MSAL.NET (managed identity)", _NET_WI)
MSAL_JAVA = _msal("java", "MSAL4J (ManagedIdentityApplication)", _JAVA_WI)
MSAL_GO = _msal("go", "MSAL Go (managedidentity)", _GO_WI)
MSAL_JS = _msal("js", "MSAL Node (ManagedIdentityApplication)", _JS_WI)

ADAL_GO = Family("go-autorest-adal", "go-autorest/adal", "legacy", instead=_GO_WI)
MSRESTAZURE = Family("msrestazure", "msrestazure (MSIAuthentication)", "legacy", instead=_PY_WI)
AZURE_CLI = Family(
    "azure-cli",
    "Azure CLI (az login --identity)",
    "legacy",
    instead="az login --service-principal --federated-token (the federated token file)",
)
RUBY = Family(
    "ms-rest-azure-ruby",
    "ms_rest_azure (Ruby)",
    "legacy",
    instead="a client-credentials request to Entra ID with the federated token file as "
    "client assertion (no Azure SDK for Ruby supports workload identity)",
)
NODEAUTH = Family("ms-rest-nodeauth", "@azure/ms-rest-nodeauth", "legacy", instead=_JS_WI)

JAVA_RUNTIME = Family(
    "java-runtime",
    "Java runtime (Java/…)",
    "runtime",
    instead="azure-client-authentication (MSICredentials), msal4j used directly, or an "
    "old azure-identity: replace with " + _JAVA_WI,
)
PYTHON_REQUESTS = Family(
    "python-requests",
    "python-requests",
    "runtime",
    instead="code calling IMDS with requests: use " + _PY_WI,
)
PYTHON_URLLIB = Family(
    "python-urllib",
    "Python urllib",
    "runtime",
    instead="code calling IMDS with urllib: use " + _PY_WI,
)
GO_RUNTIME = Family(
    "go-http-client",
    "Go net/http (Go-http-client/…)",
    "runtime",
    instead="code calling IMDS with net/http: use " + _GO_WI,
)
NODE_RUNTIME = Family(
    "node-http",
    "Node.js HTTP client (node-fetch, axios, undici)",
    "runtime",
    instead="code calling IMDS directly: use " + _JS_WI,
)
CURL = Family(
    "curl",
    "curl",
    "runtime",
    instead="a script calling IMDS with curl: use az login --service-principal "
    "--federated-token, or an Azure SDK",
)
NO_USER_AGENT = Family(
    "no-user-agent",
    "no User-Agent",
    "runtime",
    instead="Microsoft.Azure.Services.AppAuthentication (.NET, legacy) and other .NET code "
    "calling IMDS with a bare HttpClient send none: replace it with " + _NET_WI,
)
UNKNOWN = Family(
    "unknown",
    "unknown",
    "unknown",
    instead="its User-Agent names no known SDK; look for the IMDS call in the pod's code",
)
OTHER = Family("other", "other (beyond the limit of distinct callers kept)", "unknown")

FAMILIES = (
    PY_SDK, NET_SDK, JAVA_SDK, GO_SDK, JS_SDK, CPP_SDK, RUST_SDK,
    MSAL_PYTHON, MSAL_DOTNET, MSAL_JAVA, MSAL_GO, MSAL_JS,
    ADAL_GO, MSRESTAZURE, AZURE_CLI, RUBY, NODEAUTH,
    JAVA_RUNTIME, PYTHON_REQUESTS, PYTHON_URLLIB, GO_RUNTIME, NODE_RUNTIME, CURL,
    NO_USER_AGENT, UNKNOWN, OTHER,
)  # fmt: skip

_VERSION = r"v?([0-9][0-9A-Za-z.\-]{0,31})"
"""A version as callers write it; build metadata (`+sha`) is left out."""
_USER_AGENT_RULES: tuple[tuple[re.Pattern[str], Family], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        # Azure SDKs: `[<application id> ]azsdk-<lang>-<package>/<version> (<platform>)`
        (r"\bazsdk-python-identity/" + _VERSION, PY_SDK),
        (r"\bazsdk-net-Identity/" + _VERSION, NET_SDK),
        (r"\bazsdk-java-azure-identity/" + _VERSION, JAVA_SDK),
        (r"\bazsdk-go-azidentity/" + _VERSION, GO_SDK),
        (r"\bazsdk-js-identity/" + _VERSION, JS_SDK),
        (r"\bazsdk-cpp-identity/" + _VERSION, CPP_SDK),
        (r"\bazsdk-rust-identity/" + _VERSION, RUST_SDK),
        # Legacy libraries: their own tokens
        (r"\bAZURECLI/" + _VERSION, AZURE_CLI),
        (r"\bmsrest_azure/" + _VERSION, MSRESTAZURE),
        (r"\bAzure-SDK-For-Ruby/ms_rest_azure/" + _VERSION, RUBY),
        (r"\bgo-autorest/adal/()", ADAL_GO),  # adal's token is fixed: its release is unknown
    )
)
_ANY_LANGUAGE_SDK = re.compile(r"\bazsdk-([a-z]{1,16})-identity/" + _VERSION)
"""Another language's Azure Identity library, tried after the known ones."""
_MSAL_SKUS = (
    ("msal.python", MSAL_PYTHON),
    ("msal.java", MSAL_JAVA),
    ("msal.go", MSAL_GO),
    ("msal.js", MSAL_JS),  # msal.js.node
    ("msal.", MSAL_DOTNET),  # MSAL.NetCore, MSAL.Desktop, MSAL.CoreCLR, MSAL.Xamarin.*
)
_RUNTIME_RULES: tuple[tuple[re.Pattern[str], Family], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"^Java/" + _VERSION, JAVA_RUNTIME),
        (r"^python-requests/" + _VERSION, PYTHON_REQUESTS),
        (r"^Python-urllib/" + _VERSION, PYTHON_URLLIB),
        (r"^Go-http-client/" + _VERSION, GO_RUNTIME),
        (r"^(?:node-fetch|axios|undici)/" + _VERSION, NODE_RUNTIME),
        (r"^(?:node|undici)()$", NODE_RUNTIME),
        (r"^curl/" + _VERSION, CURL),
    )
)
_NODEAUTH_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
"""ms-rest-nodeauth sends this Content-Type on its GET, with node-fetch's (or axios') agent."""
_SKU_VERSION = re.compile(_VERSION)
_MSAL_DOTNET_ACCEPT = "application/json"
"""MSAL.NET before 4.84 sends no User-Agent and no x-client-SKU on its managed-identity
requests, but `Accept: application/json` (seen from 4.56.0 and 4.83.3); AppAuthentication
sends neither."""


@dataclass(frozen=True, slots=True, eq=False)
class Caller:
    """One family at one version, and what that means for the migration."""

    family: Family
    version: str
    supports: str
    """`yes`, `no` or `unknown`: whether this version can use workload identity natively."""
    json: str
    """Its request-line fields (`client`, `client_version`), rendered once: a caller is its
    own `requestlog.LogFields`."""
    key: tuple[str, str]
    """(family name, version): equal callers share it, whichever object describes them."""

    def as_dict(self) -> dict[str, object]:
        return _fields(self.family, self.version)

    @property
    def advice_kind(self) -> str:
        """`direct`, `upgrade`, `replace` or `identify`."""
        kind = self.family.kind
        if self.supports == "yes":
            return "direct"
        if kind == "sdk":
            return "upgrade"
        if kind in ("msal", "legacy"):
            return "replace"
        return "identify"

    @property
    def advice(self) -> str:
        family, kind = self.family, self.advice_kind
        if kind == "direct":
            return f"{DIRECT} ({family.credential}, since {family.minimum})"
        if kind == "upgrade" and family.minimum is None:
            return family.instead or ""
        if kind == "upgrade":
            return f"upgrade to ≥ {family.minimum} ({family.credential}), then remove the sidecar"
        if kind == "replace":
            return f"replace library {family.title} with {family.instead}"
        if family is OTHER:
            return "too many distinct callers to keep apart: see the request log's client field"
        return f"cannot tell the library from its headers: {family.instead}"


def caller(family: Family, version: str = "") -> Caller:
    """The caller for `family` at `version`, with its verdict and log fields."""
    if family.kind == "sdk" and version and family.minimum:
        supports = "yes" if at_least(version, family.minimum) else "no"
    elif family.kind == "sdk":
        supports = "unknown"
    elif family.kind in ("msal", "legacy"):
        supports = "no"
    else:
        supports = "unknown"
    rendered = json_fields(_fields(family, version))
    return Caller(family, version, supports, rendered, (family.name, version))


def _fields(family: Family, version: str) -> dict[str, object]:
    return {"client": family.name, "client_version": version or None}


def at_least(version: str, minimum: str | None) -> bool:
    """Whether `version` is `minimum` or later; a pre-release of `minimum` is not."""
    if minimum is None:
        return False
    have, have_rest = _numbers(version)
    want, _ = _numbers(minimum)
    if have is None or want is None:
        return False
    if have != want:
        return have > want
    return not have_rest or have_rest[0] in ".+"  # 1.9.0-beta.2, 1.13.0b1: pre-releases


_NUMBERS = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)$")


def _numbers(version: str) -> tuple[tuple[int, int, int] | None, str]:
    match = _NUMBERS.match(version)
    if match is None:
        return None, ""
    major, minor, patch, rest = match.groups()
    return (int(major), int(minor or 0), int(patch or 0)), rest


def classify_agent(user_agent: str | None) -> Caller | None:
    """The caller when its User-Agent alone says it (an Azure SDK, a legacy library)."""
    agent = (user_agent or "")[:MAX_USER_AGENT_READ]
    for pattern, family in _USER_AGENT_RULES:
        match = pattern.search(agent)
        if match:
            return caller(family, match.group(1))
    match = _ANY_LANGUAGE_SDK.search(agent)
    if match:
        return caller(other_language_sdk(match.group(1)), match.group(2))
    return None


def other_language_sdk(language: str) -> Family:
    """`azsdk-<language>-identity` for a language not in the table: named by its language
    (16 letters at most, so safe in logs and the report), counted under one metric label."""
    return Family(
        f"azure-identity-{language}",
        f"Azure Identity ({language})",
        "sdk",
        instead=f"an Azure Identity library for {language} not known here: upgrade it to a "
        "release with WorkloadIdentityCredential (see its changelog), then remove the sidecar",
        label=OTHER_SDK_LABEL,
    )


def classify(
    user_agent: str | None,
    sku: str | None = None,
    sku_version: str | None = None,
    content_type: str | None = None,
    accept: str | None = None,
) -> Caller:
    """The caller these header values describe (pure: the same values, the same caller)."""
    known = classify_agent(user_agent)
    if known is not None:
        return known
    agent = (user_agent or "")[:MAX_USER_AGENT_READ]
    if sku:
        lowered = sku.lower()
        for prefix, family in _MSAL_SKUS:
            if lowered.startswith(prefix):
                version = _SKU_VERSION.match(sku_version or "")
                return caller(family, version.group(1) if version else "")
    nodeauth = content_type is not None and content_type.lower() == _NODEAUTH_CONTENT_TYPE
    if nodeauth and agent.startswith(("node-fetch/", "axios/")):
        return caller(NODEAUTH)
    if not agent.strip():
        msal_dotnet = accept is not None and accept.strip().lower() == _MSAL_DOTNET_ACCEPT
        return caller(MSAL_DOTNET if msal_dotnet else NO_USER_AGENT)
    for pattern, family in _RUNTIME_RULES:
        match = pattern.match(agent)
        if match:
            return caller(family, match.group(1))
    return caller(UNKNOWN)
