"""The real pod, end to end, in network namespaces the test creates (root only).

Inside the pod namespace, as a mutated pod would have it: the init program's redirect, the
real proxy (``python -m proxy --proxy-port 8000``, uid/gid 1501, the webhook's environment),
and a fake Entra ID on the pod's loopback. Next door, the imds namespace owns the metadata
address with a fake IMDS. Unmodified clients in the pod, with no endpoint override, call the
metadata address itself and must get a token that the fake Entra ID issued; other metadata
paths must come back from the fake IMDS through the proxy (the proxy's uid is exempt from the
redirect, so its forwarding does not loop back to itself).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

import pytest

from init import cli
from tests.support.identity_paths import QUERY, REFUSED_SPELLINGS, TOKEN_SPELLINGS, judged_by_proxy
from tests.support.jwt_claims import claims
from tests.support.netns import (
    METADATA_IP,
    http_get,
    init_env,
    requires_root,
    run_init,
)
from tests.support.pod import APP_UID, Pod

pytestmark = [requires_root, pytest.mark.other_user]

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
TOKEN_URL = f"http://{METADATA_IP}/metadata/identity/oauth2/token?api-version=2018-02-01"
INSTANCE_URL = f"http://{METADATA_IP}/metadata/instance?api-version=2021-02-01"
# An app container's environment: nothing that points a client anywhere but the metadata
# address (no AZURE_*, no *_PROXY, no IDENTITY_ENDPOINT).
APP_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}

_AZURE_IDENTITY = r"""
import json, sys
from azure.identity import ManagedIdentityCredential
token = ManagedIdentityCredential().get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": token.token, "expires_on": token.expires_on}))
"""


def assert_issued(pod: Pod, token: str, audience: str) -> None:
    got = claims(token)
    assert got["aud"] == audience
    assert got["appid"] == pod.entra.info.client_id
    assert got["tid"] == pod.entra.info.tenant_id


def test_the_redirect_is_installed(pod: Pod) -> None:
    done = run_init(pod.net.pod, "--check", env=init_env(pod.backend))
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr


def test_curl_gets_a_token_from_the_metadata_address(pod: Pod) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed (Debian package curl)")
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "15", "-H", "Metadata: true"]
    done = pod.net.pod.run(
        [*argv, f"{TOKEN_URL}&resource={ARM}"], user=APP_UID, env=APP_ENV, timeout=30
    )
    body: dict[str, Any] = json.loads(done.stdout)
    assert body["token_type"] == "Bearer"
    assert body["resource"] == ARM
    assert int(body["expires_in"]) > 0
    assert_issued(pod, body["access_token"], ARM)


def test_plain_python_http_gets_a_token_from_the_metadata_address(pod: Pod) -> None:
    body = http_get(
        pod.net.pod,
        f"{TOKEN_URL}&resource={VAULT}",
        user=APP_UID,
        headers={"Metadata": "true"},
        timeout=15,
    )
    assert "error" not in body, body
    assert_issued(pod, body["access_token"], VAULT)


def test_azure_identity_managed_identity_credential_without_override(pod: Pod) -> None:
    done = pod.net.pod.run(
        [sys.executable, "-c", _AZURE_IDENTITY, ARM],
        user=APP_UID,
        env=APP_ENV,
        timeout=60,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert_issued(pod, result["token"], ARM)
    assert result["expires_on"] > 0


def forwarded(pod: Pod) -> list[dict[str, Any]]:
    """The proxy's log lines for metadata requests it passed on to the IMDS."""
    lines = pod.proxy_log.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("event") == "forwarded metadata request"]


def test_other_metadata_is_forwarded_to_the_real_imds(pod: Pod) -> None:
    before = len(forwarded(pod))
    body = http_get(
        pod.net.pod, INSTANCE_URL, user=APP_UID, headers={"Metadata": "true"}, timeout=15
    )
    assert "error" not in body, body
    # It went through the proxy (the app's connection was redirected); request lines are
    # flushed within a fraction of a second.
    deadline = time.monotonic() + 3
    while len(forwarded(pod)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(forwarded(pod)) == before + 1, pod.proxy_log.read_text()
    # The fake IMDS answered on port 80: the proxy's own request (uid 1501) was not
    # redirected back to the proxy.
    assert body["served_by"] == "imds"
    assert body["port"] == 80
    assert body["compute"] == {"name": "fake-imds-vm", "location": "netnsland"}


# Send each raw request target (argv[1], JSON list) to the metadata address with a socket, so
# nothing normalises it; print [status, content type, body] for each.
_RAW_CLIENT = r"""
import json, socket, sys
results = []
for target in json.loads(sys.argv[1]):
    with socket.create_connection((sys.argv[2], 80), timeout=15) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {sys.argv[2]}\r\nMetadata: true\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctypes = [l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("content-type:")]
    ctype = ctypes[0] if ctypes else ""
    results.append([int(lines[0].split(" ", 2)[1]), ctype, body.decode("latin-1")])
print(json.dumps(results))
"""


def test_no_spelling_of_an_identity_path_reaches_the_node_imds(pod: Pod) -> None:
    """Through the init program's real redirect, with the proxy as uid 1501: every spelling
    is answered by the proxy, none by the node's IMDS next door."""
    targets = [t + QUERY for t in TOKEN_SPELLINGS + REFUSED_SPELLINGS]
    before = len(forwarded(pod))
    done = pod.net.pod.run(
        [sys.executable, "-c", _RAW_CLIENT, json.dumps(targets), METADATA_IP],
        user=APP_UID,
        env=APP_ENV,
        timeout=120,
    )
    results = json.loads(done.stdout)
    wrong = []
    for target, (status, ctype, body) in zip(targets, results, strict=True):
        answer = judged_by_proxy(status, {"content-type": ctype}, body.encode())
        assert "served_by" not in answer, (target, answer)
        means_token = target[: -len(QUERY)] in TOKEN_SPELLINGS
        if (status == 200) != means_token:
            wrong.append((target, status, answer.get("error")))
    assert wrong == []
    time.sleep(0.5)  # request lines reach the log within a fraction of a second
    assert len(forwarded(pod)) == before
