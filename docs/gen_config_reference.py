"""The configuration reference, generated from ``config/schema.json`` at build time.

A MkDocs hook (``hooks:`` in mkdocs.yml): the page ``reference/configuration.md``
holds the line ``<!-- config-reference -->`` and this hook replaces it with one
table per section of the schema: every key, its type, whether it is required,
its default and its description.  Nothing of it is written by hand, so the page
cannot drift from the schema.

The schema states most defaults only in prose; the *Default* column is read
from the loader itself instead (``smsroute.config.parse_config`` applied to a
minimal config), so it shows what a config that leaves the key out really gets.

The page ``reference/cli.md`` holds ``<!-- cli-reference -->``, replaced by the
``--help`` text of every ``smsroute`` command, taken from the click commands.

Run it alone to print the reference: ``python docs/gen_config_reference.py``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "schema.json"
CONFIG_MARKER = "<!-- config-reference -->"
CLI_MARKER = "<!-- cli-reference -->"

Node = Mapping[str, Any]

#: The value formats of the schema's ``$defs``, each described once (a section of its own).
FORMATS = ("duration", "rate", "fraction", "url", "country", "strings")

#: Sections of the page: (title, anchor, the schema node's path in ``$defs``, the YAML path shown).
SECTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("defaults", "defaults", "defaults", "defaults"),
    ("breaker", "breaker", "breaker", "defaults.breaker / providers.NAME.breaker"),
    ("categories", "categories", "category", "categories.NAME"),
    ("providers: the keys of every type", "providers", "provider", "providers.NAME"),
    ("rules", "rules", "rule", "rules[]"),
    ("rules[].match", "match", "match", "rules[].match"),
    ("state", "state", "state", "state"),
    ("outbox", "outbox", "outbox", "outbox"),
    ("guards", "guards", "guards", "guards"),
    ("guards of a category or rule", "guard-set", "guard_set", "guards.CAT / rules[].guards"),
    ("velocity limits", "velocity", "velocity", "guards.CATEGORY.velocity[]"),
    ("the anomaly guard", "anomaly", "anomaly", "guards.CATEGORY.anomaly"),
    ("budgets", "budgets", "budget", "guards.budgets[]"),
)
DEF_ANCHORS = {definition: anchor for _, anchor, definition, _ in SECTIONS}


# -- defaults, as the loader applies them ------------------------------------------------

_MINIMAL = """
providers:
  p:
    type: http
    base_url: https://sms.example.net
    url: /send
    id_path: id
rules:
  - providers: [p]
outbox: {}
"""

#: Keys the loader leaves unset on purpose: what applies instead (router.py reads them so).
_UNSET_MEANS = {
    "rules[].on_timeout": "the category's `on_timeout`",
    "rules[].max_attempts": "`defaults.max_attempts`",
    "rules[].deadline": "`defaults.deadline`",
    "rules[].name": "`rule-N` (its position)",
}


def loader_defaults() -> dict[str, Any]:
    """Every default the loader applies, by YAML path (``defaults.deadline``, ...)."""
    from smsroute.configload import parse_config

    config = parse_config(_MINIMAL, file="<docs>")
    # A second parse with other defaults tells which provider keys inherit from them.
    changed = parse_config(
        _MINIMAL + "defaults: {currency: EUR, breaker_scope: provider_country}\n", file="<docs>"
    )
    out: dict[str, Any] = {}
    for prefix, obj in (
        ("defaults", config.defaults),
        ("defaults.breaker", config.defaults.breaker),
        ("state", config.state),
        ("outbox", config.outbox),
    ):
        for name in _fields(obj):
            out[f"{prefix}.{name}"] = getattr(obj, name)
    breaker = config.defaults.breaker
    out["defaults.breaker.window"] = (
        f"{breaker.window} calls"
        if breaker.window_seconds is None
        else _duration(breaker.window_seconds)
    )
    outbox = config.outbox
    assert outbox is not None
    out["outbox.backoff.base"] = outbox.backoff_base
    out["outbox.backoff.max"] = outbox.backoff_max
    provider, other = config.providers["p"], changed.providers["p"]
    for name in _fields(provider):
        if name in ("name", "type", "base_url", "prices", "options"):
            continue  # given in the minimal config, or not a default of the loader
        key = "from" if name == "sender" else name
        value = getattr(provider, name)
        if value != getattr(other, name):
            value = _Inherited(f"`defaults.{key}`")
        out[f"providers.NAME.{key}"] = value
    out["providers.NAME.base_url"] = _Inherited("the adapter's API (see its page)")
    out["providers.NAME.prices"] = _Inherited("none: prices unknown")
    if provider.prices.currency != other.prices.currency:
        out["providers.NAME.currency"] = _Inherited("`defaults.currency`")
    out["providers.NAME.breaker"] = _Inherited("`defaults.breaker`, key by key")
    rule = config.rules[0]
    for name in _fields(rule):
        if name in ("providers", "match"):
            continue
        out[f"rules[].{name}"] = getattr(rule, name)
    for name in _fields(rule.score_weights):
        out[f"rules[].score_weights.{name}"] = getattr(rule.score_weights, name)
    for key, meaning in _UNSET_MEANS.items():
        out[key] = _Inherited(meaning)
    declared = parse_config(_MINIMAL + "categories: [docs]\n", file="<docs>").categories
    builtin = ", ".join(f"{c.name} `{c.on_timeout}`" for c in config.categories.values())
    out["categories.NAME.on_timeout"] = _Inherited(
        f"`{declared['docs'].on_timeout}` (built-in: {builtin})"
    )
    return out


class _Inherited(str):
    """A default that is another key's value."""


def _fields(obj: Any) -> Iterator[str]:
    import attrs

    for field in attrs.fields(type(obj)):
        yield field.name


# -- rendering ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and math.isclose(seconds / size, round(seconds / size)):
            return f"{round(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _ref_name(node: Node) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _refs(node: Node) -> set[str]:
    """Every ``$defs`` name ``node`` may be (through anyOf/oneOf too)."""
    names = {name} if (name := _ref_name(node)) else set()
    for alt in (*node.get("anyOf", ()), *node.get("oneOf", ())):
        names |= _refs(alt)
    return names


def format_default(value: Any, node: Node) -> str:
    """A loader value written as a config would write it."""
    if isinstance(value, _Inherited):
        return str(value)
    refs = _refs(node)
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float) and "duration" in refs:
        return f"`{_duration(float(value))}`"
    if isinstance(value, float) and "fraction" in refs:
        return f"`{value:.0%}`"
    if isinstance(value, int | float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, frozenset | set | tuple | list):
        items = sorted(str(v.value if hasattr(v, "value") else v) for v in value)
        return ", ".join(f"`{v}`" for v in items) if items else "none"
    if isinstance(value, Mapping):
        return "none" if not value else ", ".join(f"`{k}: {v}`" for k, v in value.items())
    return ""


def type_of(node: Node, schema: Node) -> str:
    """The type of a schema node in a few words, with links to the value formats."""
    name = _ref_name(node)
    if name is not None:
        if name in FORMATS:
            return f"[{name}](#{name})"
        if name in DEF_ANCHORS:
            return f"[{name}](#{DEF_ANCHORS[name]})"
        return type_of(schema["$defs"][name], schema)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    for combinator in ("oneOf", "anyOf"):
        if combinator in node:
            alternatives = [type_of(alt, schema) for alt in node[combinator]]
            return " or ".join(dict.fromkeys(alternatives))
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    words = []
    for k in kinds:
        if k == "array":
            items = node.get("items")
            words.append(f"list of {type_of(items, schema)}" if items else "list")
        elif k == "object" and "additionalProperties" in node and "properties" not in node:
            extra = node["additionalProperties"]
            inner = type_of(extra, schema) if isinstance(extra, Mapping) else "value"
            words.append(f"mapping of {inner}")
        else:
            words.append(str(k))
    return " or ".join(words) or "any"


def constraints(node: Node) -> str:
    """Bounds and patterns, in words."""
    parts = []
    if "minimum" in node and "maximum" in node:
        parts.append(f"{node['minimum']} to {node['maximum']}")
    elif "minimum" in node:
        parts.append(f"at least {node['minimum']}")
    elif "maximum" in node:
        parts.append(f"at most {node['maximum']}")
    if "exclusiveMinimum" in node:
        parts.append(f"over {node['exclusiveMinimum']}")
    if node.get("minItems"):
        parts.append(f"at least {node['minItems']} item(s)")
    if node.get("minProperties"):
        parts.append(f"at least {node['minProperties']} entry")
    if node.get("uniqueItems"):
        parts.append("no repeats")
    if "pattern" in node:
        # HTML, not a code span: a table cell cannot hold a "|" inside backticks.
        pattern = html.escape(str(node["pattern"]), quote=False)
        pattern = pattern.replace("\\", "&#92;").replace("|", "&#124;")
        parts.append(f"matches <code>{pattern}</code>")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _description(node: Node, schema: Node) -> str:
    text = str(node.get("description", ""))
    name = _ref_name(node)
    if not text and name is not None and name not in FORMATS and name not in DEF_ANCHORS:
        text = str(schema["$defs"][name].get("description", ""))
    limits = constraints(node)
    if limits:
        text = f"{text} ({limits})" if text else limits[0].upper() + limits[1:]
    return text


def key_table(
    node: Node, schema: Node, path: str, defaults: Mapping[str, Any], required: set[str]
) -> list[str]:
    """A Markdown table of ``node``'s properties."""
    rows = [
        "| key | type | required | default | description |",
        "|---|---|---|---|---|",
    ]
    for key, sub in node.get("properties", {}).items():
        default = defaults.get(f"{path}.{key}", _MISSING)
        shown = "" if default is _MISSING else format_default(default, sub)
        rows.append(
            "| "
            + " | ".join(
                (
                    f"`{key}`",
                    _cell(type_of(sub, schema)),
                    "yes" if key in required else "",
                    _cell(shown),
                    _cell(_description(sub, schema)),
                )
            )
            + " |"
        )
    return rows


_MISSING: Any = object()


def _nested(node: Node) -> Iterator[tuple[str, Node]]:
    """Properties of ``node`` that are objects with keys of their own (given inline)."""
    for key, sub in node.get("properties", {}).items():
        if "properties" in sub and "$ref" not in sub:
            yield key, sub


def render(schema: Node, defaults: Mapping[str, Any]) -> str:
    """The whole reference, as Markdown."""
    defs = schema["$defs"]
    out: list[str] = [
        "## The top level",
        "",
        _cell(str(schema.get("description", ""))),
        "",
        *key_table(schema, schema, "", defaults, set(schema.get("required", ()))),
        "",
    ]
    for title, anchor, name, yaml_path in SECTIONS:
        node = defs[name]
        out += [f"## {title} {{#{anchor}}}", "", f"YAML path: `{yaml_path}`.", ""]
        if node.get("description"):
            out += [_cell(str(node["description"])), ""]
        path = yaml_path.split(" / ")[0]
        out += key_table(node, schema, path, defaults, set(node.get("required", ())))
        out.append("")
        for key, sub in _nested(node):
            out += [f"### {yaml_path.split(' / ')[0]}.{key}", ""]
            if sub.get("description"):
                out += [_cell(str(sub["description"])), ""]
            out += key_table(sub, schema, f"{path}.{key}", defaults, set(sub.get("required", ())))
            out.append("")
        if name == "provider":
            out += _provider_types(node, schema)
    out += ["## Value formats", ""]
    for name in FORMATS:
        node = defs[name]
        out += [f"### {name} {{#{name}}}", ""]
        if node.get("description"):
            out += [_cell(str(node["description"])), ""]
        out += [f"Written as: {_cell(type_of_format(node, schema))}.", ""]
    return "\n".join(out)


def type_of_format(node: Node, schema: Node) -> str:
    alternatives = node.get("oneOf") or [node]
    words = []
    for alt in alternatives:
        limits = constraints(alt)
        words.append(type_of(alt, schema) + (f" ({limits})" if limits else ""))
    return " or ".join(words)


def _provider_types(node: Node, schema: Node) -> list[str]:
    """One table per built-in ``type``: the keys it adds to the common ones."""
    out: list[str] = []
    for block in node.get("allOf", ()):
        type_name = block["if"]["properties"]["type"]["const"]
        then = block["then"]
        out += [
            f"### type: {type_name} {{#type-{type_name}}}",
            "",
            f"Keys a `type: {type_name}` provider takes besides the common ones above.",
            "",
            *key_table(then, schema, f"type-{type_name}", {}, set(then.get("required", ()))),
            "",
        ]
        for key, together in then.get("dependentRequired", {}).items():
            out += [f"`{key}` needs {', '.join(f'`{k}`' for k in together)} too.", ""]
        for key, sub in then.get("properties", {}).items():
            for i, variant in enumerate(sub.get("oneOf", ()), 1):
                if "properties" not in variant:
                    continue
                kind = variant["properties"].get("kind", {}).get("const", str(i))
                out += [f"`{key}` with `kind: {kind}`:", ""]
                out += key_table(variant, schema, "", {}, set(variant.get("required", ())))
                out.append("")
    return out


def cli_reference() -> str:
    """The ``--help`` of ``smsroute`` and of each of its commands."""
    import click

    from smsroute.cli import main

    out: list[str] = []
    with click.Context(main, info_name="smsroute", terminal_width=100) as ctx:
        out += ["## smsroute", "", "```text", main.get_help(ctx).rstrip(), "```", ""]
        for name in main.list_commands(ctx):
            command = main.get_command(ctx, name)
            assert command is not None
            with click.Context(command, parent=ctx, info_name=name, terminal_width=100) as sub:
                help_text = command.get_help(sub).rstrip()
                out += [f"## smsroute {name}", "", "```text", help_text, "```", ""]
                if isinstance(command, click.Group):  # a group: each of its commands too
                    for sub_name in command.list_commands(sub):
                        leaf = command.get_command(sub, sub_name)
                        assert leaf is not None
                        with click.Context(
                            leaf, parent=sub, info_name=sub_name, terminal_width=100
                        ) as deeper:
                            text = leaf.get_help(deeper).rstrip()
                        out += [f"### smsroute {name} {sub_name}", "", "```text", text, "```", ""]
    return "\n".join(out)


# -- the MkDocs hook ---------------------------------------------------------------------

_GENERATORS: dict[str, tuple[str, Callable[[], str]]] = {
    "reference/configuration.md": (
        CONFIG_MARKER,
        lambda: render(json.loads(SCHEMA_PATH.read_text()), loader_defaults()),
    ),
    "reference/cli.md": (CLI_MARKER, cli_reference),
}


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """Replace a generated page's marker with what is generated."""
    entry = _GENERATORS.get(page.file.src_uri)
    if entry is None:
        return markdown
    marker, generate = entry
    if marker not in markdown:
        raise RuntimeError(
            f"docs/{page.file.src_uri} lost its '{marker}' line: put it back where the "
            "generated reference goes"
        )
    return markdown.replace(marker, generate())


def on_serve(server: Any, *, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds when the schema changes too."""
    server.watch(str(SCHEMA_PATH))
    return server


if __name__ == "__main__":
    print(render(json.loads(SCHEMA_PATH.read_text()), loader_defaults()))
