"""Reading the operator's YAML files (node config, policies, trust list) with line numbers.

Every value keeps the line it came from, so a validation error can say ``policy.yaml:14: ...``.
pydantic validates the structure; :func:`load_model` turns its first error into a
:class:`~gateway.errors.ConfigError` that names file, line and field; :func:`validate_all` gives
every error.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from gateway.errors import ConfigError

Loc = tuple[str | int, ...]
_UNION_TAG = re.compile(r"^[A-Z][A-Za-z]*Model$|\[|'")
M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed YAML file: its plain data and the line (1-based) of every key or item."""

    path: Path
    data: object
    lines: dict[Loc, int]
    raw: bytes

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest known prefix of ``loc`` (None for an empty document)."""
        parts = tuple(loc)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return self.lines.get((), None)


class _Refused(Exception):
    """A construct the config files do not admit, at a line."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], seen: set[int]) -> object:
    line = node.start_mark.line + 1
    if id(node) in seen:
        # an alias: config files are read by people, and aliases can expand without bound
        raise _Refused("anchors and aliases (&, *) are not allowed; write the value out", line)
    seen.add(id(node))
    lines.setdefault(loc, line)
    if isinstance(node, yaml.MappingNode):
        result: dict[object, object] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node)
            if not isinstance(key, str | int):
                raise _Refused("a key must be a name or a number", key_node.start_mark.line + 1)
            if key in result:
                raise _Refused(
                    f"key '{key}' appears twice in the same block; keep one of them",
                    key_node.start_mark.line + 1,
                )
            child: Loc = (*loc, key)
            lines[child] = key_node.start_mark.line + 1
            result[key] = _walk(value_node, child, lines, seen)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*loc, i), lines, seen) for i, item in enumerate(node.value)]
    return _construct(node)


def _construct(node: yaml.Node) -> object:
    """The plain value of ``node`` (a scalar, or a key that may be a collection).

    :raises _Refused: the value has the form, or the tag, of a type but is not a valid one
        (``2026-13-45``, ``!!int x``, a number of thousands of digits).
    """
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # PyYAML's constructors fail with these, not with a YAMLError, on such values
        kind = node.tag.rpartition(":")[2] or "value"
        raise _Refused(
            f"the value is not a valid {kind}; put it in quotes if it is meant as text",
            node.start_mark.line + 1,
        ) from exc


def read_bytes(path: Path, what: str, error: type[ConfigError] = ConfigError) -> bytes:
    """The contents of ``path`` (a ``what``, e.g. "policy file").

    :raises ConfigError: (of class ``error``) the file is missing or unreadable.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise error(f"{what} not found", file=str(path)) from exc
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror}", file=str(path)) from exc


def parse_yaml(
    path: Path, raw: bytes, what: str, error: type[ConfigError] = ConfigError
) -> YamlDocument:
    """Parse ``raw`` (the contents of ``path``) keeping line numbers.

    :raises ConfigError: (of class ``error``) not valid YAML, a key twice in one block, an
        alias, or nesting too deep, with the line of the fault.
    """
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
        lines: dict[Loc, int] = {}
        data = _walk(node, (), lines, set()) if node is not None else None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text", file=str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"not valid YAML: {problem}", file=str(path), line=line) from exc
    except _Refused as exc:
        raise error(f"{exc}", file=str(path), line=exc.line) from exc
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply", file=str(path)) from exc
    return YamlDocument(path, data, lines, raw)


def read_yaml(path: Path, what: str, error: type[ConfigError] = ConfigError) -> YamlDocument:
    """Read and parse ``path`` (see :func:`read_bytes` and :func:`parse_yaml`)."""
    return parse_yaml(path, read_bytes(path, what, error), what, error)


def describe_loc(loc: Sequence[str | int]) -> str:
    """``('rules', 2, 'to')`` as ``rules[2].to``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or check its spelling",
}


def model_keys(model: type[pydantic.BaseModel]) -> frozenset[str]:
    """Every key the file form of ``model`` and of the models inside it admits."""
    keys: set[str] = set()
    seen: set[type[pydantic.BaseModel]] = set()

    def visit(annotation: object) -> None:
        if (
            isinstance(annotation, type)
            and issubclass(annotation, pydantic.BaseModel)
            and annotation not in seen
        ):
            seen.add(annotation)
            for name, info in annotation.model_fields.items():
                keys.add(info.alias or name)
                visit(info.annotation)
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(model)
    return frozenset(keys)


def _hint(detail: Mapping[str, Any], keys: frozenset[str]) -> str:
    """A "did you mean" for a misspelt key; a reminder to quote a word YAML read as a boolean."""
    if detail["type"] == "extra_forbidden" and detail["loc"]:
        close = difflib.get_close_matches(str(detail["loc"][-1]), sorted(keys), n=1)
        return f"; did you mean '{close[0]}'?" if close else ""
    if detail["type"] == "string_type" and isinstance(detail.get("input"), bool):
        return (
            "; YAML reads an unquoted yes, no, on, off, true or false (any case: NO for Norway)"
            " as a boolean: put the value in quotes"
        )
    return ""


def _as_error(
    document: YamlDocument,
    detail: Mapping[str, Any],
    what: str,
    error: type[ConfigError],
    keys: frozenset[str] | None = None,
) -> ConfigError:
    # pydantic names the member of a union it tried (``literal['keep', ...]``, a model's class
    # name); the file has no such key, so leave those out of the field path
    loc = tuple(
        p
        for p in detail["loc"]
        if isinstance(p, int) or (isinstance(p, str) and not _UNION_TAG.search(p))
    )
    fix = _FIXES.get(str(detail["type"]))
    message = f"{what}: field '{describe_loc(loc)}': {detail['msg']}" + (f"; {fix}" if fix else "")
    if keys is not None:
        message += _hint(detail, keys)
    return error(message, file=str(document.path), line=document.line_of(loc))


def load_model(
    document: YamlDocument,
    model: type[M],
    what: str,
    error: type[ConfigError],
    *,
    context: dict[str, object] | None = None,
) -> M:
    """Validate ``document`` as ``model`` (``context`` goes to its validators).

    :raises ConfigError: (of class ``error``) naming file, line and field of the first problem.
    """
    found, problems = validate_all(document, model, what, error, context=context)
    if found is None:
        raise problems[0]
    return found


def validate_all(
    document: YamlDocument,
    model: type[M],
    what: str,
    error: type[ConfigError],
    *,
    context: dict[str, object] | None = None,
    hints: bool = False,
) -> tuple[M | None, list[ConfigError]]:
    """``document`` as ``model``, or None and every problem pydantic found, each naming file,
    line and field; with ``hints``, a misspelt key gets a "did you mean" and a boolean where
    text was expected a reminder to quote it."""
    try:
        return model.model_validate(document.data, context=context), []
    except pydantic.ValidationError as exc:
        keys = model_keys(model) if hints else None
        return None, [_as_error(document, d, what, error, keys) for d in exc.errors()]
