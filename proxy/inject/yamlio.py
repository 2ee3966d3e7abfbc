"""Multi-document YAML in and out, changing only the documents that change.

The text is split at `---` lines (a `---` at column 0 is always a document marker), so
documents nothing is done to come back byte for byte. Changed documents go through
ruamel.yaml's round-trip mode, which keeps comments, key order, quoting and the indentation
it detects; anything it cannot keep (unusual spacing, for instance) is normalised.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.util import load_yaml_guess_indent

from proxy.inject.additions import Flow

_MARKER = re.compile(r"^---(?:[ \t].*)?$")


@dataclass
class Document:
    """One document: the marker line before it (or ""), its text, and its parsed tree."""

    marker: str
    text: str
    tree: Any
    sequence: int = 4
    """Columns from a sequence's key to its items' content (kubectl: 2, Kubernetes docs: 4)."""
    offset: int = 2
    """Columns from the key to the dash."""

    def render(self, changed: bool) -> str:
        if not changed or self.tree is None:
            return self.marker + self.text
        text = _dump(self.tree, self.sequence, self.offset, self.text)
        return self.marker + (text.replace("\n", "\r\n") if "\r\n" in self.text else text)


class YamlError(Exception):
    """The input is not YAML; the message says where."""


def split(text: str) -> list[Document]:
    docs: list[Document] = []
    marker, lines = "", list[str]()
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line.rstrip("\r\n")):
            docs.append(_parse(marker, "".join(lines)))
            marker, lines = line, []
        else:
            lines.append(line)
    docs.append(_parse(marker, "".join(lines)))
    return docs


def join(docs: list[Document], changed: list[bool]) -> str:
    return "".join(doc.render(c) for doc, c in zip(docs, changed, strict=True))


def _parse(marker: str, text: str) -> Document:
    if not text.strip():
        return Document(marker, text, None)
    try:
        # Parsed with plain newlines (ruamel keeps a \r in comments); written back with CRLF.
        tree, sequence, offset = load_yaml_guess_indent(text.replace("\r\n", "\n"), yaml=_yaml())
    except Exception as exc:  # ruamel raises many unrelated types for bad input
        raise YamlError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    if offset is None:  # no block sequences: the Kubernetes documentation's style
        return Document(marker, text, tree)
    return Document(marker, text, tree, sequence, offset)


def _flow(representer: RoundTripRepresenter, data: Flow) -> Any:
    return representer.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


def _yaml() -> YAML:
    yaml = YAML()
    yaml.representer.add_representer(Flow, _flow)
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long value (the ledger annotation) over lines
    return yaml


def _dump(tree: Any, sequence: int, offset: int, original: str) -> str:
    yaml = _yaml()
    yaml.indent(mapping=2, sequence=sequence, offset=offset)
    out = io.StringIO()
    yaml.dump(tree, out)
    text = out.getvalue()
    if not original.endswith("\n") and text.endswith("\n"):
        text = text[:-1]
    return text
