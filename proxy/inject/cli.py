"""`imds-proxy inject [FILE|-]`: read manifests, write them injected (or uninjected) to stdout.

Exit codes: 0 written; 1 a pod was refused (one line naming it and why; nothing written);
2 bad arguments or input that is not YAML.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy import cliparse, config
from proxy.identity_ids import is_client_id
from proxy.inject import additions, ledger, locate, takeback, yamlio

_BATCH = ("Job", "CronJob")


def build_parser() -> argparse.ArgumentParser:
    parser = cliparse.Parser(
        prog="imds-proxy inject",
        description="Add the IMDS proxy sidecar, the init container and the Workload ID "
        "identity to Kubernetes manifests (Pod, Deployment, StatefulSet, DaemonSet, "
        "ReplicaSet, Job, CronJob, List); other objects pass through untouched.",
    )
    add = parser.add_argument
    add("file", nargs="?", default="-", help="manifest file; - or nothing for stdin")
    add(
        "--mode",
        choices=additions.MODES,
        default=additions.DEFAULT_MODE,
        help="redirect: init container sends IMDS traffic to the proxy (default); endpoint: "
        "App Service variables on the app containers, no privileged init container; both",
    )
    add("--classic", action="store_true", help="a regular sidecar container (Kubernetes < 1.29)")
    add("--uninject", action="store_true", help="remove what inject added, and only that")
    add("--client-id", help="AZURE_CLIENT_ID; without it and --tenant-id the webhook adds it")
    add("--tenant-id", help="AZURE_TENANT_ID")
    add("--authority-host", default=config.DEFAULT_AUTHORITY_HOST, help="AZURE_AUTHORITY_HOST")
    add("--image", default=additions.DEFAULT_IMAGE, help="proxy image (default %(default)s)")
    add("--init-image", default=additions.DEFAULT_INIT_IMAGE, help="init image: %(default)s")
    add("--proxy-port", type=int, default=config.DEFAULT_PROXY_PORT, help="default %(default)s")
    add("--metrics-port", type=int, default=config.DEFAULT_METRICS_PORT, help="0: none")
    add("--log-level", default=config.DEFAULT_LOG_LEVEL, help="the proxy's --log-level")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.client_id and not is_client_id(args.client_id):
        parser.error(f"--client-id must be an application (client) id, a GUID: {args.client_id!r}")
    if bool(args.client_id) != bool(args.tenant_id):
        print(
            "imds-proxy inject: give both --client-id and --tenant-id, or neither", file=sys.stderr
        )
        return 1
    identity = (
        additions.Identity(args.client_id, args.tenant_id, args.authority_host)
        if args.client_id
        else None
    )
    sidecar = additions.Sidecar(
        mode=args.mode,
        classic=args.classic,
        image=args.image,
        init_image=args.init_image,
        proxy_port=args.proxy_port,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
    )
    source = "<stdin>" if args.file == "-" else args.file
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        text = raw.decode("utf-8")  # bytes, so that CRLF line ends are kept
        docs = yamlio.split(text)
    except (OSError, UnicodeDecodeError, yamlio.YamlError) as exc:
        print(f"imds-proxy inject: {source}: {exc}", file=sys.stderr)
        return 2
    changed: list[bool] = []
    number = 0  # counts documents with content, as kubectl does
    for doc in docs:
        number += doc.tree is not None
        doc_changed = False
        for found in locate.pod_templates(doc.tree, f"{source}: document {number}"):
            try:
                done = transform(found, identity, sidecar, args.uninject)
            except (additions.InjectError, ledger.LedgerError) as exc:
                print(f"imds-proxy inject: {found.where}: {exc}", file=sys.stderr)
                return 1
            doc_changed = doc_changed or done
        changed.append(doc_changed)
    sys.stdout.write(yamlio.join(docs, changed))
    return 0


def transform(
    found: locate.PodTemplate,
    identity: additions.Identity | None,
    sidecar: additions.Sidecar,
    uninject: bool,
) -> bool:
    """Inject (or take back) one pod; True if it changed. Notes go to stderr."""
    pod, where = found.pod, found.where
    if uninject:
        return takeback.take_back(pod)
    previous = ledger.recorded(pod)
    if previous is not None:  # already injected: a second run changes nothing
        if previous.mode != sidecar.mode:
            print(
                f"imds-proxy inject: {where}: already injected with --mode {previous.mode}; "
                "left as it is (--uninject first to change it)",
                file=sys.stderr,
            )
        return False
    if identity is None and not _labelled(pod):
        raise additions.InjectError(
            f"no --client-id/--tenant-id and the pod lacks the label {additions.USE_LABEL}: "
            '"true", so nothing would give the proxy an identity'
        )
    if additions.proxy_containers(pod):
        print(f"imds-proxy inject: {where}: already has a proxy; left as it is", file=sys.stderr)
        return False
    ledger.record(pod, additions.inject(pod, identity, sidecar))
    if sidecar.classic and found.kind in _BATCH:
        print(
            f"imds-proxy inject: {where}: a classic sidecar keeps a Job's pod running after "
            "the app exits; prefer the native sidecar (without --classic)",
            file=sys.stderr,
        )
    return True


def _labelled(pod: Any) -> bool:
    """Labelled for the Workload ID webhook, which then adds the identity itself."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return str(labels.get(additions.USE_LABEL)).lower() == "true"
