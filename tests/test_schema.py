"""config/schema.json stays in step with the loader: same keys, same verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from smsroute import config as cfg
from smsroute.providers import BUILTIN, load_provider_class

ROOT = Path(__file__).resolve().parent.parent
SCHEMA: dict[str, Any] = json.loads((ROOT / "config" / "schema.json").read_text())
DEFS = SCHEMA["$defs"]


def keys(node: dict[str, Any]) -> set[str]:
    return set(node["properties"])


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    ("schema_keys", "loader_keys"),
    [
        (keys(SCHEMA), cfg.TOP_KEYS),
        (keys(DEFS["defaults"]), cfg.DEFAULTS_KEYS),
        (keys(DEFS["breaker"]), cfg.BREAKER_KEYS),
        (keys(DEFS["provider"]), cfg.PROVIDER_COMMON_KEYS),
        (keys(DEFS["rule"]), cfg.RULE_KEYS),
        (keys(DEFS["match"]), cfg.MATCH_KEYS),
        (keys(DEFS["rule"]["properties"]["score_weights"]), cfg.SCORE_WEIGHT_KEYS),
        (keys(DEFS["category"]), cfg.CATEGORY_KEYS),
    ],
    ids=["top", "defaults", "breaker", "provider", "rule", "match", "score_weights", "category"],
)
def test_section_keys_match_the_loader(schema_keys: set[str], loader_keys: frozenset[str]) -> None:
    assert schema_keys == set(loader_keys)


def _type_blocks() -> dict[str, dict[str, Any]]:
    blocks = {}
    for block in DEFS["provider"]["allOf"]:
        blocks[block["if"]["properties"]["type"]["const"]] = block["then"]
    return blocks


def _loadable_builtins() -> list[str]:
    out = []
    for name in sorted(BUILTIN):
        try:
            load_provider_class(name)
        except ImportError:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("type_name", _loadable_builtins())
def test_each_adapters_options_are_in_the_schema(type_name: str) -> None:
    provider = load_provider_class(type_name)
    block = _type_blocks().get(type_name)
    assert block is not None, f"config/schema.json has no block for type {type_name}"
    assert set(block["properties"]) == set(provider.required_options | provider.optional_options)
    assert set(block.get("required", [])) == set(provider.required_options)


def test_shipped_example_configs_validate() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for path in sorted((ROOT / "config").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        errors = [e.message for e in validator.iter_errors(document)]
        assert errors == [], f"{path.name}: {errors}"


@pytest.mark.parametrize(
    "mistake",
    [
        {"defaults": {"deadlin": "5s"}},
        {"defaults": {"deadline": "5 seconds"}},
        {"rules": [{"name": "x", "providers": ["p"], "strategy": "random"}]},
        {"rules": [{"name": "x", "providers": ["p"], "match": {"countri": "DE"}}]},
        {"providers": {"p": {"type": "twilio", "auth_token": "t"}}},
    ],
    ids=["unknown-key", "bad-duration", "bad-strategy", "unknown-match-key", "missing-option"],
)
def test_schema_refuses_what_the_loader_refuses(mistake: dict[str, Any]) -> None:
    document: dict[str, Any] = {
        "providers": {"p": {"type": "twilio", "account_sid": "AC1", "auth_token": "t"}},
        "rules": [{"name": "default", "providers": ["p"]}],
    }
    document.update(mistake)
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document))
    with pytest.raises(cfg.ConfigError):
        cfg.parse_config(yaml.safe_dump(document))
