"""Reading the operator's YAML files (node config, policies, trust list) with line numbers.

Every value keeps the line it came from, so a validation error can say ``policy.yaml:14: ...``.
pydantic validates the structure; :func:`load_model` turns its first error into a
:class:`~gateway.errors.ConfigError` that names file, line and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from gateway.errors import ConfigError

Loc = tuple[str | int, ...]
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


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> object:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[object, object] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            child: Loc = (*loc, key if isinstance(key, str | int) else str(key))
            lines[child] = key_node.start_mark.line + 1
            result[key] = _walk(value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*loc, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def read_yaml(path: Path, what: str, error: type[ConfigError] = ConfigError) -> YamlDocument:
    """Parse ``path`` (a ``what``, e.g. "policy file") keeping line numbers.

    :raises ConfigError: (of class ``error``) the file is missing or not valid YAML (with the
        line of the fault).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise error(f"{what} not found", file=str(path)) from exc
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror}", file=str(path)) from exc
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text", file=str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"not valid YAML: {problem}", file=str(path), line=line) from exc
    lines: dict[Loc, int] = {}
    data = _walk(node, (), lines) if node is not None else None
    return YamlDocument(path, data, lines, raw)


def describe_loc(loc: Sequence[str | int]) -> str:
    """``('rules', 2, 'to')`` as ``rules[2].to``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def load_model(document: YamlDocument, model: type[M], what: str, error: type[ConfigError]) -> M:
    """Validate ``document`` as ``model``.

    :raises ConfigError: (of class ``error``) naming file, line and field of the first problem.
    """
    try:
        return model.model_validate(document.data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if isinstance(p, str | int))
        field = describe_loc(loc)
        message = first["msg"]
        raise error(
            f"{what}: field '{field}': {message}",
            file=str(document.path),
            line=document.line_of(loc),
        ) from exc
