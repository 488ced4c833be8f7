"""The ``outbox:`` section: typed settings, mistakes at file:line, the schema in step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from smsroute import ConfigError, Router, load_config, parse_config
from smsroute import config as cfg
from smsroute.config import OutboxSettings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA: dict[str, Any] = json.loads((ROOT / "config" / "schema.json").read_text())

BASE = """\
providers:
  tw: {type: twilio, account_sid: AC1, auth_token: t}
rules:
  - {name: default, providers: [tw]}
"""


def test_outbox_section_is_parsed_into_typed_settings(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "routing.yaml"
    path.parent.mkdir()
    path.write_text(
        BASE
        + """\
outbox:
  path: queue/outbox.db
  lease: 45s
  max_attempts: 4
  ttl: 2h
  backoff: {base: 250ms, max: 1m}
  concurrency: 64
  poll: 500ms
  rate_margin: 20ms
  synchronous: full
  retention: null
"""
    )
    settings = load_config(path).outbox
    assert settings == OutboxSettings(
        backend="sqlite",
        path=str(tmp_path / "conf" / "queue" / "outbox.db"),  # beside the config file
        lease=45.0,
        max_attempts=4,
        ttl=7200.0,
        backoff_base=0.25,
        backoff_max=60.0,
        concurrency=64,
        poll=0.5,
        rate_margin=0.02,
        synchronous="full",
        retention=None,
    )


def test_without_an_outbox_section_the_router_uses_the_defaults() -> None:
    config = parse_config(BASE)
    assert config.outbox is None
    assert Router(config, metrics=False).outbox_service.settings() == OutboxSettings()


def test_an_empty_outbox_section_means_the_defaults_beside_the_config(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(BASE + "outbox:\n")
    settings = load_config(path).outbox
    assert settings == OutboxSettings(path=str(tmp_path / "smsroute-outbox.db"))


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("outbox:\n  leese: 30s\n", 6, "unknown key 'leese' in outbox; did you mean 'lease'?"),
        ("outbox:\n  backend: redis\n", 6, "add state: {backend: redis"),
        ("outbox:\n  backend: kafka\n", 6, "unknown outbox backend 'kafka'"),
        ("outbox:\n  lease: 500ms\n", 6, "lease must be at least 1s"),
        ("outbox:\n  backoff: {base: 10s, max: 1s}\n", 6, "backoff max must be at least"),
        ("outbox:\n  max_attempts: 0\n", 6, "expected a whole number from 1 to 1000"),
        ("outbox:\n  ttl: soon\n", 6, "expected a duration"),
        ("outbox:\n  synchronous: off\n", 6, "unknown synchronous"),
    ],
    ids=[
        "typo",
        "redis-without-state",
        "backend",
        "short-lease",
        "backoff",
        "max-attempts",
        "ttl",
        "synchronous",
    ],
)
def test_outbox_mistakes_are_reported_at_file_and_line(
    section: str, line: int, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + section, file="routing.yaml")
    assert message in str(info.value)
    assert (info.value.file, info.value.line) == ("routing.yaml", line)
    assert info.value.path.startswith("outbox")


def test_schema_outbox_keys_match_the_loader() -> None:
    outbox = SCHEMA["$defs"]["outbox"]
    assert set(outbox["properties"]) == set(cfg.OUTBOX_KEYS)
    assert set(outbox["properties"]["backoff"]["properties"]) == set(cfg.BACKOFF_KEYS)


def test_schema_accepts_an_outbox_section_and_refuses_a_typo() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    document = yaml.safe_load(
        BASE + "outbox: {path: o.db, lease: 30s, ttl: null, backoff: {base: 1s, max: 5m}}\n"
    )
    assert [e.message for e in validator.iter_errors(document)] == []
    document["outbox"]["leese"] = "30s"
    assert list(validator.iter_errors(document))
