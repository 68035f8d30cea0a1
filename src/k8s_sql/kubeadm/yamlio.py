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


#: Most nodes a document may expand to (aliases counted at every use): a kubeadm manifest
#: has a few hundred; this stops an alias bomb before :func:`plain` copies it.
MAX_NODES = 100_000


def _parse_error(e: Exception, source: str) -> K8sSqlError:
    """A parser failure as an error naming the file and, when known, the line."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, YAMLError):
        what = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    elif isinstance(e, RecursionError):
        what = "nested too deeply"
    else:  # the constructor's int()/float()/date() on a scalar that only looks like one
        what = f"a value cannot be read ({e})"
    return K8sSqlError(f"not valid YAML: {what}", where=f"{source}:{mark.line + 1}" if mark else source,
                       hint="fix the file or restore it from its backup")


def _check_shape(data: Any, source: str) -> None:
    """Refuse a recursive document (``&a [*a]``) or one whose aliases expand to more than
    :data:`MAX_NODES` nodes. Raises :class:`K8sSqlError`."""
    count = 0
    stack: list[tuple[Any, bool]] = [(data, False)]
    open_ids: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            open_ids.discard(id(node))
            continue
        count += 1
        if count > MAX_NODES:
            raise K8sSqlError(f"not valid YAML: the document expands to more than {MAX_NODES} nodes "
                              "(aliases of aliases)", where=source, hint="write the values out instead of aliases")
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if id(node) in open_ids:
            raise K8sSqlError("not valid YAML: the document contains itself (a recursive alias)", where=source,
                              hint="fix the file or restore it from its backup")
        open_ids.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children)


def load(text: str, source: str, *, keep_quotes: bool = True) -> Any:
    """Parse one YAML document (``keep_quotes=False`` for templates, whose empty
    placeholders are quoted but whose filled values need not be).

    Raises:
        K8sSqlError: not valid YAML (syntax, several documents, duplicate keys, a tagged
            value that does not parse, a recursive or exploding alias), with ``source:line``.
    """
    try:
        data = _yaml(keep_quotes).load(text)
    except (YAMLError, ValueError, TypeError, RecursionError) as e:
        raise _parse_error(e, source) from None
    _check_shape(data, source)
    return data


def load_mapping(text: str, source: str, what: str, hint: str) -> Any:
    """:func:`load` a document that must be a mapping (a manifest, a configuration).

    Raises:
        K8sSqlError: as :func:`load`; the document is empty or not a mapping (``what``
            names what it should be, ``hint`` what to do).
    """
    data = load(text, source)
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {_kind(data)}, not a mapping"
        raise K8sSqlError(f"the document is {found}: expected {what}", where=source, hint=hint)
    return data


def _kind(data: Any) -> str:
    return "list" if isinstance(data, list) else "scalar"


def load_all(text: str, source: str) -> list[Any]:
    """Parse a multi-document stream (``---`` separated; templates, quotes not kept).
    Raises as :func:`load`."""
    try:
        docs = list(_yaml(False).load_all(text))
    except (YAMLError, ValueError, TypeError, RecursionError) as e:
        raise _parse_error(e, source) from None
    for doc in docs:
        _check_shape(doc, source)
    return docs


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
