"""Where each kind keeps its pod: the object that holds `metadata` and `spec` of a pod."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

TEMPLATE_PATH: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class PodTemplate(NamedTuple):
    kind: str
    where: str
    """For messages: the source, the document's number, kind and name."""
    pod: Any


def pod_templates(obj: Any, where: str) -> Iterator[PodTemplate]:
    """Each pod in `obj`, a `kind: List` searched item by item.

    Other kinds, and objects without a pod spec, yield nothing: they pass through untouched.
    """
    if not isinstance(obj, dict):
        return
    kind = obj.get("kind")
    if kind == "List":
        for index, item in enumerate(obj.get("items") or []):
            yield from pod_templates(item, f"{where} items[{index}]")
        return
    path = TEMPLATE_PATH.get(str(kind))
    if path is None:
        return
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and isinstance(node.get("spec"), dict):
        name = (obj.get("metadata") or {}).get("name", "?")
        yield PodTemplate(str(kind), f"{where} ({kind}/{name})", node)
