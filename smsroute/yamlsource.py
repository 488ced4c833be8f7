"""YAML loaded together with where each value was written.

The config loader validates plain Python values but must point at file:line:column
for every problem; :func:`load` returns both the values and a map from each
value's field path (``("rules", 1, "providers", 0)``) to its position.
``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import attrs
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from smsroute.errors import ConfigError, ConfigProblem

Path = tuple[str | int, ...]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Placeholder(str):
    """A stand-in for an unset environment variable (``smsroute check --env-placeholders``).

    Value checks skip placeholders: only the config's shape is being checked.
    """

    __slots__ = ()


def format_path(path: Path) -> str:
    """``("rules", 1, "providers")`` -> ``rules[1].providers``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@attrs.frozen(slots=True)
class Located:
    """Values loaded from one YAML document, with positions of values and keys."""

    file: str
    value: Any
    value_marks: Mapping[Path, tuple[int, int]]
    key_marks: Mapping[Path, tuple[int, int]]

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> ConfigProblem:
        """A :class:`ConfigProblem` located at ``path`` (or its closest written parent)."""
        marks = self.key_marks if at_key else self.value_marks
        probe = path
        while True:
            pos = marks.get(probe) or self.value_marks.get(probe)
            if pos is not None or not probe:
                break
            probe = probe[:-1]
        line, column = pos if pos is not None else (None, None)
        return ConfigProblem(
            message, file=self.file, line=line, column=column, path=format_path(path)
        )


class _Builder:
    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.constructor = SafeConstructor()
        self.value_marks: dict[Path, tuple[int, int]] = {}
        self.key_marks: dict[Path, tuple[int, int]] = {}
        self.problems: list[ConfigProblem] = []

    def _mark(self, node: Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _problem(self, node: Node, path: Path, message: str) -> None:
        line, column = self._mark(node)
        self.problems.append(
            ConfigProblem(message, file=self.file, line=line, column=column, path=format_path(path))
        )

    def build(self, node: Node, path: Path) -> Any:
        self.value_marks[path] = self._mark(node)
        if isinstance(node, MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                child = (*path, key)
                if key in out:
                    self._problem(key_node, child, f"key '{key}' is given twice")
                    continue
                self.key_marks[child] = self._mark(key_node)
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            value = self._substitute(value, node, path)
        return value

    def _substitute(self, text: str, node: Node, path: Path) -> str:
        def replace(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self._problem(
                node,
                path,
                f"environment variable {name} is not set: export it, "
                f"or write ${{{name}:-default}} to give a default",
            )
            return ""

        whole = _ENV.fullmatch(text)
        if whole is not None and whole.group(1) in self.environ:
            return self.environ[whole.group(1)]  # keeps a Placeholder a Placeholder
        return _ENV.sub(replace, text)


def load(text: str, file: str = "<config>", environ: Mapping[str, str] | None = None) -> Located:
    """Parse YAML ``text``; raise :class:`ConfigError` on syntax errors or missing env vars."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [
                ConfigProblem(
                    f"YAML syntax error: {reason}", file=file, line=line, column=column, path=""
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            [ConfigProblem(f"YAML error: {exc}", file=file, line=None, column=None, path="")]
        ) from None
    builder = _Builder(file, os.environ if environ is None else environ)
    value = None if root is None else builder.build(root, ())
    if builder.problems:
        raise ConfigError(builder.problems)
    return Located(file, value, builder.value_marks, builder.key_marks)
