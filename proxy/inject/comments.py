"""Keep the full-line comments that follow a removed item, as a round-trip parser hangs them.

ruamel.yaml attaches the comment lines after a node to the last scalar before them. Once
inject has appended an item at the end of a list (or a key at the end of a mapping), a
comment that used to follow the list is read back as the tail of that item, and removing
the item would remove the comment with it. `remove` moves such lines to the new tail.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken


def remove(parent: Any, key: Any, orphans: dict[int, str]) -> None:
    """Delete `parent[key]`; comments after it go to the new tail of `parent`.

    When `parent` is left empty they wait in `orphans` (by id) until it is removed in turn.
    """
    last = _last_key(parent)
    text = orphans.pop(id(parent[key]), "")
    if key == last:
        text = _detach(parent, key) + text
    del parent[key]
    if text and not _attach(parent, text):
        orphans[id(parent)] = text + orphans.get(id(parent), "")


def _is_block(node: Any) -> bool:
    return isinstance(node, CommentedMap | CommentedSeq) and bool(node) and not node.fa.flow_style()


def _last_key(node: Any) -> Any:
    if isinstance(node, CommentedSeq):
        return len(node) - 1 if node else None
    return next(reversed(node), None) if isinstance(node, CommentedMap) else None


def _slot(node: Any) -> int:
    return 0 if isinstance(node, CommentedSeq) else 2


def _detach(parent: Any, key: Any) -> str:
    """The comment lines after `parent[key]`, taken out of the tree."""
    value = parent[key]
    text = ""
    if _is_block(value):
        text = _detach(value, _last_key(value))
    else:
        slot = parent.ca.items.get(key)
        token = slot[_slot(parent)] if slot else None
        if token is not None:
            line_end, newline, rest = token.value.partition("\n")
            text = rest
            slot[_slot(parent)] = (
                CommentToken(line_end + newline, CommentMark(0)) if line_end.strip() else None
            )
    if isinstance(value, CommentedMap | CommentedSeq) and value.ca.end:
        text += "".join(" " * t.column + t.value for t in value.ca.end)
        value.ca.end = []
    return text


def _attach(node: Any, text: str) -> bool:
    """Hang comment lines after the last scalar of `node`; False if it is empty."""
    key = _last_key(node)
    if key is None:
        return False
    if _is_block(node[key]):
        return _attach(node[key], text)
    width = 2 if isinstance(node, CommentedSeq) else 4
    slot = node.ca.items.setdefault(key, [None] * width)
    token = slot[_slot(node)]
    if token is None:
        slot[_slot(node)] = CommentToken("\n" + text, CommentMark(0))
    else:
        token.value = token.value + text
    return True
