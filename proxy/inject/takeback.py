"""`--uninject`: remove what a pod's ledger lists, and nothing else, keeping the comments.

Apart from the ledger because it works on ruamel.yaml's round-trip nodes (`comments`), which
only the manifest front end has.
"""

from __future__ import annotations

from typing import Any

from proxy.inject import comments
from proxy.inject.ledger import ANNOTATION, recorded, resolve


def take_back(pod: Any) -> bool:
    """Remove what the pod's ledger lists; False if it has none (nothing was injected)."""
    ledger = recorded(pod)
    if ledger is None:
        return False
    orphans: dict[int, str] = {}
    # Deepest lists first: a container's env goes before the container itself.
    for list_path in sorted(ledger.added, key=lambda p: -p.count(".")):
        try:
            items = resolve(pod, list_path)
        except (KeyError, StopIteration):
            continue  # removed by hand since
        for name in ledger.added[list_path]:
            found = [i for i, item in enumerate(items) if item.get("name") == name]
            if found:
                comments.remove(items, found[0], orphans)
    comments.remove(pod["metadata"]["annotations"], ANNOTATION, orphans)
    for path in reversed(ledger.created):
        parent_path, _, key = path.rpartition(".")
        try:
            parent = resolve(pod, parent_path)
        except (KeyError, StopIteration):
            continue
        if key in parent and not parent[key]:
            comments.remove(parent, key, orphans)
    return True
