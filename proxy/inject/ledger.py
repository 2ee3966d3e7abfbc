"""What inject added to one pod, kept in an annotation on that pod so it can be taken back.

Names alone cannot tell an addition from the same thing written by hand (a user's own
`AZURE_CLIENT_ID`, an `env:` list that was already there), so every item added and every
key created is listed, by path, in `ANNOTATION`. `--uninject` removes those and nothing
else (`proxy.inject.takeback`); a pod that carries the annotation is already injected and is
left alone. Plain mappings and lists: the webhook uses it on JSON too.

Paths are relative to the pod (the object with `metadata` and `spec`): dot-separated keys,
`key[name]` for the item of a list with that `name` (container names have neither `.` nor `[`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ANNOTATION = "imds-proxy.azure.workload.identity/injected"


class LedgerError(ValueError):
    """The annotation is not one inject wrote (edited by hand?); the pod is not touched."""


@dataclass
class Ledger:
    mode: str
    added: dict[str, list[str]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def encode(self) -> str:
        body = {"mode": self.mode, "added": self.added, "created": self.created}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Ledger:
        body = json.loads(text)
        return cls(str(body["mode"]), dict(body["added"]), list(body["created"]))

    def ensure(self, pod: Any, path: str, empty: type[dict[str, Any] | list[Any]]) -> Any:
        """The mapping or list at `path`, created (and recorded) if missing."""
        parent_path, _, key = path.rpartition(".")
        parent = resolve(pod, parent_path)
        if parent.get(key) is None:
            parent[key] = empty()
            self.created.append(path)
        return parent[key]

    def add(self, pod: Any, list_path: str, item: Any, first: bool = False) -> None:
        items = self.ensure(pod, list_path, list)
        if first:
            items.insert(0, item)
        else:
            items.append(item)
        self.added.setdefault(list_path, []).append(str(item["name"]))


def resolve(pod: Any, path: str) -> Any:
    node = pod
    for segment in path.split(".") if path else []:
        key, _, name = segment.partition("[")
        node = node[key]
        if name:
            node = next(item for item in node if item.get("name") == name[:-1])
    return node


def recorded(pod: Any) -> Ledger | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ANNOTATION)
    if text is None:
        return None
    try:
        return Ledger.decode(str(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"the annotation {ANNOTATION} cannot be read ({exc})") from exc


def record(pod: Any, ledger: Ledger) -> None:
    ledger.ensure(pod, "metadata", dict)
    annotations = ledger.ensure(pod, "metadata.annotations", dict)
    annotations[ANNOTATION] = ledger.encode()
