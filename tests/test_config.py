"""Flags and environment into `Settings`; every bad value is one `ConfigError` naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import (
    DEFAULT_AUTHORITY_HOST,
    IDENTITIES_ENV,
    ConfigError,
    Settings,
    parse,
)
from proxy.identity_ids import IdentitySpec

REPO = Path(__file__).resolve().parent.parent
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
TOKEN_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
ENV = {"AZURE_TENANT_ID": TENANT, "AZURE_FEDERATED_TOKEN_FILE": TOKEN_FILE}


def load(*argv: str, **env: str) -> Settings:
    return parse(list(argv), {**ENV, **env})


def config_error(argv: list[str], environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as raised:
        parse(argv, environ)
    return str(raised.value)


def test_defaults() -> None:
    settings = load()
    assert settings.tenant_id == TENANT
    assert settings.federated_token_file == TOKEN_FILE
    assert settings.client_id is None
    assert settings.port == 8000
    assert settings.host == "127.0.0.1"
    assert settings.authority_host == DEFAULT_AUTHORITY_HOST == "https://login.microsoftonline.com/"
    assert settings.metrics_port == 14637  # off 9090, which apps use for their own metrics
    assert settings.drain_idle == 3.0
    assert settings.shutdown_grace <= 30  # the pod's default grace before SIGKILL
    assert settings.log_level == "info"
    assert settings.ca_bundle is None
    assert settings.prefetch_resources == ()
    assert settings.identities == ()


def test_the_webhooks_arguments_and_environment() -> None:
    settings = parse(
        ["--proxy-port=8001", "--log-level=debug"],
        {
            **ENV,
            "AZURE_CLIENT_ID": CLIENT,
            "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",
        },
    )
    assert settings.port == 8001
    assert settings.log_level == "debug"
    assert settings.client_id == CLIENT
    assert settings.authority_host == "https://login.microsoftonline.us/"


@pytest.mark.parametrize("name", ["AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_required_environment_missing_names_the_variable(name: str, value: str | None) -> None:
    environ = dict(ENV)
    if value is None:
        del environ[name]
    else:
        environ[name] = value
    assert config_error([], environ).startswith(f"{name}:")


@pytest.mark.parametrize("tenant", ["not a tenant", "-contoso", "contoso-", "a/b", "x" * 260])
def test_malformed_tenant_is_rejected(tenant: str) -> None:
    assert config_error([], {**ENV, "AZURE_TENANT_ID": tenant}).startswith("AZURE_TENANT_ID:")


@pytest.mark.parametrize("tenant", [TENANT, "contoso.onmicrosoft.com", "organizations"])
def test_tenant_guid_or_domain_is_accepted(tenant: str) -> None:
    assert load(AZURE_TENANT_ID=tenant).tenant_id == tenant


@pytest.mark.parametrize("client_id", ["my-app", "1234", CLIENT[:-1], CLIENT + "0", "{" + CLIENT])
def test_malformed_client_id_is_rejected(client_id: str) -> None:
    assert config_error([], {**ENV, "AZURE_CLIENT_ID": client_id}).startswith("AZURE_CLIENT_ID:")


def test_blank_client_id_means_none() -> None:
    assert load(AZURE_CLIENT_ID="  ").client_id is None


@pytest.mark.parametrize(
    "host",
    [
        "http://login.microsoftonline.com/",
        "http://127.0.0.1:8443/",
        "login.microsoftonline.com",
        "https://",
        "ftp://login.microsoftonline.com/",
    ],
)
def test_authority_host_must_be_https_with_a_host(host: str) -> None:
    message = config_error([], {**ENV, "AZURE_AUTHORITY_HOST": host})
    assert message.startswith("AZURE_AUTHORITY_HOST:")
    assert "https" in message


def test_default_authority_host() -> None:
    assert load().authority_host == "https://login.microsoftonline.com/"


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--proxy-port", "0"),
        ("--proxy-port", "65536"),
        ("--proxy-port", "-1"),
        ("--metrics-port", "65536"),
        ("--metrics-port", "-5"),
    ],
)
def test_ports_out_of_range_are_rejected(flag: str, value: str) -> None:
    assert config_error([f"{flag}={value}"], ENV).startswith(f"{flag}:")


def test_metrics_port_zero_turns_metrics_off() -> None:
    assert load("--metrics-port=0").metrics_port == 0


@pytest.mark.parametrize(
    "flag",
    [
        "--shutdown-grace",
        "--drain-idle",
        "--entra-timeout",
        "--rejected-ttl",
        "--propagation-window",
    ],
)
@pytest.mark.parametrize("value", ["-1", "-0.5", "nan"])
def test_negative_or_nan_durations_are_rejected(flag: str, value: str) -> None:
    assert config_error([f"{flag}={value}"], ENV) == f"{flag}: must not be negative"


def test_durations_are_read() -> None:
    settings = load(
        "--shutdown-grace=0", "--drain-idle=1.5", "--entra-timeout=2.5", "--rejected-ttl=30"
    )
    assert (
        settings.shutdown_grace,
        settings.drain_idle,
        settings.entra_timeout,
        settings.rejected_ttl,
    ) == (0.0, 1.5, 2.5, 30.0)
    assert load().propagation_window == 300.0
    assert load("--propagation-window=0").propagation_window == 0.0


def test_cache_size_must_be_positive() -> None:
    assert config_error(["--cache-max-entries=0"], ENV).startswith("--cache-max-entries:")


def test_prefetch_needs_a_client_id() -> None:
    message = config_error(["--prefetch-resource=https://vault.azure.net"], ENV)
    assert message.startswith("--prefetch-resource:")
    assert "AZURE_CLIENT_ID" in message


def test_prefetch_resources_are_collected() -> None:
    settings = load(
        "--prefetch-resource=https://vault.azure.net",
        "--prefetch-resource= https://storage.azure.com ",
        AZURE_CLIENT_ID=CLIENT,
    )
    assert settings.prefetch_resources == ("https://vault.azure.net", "https://storage.azure.com")


def test_empty_prefetch_resource_is_rejected() -> None:
    environ = {**ENV, "AZURE_CLIENT_ID": CLIENT}
    assert config_error(["--prefetch-resource= "], environ).startswith("--prefetch-resource:")


OTHER = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
THIRD = "3c3c3c3c-4d4d-4e4e-8f8f-a0a0a0a0a0a0"
OBJECT_ID = "0d0c0b0a-1111-4222-8333-944445555666"
RESOURCE_ID = (
    "/subscriptions/s/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/a"
)


def test_identities_from_flags_and_environment() -> None:
    settings = load(
        f"--identity={CLIENT},object_id={OBJECT_ID}",
        f"--identity= {OTHER} , resource_id={RESOURCE_ID}",
        **{IDENTITIES_ENV: f"  {THIRD};\n{CLIENT[:-1]}0,resource_id=/subscriptions/x "},
    )
    assert settings.identities == (
        IdentitySpec(CLIENT, object_id=OBJECT_ID),
        IdentitySpec(OTHER, resource_id=RESOURCE_ID),
        IdentitySpec(THIRD),
        IdentitySpec(CLIENT[:-1] + "0", resource_id="/subscriptions/x"),
    )


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("not-a-guid", "must start with a client id"),
        (f"{CLIENT},object_id=nope", "must be a GUID"),
        (f"{CLIENT},resource_id=rg/x", "must start with /subscriptions/"),
        (f"{CLIENT},tenant={TENANT}", "is not object_id=GUID"),
        (f"{CLIENT},object_id={OBJECT_ID},object_id={OBJECT_ID}", "each at most once"),
        (f"{CLIENT},object_id=", "is not object_id=GUID"),
    ],
)
def test_malformed_identity_specs_are_named(spec: str, complaint: str) -> None:
    message = config_error([f"--identity={spec}"], ENV)
    assert message.startswith("--identity:") and complaint in message
    message = config_error([], {**ENV, IDENTITIES_ENV: spec})
    assert message.startswith(f"{IDENTITIES_ENV}:") and complaint in message


def test_an_id_may_name_only_one_identity() -> None:
    twice = config_error(["--identity", CLIENT], {**ENV, IDENTITIES_ENV: CLIENT.upper()})
    assert "given twice" in twice
    shared = config_error(
        [f"--identity={CLIENT},resource_id={RESOURCE_ID}"],
        {**ENV, IDENTITIES_ENV: f"{OTHER},resource_id={RESOURCE_ID.lower()}"},
    )
    assert "more than one identity" in shared


@pytest.mark.parametrize(
    ("given", "level"),
    [("warn", "warning"), ("WARN", "warning"), ("warning", "warning"), ("DEBUG", "debug")],
)
def test_log_levels(given: str, level: str) -> None:
    assert load(f"--log-level={given}").log_level == level


def test_unknown_log_level_is_rejected() -> None:
    assert config_error(["--log-level=verbose"], ENV).startswith("--log-level:")


def test_ca_bundle_from_requests_ca_bundle() -> None:
    assert load(REQUESTS_CA_BUNDLE="/etc/ssl/ca.pem").ca_bundle == "/etc/ssl/ca.pem"


def test_ca_bundle_falls_back_to_curl_ca_bundle() -> None:
    assert load(CURL_CA_BUNDLE="/etc/ssl/curl.pem").ca_bundle == "/etc/ssl/curl.pem"
    settings = load(REQUESTS_CA_BUNDLE="/etc/ssl/ca.pem", CURL_CA_BUNDLE="/etc/ssl/curl.pem")
    assert settings.ca_bundle == "/etc/ssl/ca.pem"


def test_imds_upstream_is_normalised_and_validated() -> None:
    assert load("--imds-upstream=http://10.0.0.1:8080/").imds_upstream == "http://10.0.0.1:8080"
    message = config_error(["--imds-upstream=ftp://imds.invalid"], ENV)
    assert message.startswith("--imds-upstream:")


@pytest.mark.parametrize("off", ["none", "None", "off"])
def test_imds_upstream_none_turns_forwarding_off(off: str) -> None:
    assert load(f"--imds-upstream={off}").imds_upstream is None


def test_identity_header_from_the_environment_is_never_printed() -> None:
    settings = load(IDENTITY_HEADER=" 6f1c0d7e-pod-uid \n")
    assert settings.identity_header == "6f1c0d7e-pod-uid"
    assert settings.identity_header_file is None
    assert "6f1c0d7e" not in repr(settings)
    assert load(IDENTITY_HEADER="  ").identity_header is None
    assert load().identity_header is None


def test_identity_header_file_flag() -> None:
    settings = load("--identity-header-file", "/var/run/identity/header")
    assert settings.identity_header_file == "/var/run/identity/header"


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


# -- the real command line ---------------------------------------------------------------


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_with_a_missing_setting_exits_2_with_one_line() -> None:
    result = run_cli(
        {"AZURE_FEDERATED_TOKEN_FILE": TOKEN_FILE}, "--proxy-port=8000", "--log-level=info"
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "AZURE_TENANT_ID" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
