"""YAML loaded together with where each value was written.

The config loader validates plain Python values but must point at file:line:column
for every problem; :func:`load` returns both the values and a map from each
value's field path (``("rules", 1, "providers", 0)``) to its position.
``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment;
an unset variable without a default is a problem, or, when the caller collects
them (``unset=[...]``), a :class:`Placeholder` and a problem in that list.

Whatever a file holds, reading it raises :class:`ConfigError` and nothing else,
quickly and in bounded memory: each stage (read, decode, parse, compose, build)
turns its failures into a problem with the file and, where there is one, the
line and column.  The bounds, each named in the error that enforces it:

- a file is at most :data:`MAX_FILE_BYTES` (1 MiB), UTF-8 with or without a BOM;
- at most :data:`MAX_NODES` values are written in it, nested at most
  :data:`MAX_DEPTH` levels deep (aliases included);
- aliases (``*name``) expand to at most :data:`MAX_ALIAS_NODES` values in all,
  so an alias bomb ("billion laughs") is refused before it grows;
- only plain YAML types are read: mappings, lists, strings, numbers,
  true/false, null and dates; any other tag (``!!python/...``, ``!!binary``,
  ``!!set``, ``!custom``) is refused, as is a number longer than
  :data:`MAX_NUMBER_CHARS` characters.
"""

from __future__ import annotations

import codecs
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from smsroute.errors import ConfigError, ConfigProblem

Path = tuple[str | int, ...]

#: Largest config or price file read, in bytes.
MAX_FILE_BYTES = 1 << 20
#: Most values (scalars, lists and mappings) written in one file.
MAX_NODES = 50_000
#: Most values produced by expanding aliases, over the whole file.
MAX_ALIAS_NODES = 10_000
#: Deepest nesting of lists and mappings, aliases expanded.
MAX_DEPTH = 64
#: Longest number, in characters (a longer one is refused, not read).
MAX_NUMBER_CHARS = 100
#: Most problems one ConfigError lists; the rest are counted.
MAX_PROBLEMS = 100

_TOO_DEEP = (
    f"lists and mappings are nested more than {MAX_DEPTH} levels deep, the limit: "
    "a config needs a few; look for brackets that are not closed"
)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# The characters YAML allows in a stream (YAML 1.1, 5.1): everything else is refused.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _STR, _MERGE, _VALUE = (_TAG + t for t in ("map", "seq", "str", "merge", "value"))

# libyaml's parser when PyYAML was built with it (about ten times faster), else
# PyYAML's own.  Only events are taken from it: composing them into nodes is done
# here, without recursion, so that every bound is checked as the file is read.
_Events: type[yaml.BaseLoader] | type[yaml.CBaseLoader] = (
    yaml.CBaseLoader if yaml.__with_libyaml__ else yaml.BaseLoader
)

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlong = 40
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6
_short.maxlevel = 3


def shown(value: object) -> str:
    """``repr(value)``, shortened to fit in an error message."""
    return _short.repr(value)


class Placeholder(str):
    """A value written with an unset environment variable, ``<VAR>`` in its place
    (``smsroute check`` and ``explain`` load a config without its secrets).

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


def config_error(problems: list[ConfigProblem]) -> ConfigError:
    """A :class:`ConfigError` listing at most :data:`MAX_PROBLEMS` of ``problems``."""
    if len(problems) <= MAX_PROBLEMS:
        return ConfigError(problems)
    kept = problems[: MAX_PROBLEMS - 1]
    rest = len(problems) - len(kept)
    kept.append(
        ConfigProblem(
            f"... and {rest} more problems: fix these first",
            file=problems[0].file,
            line=None,
            column=None,
            path="",
        )
    )
    return ConfigError(kept)


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


# -- read and decode -------------------------------------------------------------------


class ReadFailure(Exception):
    """A file could not be read.  The message says why and what to do (no path in it)."""


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the file at ``path``: at most :data:`MAX_FILE_BYTES` are read."""
    name = os.fspath(path)
    if "\0" in name:
        raise ReadFailure("its path contains a NUL byte (\\0): remove it from the path")
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ReadFailure(exc.strerror or type(exc).__name__) from None
    except ValueError as exc:  # a path the OS cannot take
        raise ReadFailure(f"the path cannot be opened ({exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ReadFailure(
            "it is larger than 1 MiB (1,048,576 bytes), the limit for a config or price "
            "file: these are a few kilobytes, so check that this is the right file"
        )
    return data


def _wide_encoding(data: bytes) -> str | None:
    """``UTF-16`` or ``UTF-32`` when ``data`` looks like either (BOM or zero bytes)."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    head = data[:4]
    if len(head) == 4 and b"\0\0\0" in (head[:3], head[1:]):
        return "UTF-32"
    if len(head) >= 2 and (head[0] == 0) != (head[1] == 0):
        return "UTF-16"
    return None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def decode(data: bytes, file: str) -> str:
    """``data`` as text: UTF-8, with or without a BOM, is the only encoding accepted."""
    wide = _wide_encoding(data)
    if wide is not None:
        raise ConfigError(
            [
                ConfigProblem(
                    f"the file is not UTF-8 (looks like {wide}): save it as UTF-8",
                    file=file,
                    line=None,
                    column=None,
                    path="",
                )
            ]
        )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", "replace")
        line, column = _line_column(before, len(before))
        raise ConfigError(
            [
                ConfigProblem(
                    f"the file is not UTF-8: byte 0x{data[exc.start]:02x} is not valid UTF-8 "
                    "(the file may be Latin-1 or Windows-1252): save it as UTF-8",
                    file=file,
                    line=line,
                    column=column,
                    path="",
                )
            ]
        ) from None


def read_text(path: str | os.PathLike[str], file: str, what: str = "config") -> str:
    """The decoded text of the file at ``path``; :class:`ConfigError` names ``file``."""
    try:
        data = read_bytes(path)
    except ReadFailure as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    f"cannot read {what}: {exc}", file=file, line=None, column=None, path=""
                )
            ]
        ) from None
    return decode(data, file)


# -- parse and compose -----------------------------------------------------------------


class _Refused(Exception):
    """A bound was crossed, or the YAML holds what a config cannot: at ``mark``."""

    def __init__(self, mark: Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


@attrs.define(slots=True)
class _Open:
    """A list or mapping whose items are being read."""

    node: SequenceNode | MappingNode
    anchor: str | None
    items: list[Node] = attrs.field(factory=list)
    size: int = 1
    depth: int = 1


def _start(event: Any) -> Mark:
    # libyaml's events carry their own Mark class, with the same line and column.
    return cast(Mark, event.start_mark)


def _end(event: Any) -> Mark:
    return cast(Mark, event.end_mark)


def _anchor_name(name: str) -> str:
    return name if len(name) <= 40 else name[:37] + "..."


class _Composer:
    """YAML events to nodes, iteratively, within the bounds above.

    An alias yields the node its anchor names (shared, as PyYAML does); what it
    would expand to (``size`` values, ``depth`` levels) is counted against the
    bounds, so the builder, which expands aliases, never meets an unbounded tree.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.resolve: Callable[[type[Node], str | None, Any], str] = Resolver().resolve
        self.anchors: dict[str, tuple[Node, int, int]] = {}
        self.open_anchors: set[str] = set()
        self.nodes = 0
        self.expanded = 0

    def compose(self) -> Node | None:
        loader = _Events(self.text)
        try:
            get: Callable[[], Event] = cast(Callable[[], Event], loader.get_event)
            event = get()
            if isinstance(event, StreamStartEvent):
                event = get()
            if isinstance(event, StreamEndEvent):
                return None
            if not isinstance(event, DocumentStartEvent):
                raise _Refused(_start(event), "expected the start of a YAML document")
            root = self._document(get)
            event = get()
            if not isinstance(event, StreamEndEvent):
                raise _Refused(
                    _start(event),
                    "the file holds more than one YAML document (a second '---'): "
                    "keep one document per file",
                )
            return root
        finally:
            loader.dispose()

    def _count(self, event: Event, level: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(
                _start(event),
                f"the file holds more than {MAX_NODES:,} values, the limit: a config holds "
                "a few hundred, so check that this is the right file",
            )
        if level >= MAX_DEPTH:
            raise _Refused(_start(event), _TOO_DEEP)

    def _alias(self, event: AliasEvent, level: int) -> tuple[Node, int, int]:
        name = event.anchor or ""
        if name in self.open_anchors:
            raise _Refused(
                _start(event),
                f"the alias *{_anchor_name(name)} is inside the value its anchor "
                f"&{_anchor_name(name)} names (a recursive alias): a value cannot contain "
                "itself; copy what you need instead",
            )
        entry = self.anchors.get(name)
        if entry is None:
            raise _Refused(
                _start(event),
                f"the alias *{_anchor_name(name)} names no anchor: define "
                f"&{_anchor_name(name)} on a value before this point",
            )
        node, size, depth = entry
        self.expanded += size
        if self.expanded > MAX_ALIAS_NODES:
            raise _Refused(
                _start(event),
                f"aliases expand to more than {MAX_ALIAS_NODES:,} values, the limit (an "
                "alias bomb, or 'billion laughs', looks like this): use fewer aliases, or "
                "aliases of smaller values",
            )
        if level + depth > MAX_DEPTH:
            raise _Refused(
                _start(event),
                f"with the alias *{_anchor_name(name)} expanded, lists and mappings are "
                f"nested more than {MAX_DEPTH} levels deep, the limit: use fewer levels",
            )
        return node, size, depth

    def _define(self, anchor: str | None, mark: Mark) -> None:
        if anchor is None:
            return
        first = self.anchors.get(anchor)
        if first is not None or anchor in self.open_anchors:
            where = f" (first at line {first[0].start_mark.line + 1})" if first else ""
            raise _Refused(
                mark,
                f"the anchor &{_anchor_name(anchor)} is defined twice{where}: "
                "give each anchor its own name",
            )

    def _document(self, get: Callable[[], Event]) -> Node | None:
        stack: list[_Open] = []
        root: Node | None = None
        while True:
            event = get()
            size, depth = 1, 1
            if isinstance(event, DocumentEndEvent):
                return root
            if isinstance(event, AliasEvent):
                node, size, depth = self._alias(event, len(stack))
            elif isinstance(event, ScalarEvent):
                self._count(event, len(stack))
                self._define(event.anchor, _start(event))
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, _start(event), _end(event), style=event.style)
                if event.anchor is not None:
                    self.anchors[event.anchor] = (node, 1, 1)
            elif isinstance(event, SequenceStartEvent | MappingStartEvent):
                self._count(event, len(stack))
                self._define(event.anchor, _start(event))
                kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(kind, None, event.implicit)
                collection = kind(tag, [], _start(event), _end(event), flow_style=event.flow_style)
                if event.anchor is not None:
                    self.open_anchors.add(event.anchor)
                stack.append(_Open(collection, event.anchor))
                continue
            elif isinstance(event, SequenceEndEvent | MappingEndEvent):
                frame = stack.pop()
                node = frame.node
                node.end_mark = _end(event)
                items = frame.items
                node.value = (
                    list(zip(items[::2], items[1::2], strict=True))
                    if isinstance(node, MappingNode)
                    else items
                )
                size, depth = frame.size, frame.depth
                if frame.anchor is not None:
                    self.open_anchors.discard(frame.anchor)
                    self.anchors[frame.anchor] = (node, size, depth)
            else:  # pragma: no cover - the parser emits no other event inside a document
                raise _Refused(_start(event), f"unexpected YAML event {type(event).__name__}")
            if stack:
                parent = stack[-1]
                parent.items.append(node)
                parent.size += size
                parent.depth = max(parent.depth, depth + 1)
            else:
                root = node


# -- build values ----------------------------------------------------------------------

_INVALID: Any = object()

_SCALARS: dict[str, tuple[str, Callable[[SafeConstructor, ScalarNode], Any]]] = {
    _TAG + "null": ("null", SafeConstructor.construct_yaml_null),
    _TAG + "bool": ("true or false", SafeConstructor.construct_yaml_bool),
    _TAG + "int": ("a whole number", SafeConstructor.construct_yaml_int),
    _TAG + "float": ("a number", SafeConstructor.construct_yaml_float),
    _TAG + "timestamp": ("a date or time", SafeConstructor.construct_yaml_timestamp),
    _STR: ("text", SafeConstructor.construct_yaml_str),
    # '=' and '<<' outside a mapping's key are plain text.
    _VALUE: ("text", SafeConstructor.construct_yaml_str),
    _MERGE: ("text", SafeConstructor.construct_yaml_str),
}


def _tag_name(tag: str) -> str:
    name = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
    return name if len(name) <= 60 else name[:57] + "..."


class _Builder:
    def __init__(
        self, file: str, environ: Mapping[str, str], unset: list[ConfigProblem] | None
    ) -> None:
        self.file = file
        self.environ = environ
        self.unset = unset
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

    def _unsupported_tag(self, node: Node, path: Path) -> None:
        self._problem(
            node,
            path,
            f"the YAML tag {_tag_name(node.tag)} is not supported: a config holds only "
            "mappings, lists, text, numbers, true/false and null; remove the tag",
        )

    def build(self, node: Node, path: Path) -> Any:
        self.value_marks[path] = self._mark(node)
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                self._unsupported_tag(node, path)
                return None
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self._unsupported_tag(node, path)
                return None
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        value = self._scalar(node, path)
        if value is _INVALID:
            return None
        if isinstance(value, str) and "$" in value:
            value = self._substitute(value, node, path)
        return value

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        own: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                self._merge(value_node, path, merged)
            else:
                own.append((key_node, value_node))
        self.value_marks[path] = self._mark(node)
        out: dict[str, Any] = {}
        for key_node, value_node in own:
            key = self._key(key_node, path)
            if key is None:
                continue
            child = (*path, key)
            if key in out:
                self._problem(key_node, child, f"key {shown(key)} is given twice")
                continue
            self.key_marks[child] = self._mark(key_node)
            out[key] = self.build(value_node, child)
        if not merged:
            return out
        # The mapping's own keys win over merged ones (YAML's merge key, '<<').
        return {**{k: v for k, v in merged.items() if k not in out}, **out}

    def _merge(self, value_node: Node, path: Path, merged: dict[str, Any]) -> None:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self._problem(
                    source,
                    path,
                    "a merge key (<<) takes a mapping or a list of mappings, e.g. '<<: *defaults'",
                )
                continue
            value = self.build(source, path)
            if isinstance(value, dict):
                for k, v in value.items():
                    merged.setdefault(k, v)  # earlier sources win

    def _key(self, node: Node, path: Path) -> str | None:
        if not isinstance(node, ScalarNode):
            self._problem(
                node, path, "a key must be a plain name or value, not a list or a mapping"
            )
            return None
        value = self._scalar(node, path)
        if value is _INVALID:
            return None
        return value if isinstance(value, str) else str(value)

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        entry = _SCALARS.get(node.tag)
        if entry is None:
            self._unsupported_tag(node, path)
            return _INVALID
        what, construct = entry
        text = node.value
        if what in ("a whole number", "a number") and len(text) > MAX_NUMBER_CHARS:
            self._problem(
                node,
                path,
                f"a number written with {len(text):,} characters is too long: numbers here "
                f"have at most {MAX_NUMBER_CHARS}; quote it if it is text",
            )
            return _INVALID
        try:
            return construct(self.constructor, node)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            written = f"{_tag_name(node.tag)} {shown(text)}" if node.tag != text else shown(text)
            self._problem(
                node,
                path,
                f"{written} cannot be read as {what}: correct it, or quote it to make it text",
            )
            return _INVALID

    def _substitute(self, text: str, node: Node, path: Path) -> str:
        missing = False

        def replace(m: re.Match[str]) -> str:
            nonlocal missing
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            line, column = self._mark(node)
            problem = ConfigProblem(
                f"environment variable {name} is not set: export it, "
                f"or write ${{{name}:-default}} to give a default",
                file=self.file,
                line=line,
                column=column,
                path=format_path(path),
            )
            if self.unset is None:
                self.problems.append(problem)
                return ""
            self.unset.append(problem)
            missing = True
            return f"<{name}>"

        whole = _ENV.fullmatch(text)
        if whole is not None and whole.group(1) in self.environ:
            return self.environ[whole.group(1)]  # keeps a Placeholder a Placeholder
        value = _ENV.sub(replace, text)
        return Placeholder(value) if missing else value


def _problem_at(file: str, mark: Mark | None, message: str) -> ConfigError:
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigError([ConfigProblem(message, file=file, line=line, column=column, path="")])


def load(
    text: str,
    file: str = "<config>",
    environ: Mapping[str, str] | None = None,
    *,
    unset: list[ConfigProblem] | None = None,
) -> Located:
    """Parse YAML ``text``; raise :class:`ConfigError`, and only it, on any problem.

    ``${VAR}`` is read from ``environ`` (default: ``os.environ``).  An unset
    variable without a default is a problem, unless ``unset`` is given: then the
    value becomes a :class:`Placeholder` and the problem is appended to ``unset``
    instead (a warning: the config's shape can be checked without its secrets).
    """
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            [
                ConfigProblem(
                    "the config is larger than 1 MiB (1,048,576 bytes), the limit: a config "
                    "is a few kilobytes, so check that this is the right text",
                    file=file,
                    line=None,
                    column=None,
                    path="",
                )
            ]
        )
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line, column = _line_column(text, bad.start())
        char = f"U+{ord(bad.group()):04X}" + (" (NUL)" if bad.group() == "\0" else "")
        raise ConfigError(
            [
                ConfigProblem(
                    f"the file holds the control character {char}, which YAML does not "
                    "allow: remove it",
                    file=file,
                    line=line,
                    column=column,
                    path="",
                )
            ]
        )
    try:
        root = _Composer(text).compose()
    except _Refused as exc:
        raise _problem_at(file, exc.mark, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        reason = exc.problem or exc.context or "invalid YAML"
        message = (
            _TOO_DEEP  # libyaml's own bound (1000 levels), met while it scans ahead
            if "maximum nesting depth" in reason
            else f"YAML syntax error: {reason}"
        )
        raise _problem_at(file, exc.problem_mark or exc.context_mark, message) from None
    except yaml.YAMLError as exc:
        raise _problem_at(file, None, f"YAML error: {shown(str(exc))}") from None
    builder = _Builder(file, os.environ if environ is None else environ, unset)
    value = None if root is None else builder.build(root, ())
    if builder.problems:
        raise config_error(builder.problems)
    return Located(file, value, builder.value_marks, builder.key_marks)
