"""`imds-proxy doctor` as an operator runs it: a real process against the fake Entra ID
(real TLS, a real exchange) and, for the last check, the running proxy's `/status`.

Each broken setup asserts its ✘ line and the fix under it, and that no token (the
service-account token, or any JWT) appears anywhere in the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ROOT, free_port, running_proxy


@dataclass
class Run:
    code: int
    out: str
    err: str

    def line(self, mark: str, name: str) -> str:
        """The check's line; the fix line under it is returned as its second line."""
        lines = self.out.splitlines()
        for i, text in enumerate(lines):
            if text.startswith(f"{mark} {name}: "):
                follow = lines[i + 1] if i + 1 < len(lines) else ""
                return text + ("\n" + follow if follow.startswith("  fix: ") else "")
        raise AssertionError(f"no {mark} {name} line in:\n{self.out}\n{self.err}")


def doctor(env: Mapping[str, str], *args: str, proxy_port: int | None = None) -> Run:
    port = free_port() if proxy_port is None else proxy_port  # nobody listens there
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", f"--proxy-port={port}", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def assert_no_token(run: Run, entra: FakeEntra, *extra: str) -> None:
    text = run.out + run.err
    assert "eyJ" not in text, "nothing JWT-shaped is printed"
    secrets = [Path(entra.info.token_file).read_text().strip(), *extra]
    for secret in secrets:
        for part in secret.split("."):
            assert part not in text


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "azure-identity-token"
    path.write_text(token)
    return str(path)


def test_a_working_setup_passes_every_check(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        run = doctor(fake_entra.env(), proxy_port=proxy.port)
    assert run.code == 0, run.out + run.err
    for name in ("settings", "service-account token", "authority", "exchange", "running proxy"):
        run.line("✔", name)
    assert "✘" not in run.out
    token_line = run.line("✔", "service-account token")
    assert "aud api://AzureADTokenExchange" in token_line and "s left" in token_line
    assert "last rotated" in token_line
    assert "Entra ID issued a token for https://management.azure.com/" in run.out
    assert_no_token(run, fake_entra)


def test_json_prints_one_document(fake_entra: FakeEntra, tmp_path: Path) -> None:
    run = doctor(fake_entra.env(), "--json", "--resource", "https://vault.azure.net")
    document = json.loads(run.out)
    assert run.code == 1 and document["ok"] is False  # no proxy is running
    names = [c["name"] for c in document["checks"]]
    assert names == ["settings", "service-account token", "authority", "exchange", "running proxy"]
    assert [c["ok"] for c in document["checks"]] == [True, True, True, True, False]
    assert document["checks"][-1]["fix"].startswith("run doctor in the proxy's container")
    assert_no_token(run, fake_entra)


def test_bad_usage_exits_2(fake_entra: FakeEntra) -> None:
    assert doctor(fake_entra.env(), "--no-such-flag").code == 2


def test_wrong_audience(fake_entra: FakeEntra, tmp_path: Path) -> None:
    minted = fake_entra.mint_assertion(audience="api://SomethingElse")
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, minted)}
    run = doctor(env)
    assert run.code == 1
    line = run.line("✘", "service-account token")
    assert "aud is api://SomethingElse, not api://AzureADTokenExchange" in line
    assert "fix: project the token with audience api://AzureADTokenExchange" in line
    run.line("-", "exchange")
    assert_no_token(run, fake_entra, minted)


def test_expired_token(fake_entra: FakeEntra, tmp_path: Path) -> None:
    minted = fake_entra.mint_assertion(issued_at=time.time() - 7200, lifetime=3600)
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, minted)}
    run = doctor(env)
    line = run.line("✘", "service-account token")
    assert "expired at" in line and "fix: kubelet has stopped rotating" in line
    assert_no_token(run, fake_entra, minted)


def test_missing_token_file(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "absent")}
    run = doctor(env)
    line = run.line("✘", "service-account token")
    assert "does not exist" in line
    assert "fix: the projected token is missing: label the pod azure.workload.identity/use" in line
    assert_no_token(run, fake_entra)


def test_missing_settings_skip_what_needs_them(fake_entra: FakeEntra) -> None:
    env = {k: v for k, v in fake_entra.env().items() if k != "AZURE_TENANT_ID"}
    run = doctor(env)
    assert "AZURE_TENANT_ID: is not set" in run.line("✘", "settings")
    assert "fix: the webhook injects AZURE_TENANT_ID" in run.line("✘", "settings")
    for name in ("service-account token", "authority", "exchange"):
        run.line("-", name)


def test_unknown_client_id(fake_entra: FakeEntra) -> None:
    stranger = str(uuid.uuid4())
    run = doctor({**fake_entra.env(), "AZURE_CLIENT_ID": stranger})
    line = run.line("✘", "exchange")
    assert "AADSTS700016" in line and stranger in line
    assert "fix: set the service account's azure.workload.identity/client-id" in line
    assert_no_token(run, fake_entra)


def test_no_matching_federated_credential(fake_entra: FakeEntra) -> None:
    fake_entra.set_federated_credentials([])
    run = doctor(fake_entra.env())
    line = run.line("✘", "exchange")
    info = fake_entra.info
    assert "AADSTS70021" in line and f"iss={info.service_account_issuer}" in line
    assert (
        "fix: create the federated credential with exactly these values: "
        "az identity federated-credential create --name <name> --identity-name <identity> "
        f"--resource-group <group> --issuer {info.service_account_issuer} "
        f"--subject {info.service_account_subject} --audience api://AzureADTokenExchange"
    ) in line
    assert_no_token(run, fake_entra)


def test_unreachable_authority(fake_entra: FakeEntra) -> None:
    port = free_port()
    run = doctor({**fake_entra.env(), "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{port}/"})
    line = run.line("✘", "authority")
    assert f"127.0.0.1:{port} is unreachable" in line
    assert f"fix: allow HTTPS egress to 127.0.0.1:{port} from the pod" in line
    run.line("-", "exchange")


def test_untrusted_authority(fake_entra: FakeEntra) -> None:
    env = {k: v for k, v in fake_entra.env().items() if k != "REQUESTS_CA_BUNDLE"}
    run = doctor(env)
    line = run.line("✘", "authority")
    assert "is not trusted over TLS" in line and "fix: set REQUESTS_CA_BUNDLE" in line


def test_the_running_proxys_failure_is_reported(fake_entra: FakeEntra, tmp_path: Path) -> None:
    fake_entra.set_federated_credentials([])
    with running_proxy(
        fake_entra.env(), tmp_path, ["--prefetch-resource=https://vault.azure.net"]
    ) as proxy:
        deadline = time.monotonic() + 10
        while "federated credential is not effective yet" not in proxy.log_text():
            assert time.monotonic() < deadline, proxy.log_text()
            time.sleep(0.1)
        run = doctor(fake_entra.env(), proxy_port=proxy.port)
    line = run.line("✘", "running proxy")
    assert "not ready: prefetched tokens not cached yet" in line
    assert "last failure federation_pending" in line
    assert "fix: create the federated credential" in line
    assert_no_token(run, fake_entra)


@pytest.mark.parametrize("argv", [["doctor", "--help"]])
def test_help_names_the_flags(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *argv], capture_output=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 0
    for flag in (b"--resource", b"--json", b"--proxy-port"):
        assert flag in done.stdout
