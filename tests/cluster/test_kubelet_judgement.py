"""The kubelet's own judgement of the injected pod while Entra ID hangs.

An Entra ID that does not answer is Entra's outage, not the pod's: the proxy still serves
cached tokens and answers the rest with a 5xx quickly, so the kubelet must keep the pod Ready
(an unready pod is taken out of its Services, and every replica would be at once). The
readiness probe that inject writes runs every 30 s with a 10 s timeout and three failures
take the pod out, so the pod is watched for longer than that while 40 callers keep asking
for new resources from a hanging Entra ID.
"""

from __future__ import annotations

import json
import subprocess
import time

from tests.cluster.kube import Kube
from tests.cluster.workload import APP, ENTRA_DIR, ENTRA_PORT, FAKE_ENTRA, Workload, deploy

WATCH_SECONDS = 110
"""Three failed readiness probes (period 30 s, timeout 10 s) take the pod out at ~90-100 s."""
CALLERS = 40
"""Concurrent callers asking for resources never asked before: each needs an exchange."""
HANG = (
    "import json, ssl, urllib.request\n"
    f"ctx = ssl.create_default_context(cafile='{ENTRA_DIR}/pki/ca.pem')\n"
    f"req = urllib.request.Request('https://127.0.0.1:{ENTRA_PORT}/_control/behaviour',\n"
    "    data=json.dumps({'delay': 300}).encode(), method='POST',\n"
    "    headers={'Content-Type': 'application/json'})\n"
    "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n"
)
LOAD = f"""
import collections, threading, time, urllib.error, urllib.request
answers = collections.Counter()
deadline = time.monotonic() + {WATCH_SECONDS}
def ask(n):
    i = 0
    while time.monotonic() < deadline:
        i += 1
        url = ('http://169.254.169.254/metadata/identity/oauth2/token'
               f'?api-version=2018-02-01&resource=https://hang-{{n}}-{{i}}.example/')
        req = urllib.request.Request(url, headers={{'Metadata': 'true'}})
        try:
            answers[urllib.request.urlopen(req, timeout=15).status] += 1
        except urllib.error.HTTPError as e:
            answers[e.code] += 1
        except OSError as e:
            answers[type(e).__name__] += 1
            time.sleep(1)
threads = [threading.Thread(target=ask, args=(n,)) for n in range({CALLERS})]
[t.start() for t in threads]
[t.join({WATCH_SECONDS} + 30) for t in threads]
print(dict(answers))
"""


def ready(kube: Kube, namespace: str, pod: str) -> bool:
    conditions = kube.json("-n", namespace, "get", "pod", pod)["status"]["conditions"]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_the_pod_stays_ready_while_entra_hangs(kube: Kube, namespace: str) -> None:
    pod = deploy(kube, Workload(namespace, kube.jwks()))
    hang = kube.exec(namespace, pod, FAKE_ENTRA, ["python3", "-c", HANG], timeout=30)
    assert hang.returncode == 0 and json.loads(hang.stdout)["delay"] == 300, hang.stderr
    load = subprocess.Popen(
        kube.command("-n", namespace, "exec", pod, "-c", APP, "--", "python3", "-c", LOAD),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        unready: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < WATCH_SECONDS:
            if not ready(kube, namespace, pod):
                unready.append(round(time.monotonic() - started, 1))
            time.sleep(1)
    finally:
        try:
            answers, _ = load.communicate(timeout=WATCH_SECONDS + 60)
        except subprocess.TimeoutExpired:
            load.kill()
            answers, _ = load.communicate(timeout=10)
    assert not unready, (
        f"the pod was not Ready at {unready} s after Entra ID began hanging; the app's "
        f"requests got:\n{answers}\n{kube.evidence(namespace, pod)}"
    )
