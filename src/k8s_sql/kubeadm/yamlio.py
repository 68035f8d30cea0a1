"""Round-trip YAML (ruamel.yaml): comments and key order survive a load/dump cycle."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from k8s_sql.errors import K8sSqlError


def _yaml(keep_quotes: bool = True) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = keep_quotes
    y.width = 4096  # never fold long flags such as --datastore=...
    y.indent(mapping=2, sequence=2, offset=0)  # kubeadm's own style: "- " at the key's column
    # write null as `null` (kubeadm's `creationTimestamp: null`), not as an empty value
    y.representer.add_representer(type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def load(text: str, source: str, *, keep_quotes: bool = True) -> Any:
    """Parse one YAML document (``keep_quotes=False`` for templates, whose empty
    placeholders are quoted but whose filled values need not be).

    Raises:
        K8sSqlError: not valid YAML, with ``source:line``.
    """
    try:
        return _yaml(keep_quotes).load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise K8sSqlError(f"not valid YAML: {getattr(e, 'problem', None) or e}",
                          where=f"{source}:{mark.line + 1}" if mark else source,
                          hint="fix the file or restore it from its backup") from None


def load_all(text: str, source: str) -> list[Any]:
    """Parse a multi-document stream (``---`` separated; templates, quotes not kept).
    Raises as :func:`load`."""
    try:
        return list(_yaml(False).load_all(text))
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise K8sSqlError(f"not valid YAML: {getattr(e, 'problem', None) or e}",
                          where=f"{source}:{mark.line + 1}" if mark else source) from None


def dump(data: Any) -> str:
    """One document as text."""
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def dump_all(docs: list[Any]) -> str:
    """Several documents separated by ``---``."""
    out = io.StringIO()
    _yaml().dump_all(docs, out)
    return out.getvalue()


def plain(data: Any) -> Any:
    """A deep copy made of plain dicts/lists/scalars (for JSON-schema validation and
    comparisons that must ignore comments)."""
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    if isinstance(data, bool) or data is None:
        return data
    if isinstance(data, int):
        return int(data)
    if isinstance(data, float):
        return float(data)
    return str(data)
