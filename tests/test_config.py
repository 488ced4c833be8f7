"""Config loading: typed values, and every mistake reported at file:line:column."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute import ConfigError, load_config, parse_config
from smsroute.units import parse_duration, parse_fraction, parse_rate

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
version: 1
defaults:
  default_region: US
  deadline: 2500ms
  breaker: {failure_rate: 40%, window: 60s, consecutive_failures: null}
providers:
  tw:
    type: twilio
    account_sid: AC123
    auth_token: ${TOKEN}
    from: "+15005550006"
    rate_limit: 6000/m
    timeout: 2s
    prices: {DE: 0.079, default: 0.05}
rules:
  - name: de-otp
    match: {country: [DE], category: otp, prefix: +4915}
    providers: [tw]
  - name: default
    providers: [tw]
"""


def load(text: str, **env: str) -> object:
    return parse_config(text, file="routing.yaml", environ={"TOKEN": "secret", **env})


def problem_of(text: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="routing.yaml", environ={"TOKEN": "secret", **env})
    return info.value


def test_good_config_becomes_typed_values() -> None:
    config = parse_config(GOOD, file="routing.yaml", environ={"TOKEN": "s3"})
    tw = config.providers["tw"]
    assert config.defaults.deadline == 2.5
    assert config.defaults.breaker.failure_rate == 0.4
    assert config.defaults.breaker.window_seconds == 60.0
    assert config.defaults.breaker.consecutive_failures is None
    assert tw.rate_limit == 100.0
    assert tw.timeout == 2.0
    assert tw.options["auth_token"] == "s3"
    assert tw.prices.price_for("DE") == 0.079
    assert tw.prices.price_for("FR") == 0.05
    assert config.rules[0].match.prefixes == ("+4915",)
    assert config.rules[0].match.countries == frozenset({"DE"})


def test_unknown_key_suggests_the_right_one_with_position() -> None:
    err = problem_of(GOOD.replace("  deadline: 2500ms", "  deadlin: 2500ms"))
    assert (err.file, err.line, err.column) == ("routing.yaml", 4, 3)
    assert err.path == "defaults.deadlin"
    assert "did you mean 'deadline'?" in str(err)
    assert str(err).startswith("routing.yaml:4:3: defaults.deadlin: unknown key")


def test_rule_naming_unknown_provider_points_at_it() -> None:
    err = problem_of(
        GOOD.replace(
            "    providers: [tw]\n  - name: default", "    providers: [twx]\n  - name: default"
        )
    )
    assert (err.line, err.column) == (18, 17)
    assert err.path == "rules[0].providers[0]"
    assert "unknown provider 'twx'; did you mean 'tw'?" in str(err)


def test_config_without_catch_all_rule_is_refused_at_load() -> None:
    text = GOOD.replace("  - name: default\n    providers: [tw]\n", "")
    err = problem_of(text)
    assert "no catch-all rule" in str(err)
    assert err.path == "rules"
    assert err.line == 16


def test_catch_all_before_other_rules_is_refused() -> None:
    text = GOOD.replace("rules:\n", "rules:\n  - name: everything\n    providers: [tw]\n")
    err = problem_of(text)
    assert "rule 'everything' matches every message" in str(err)


def test_bad_duration_says_what_is_expected_and_where() -> None:
    err = problem_of(GOOD.replace("timeout: 2s", "timeout: 2 seconds"))
    assert err.path == "providers.tw.timeout"
    assert err.line == 13
    assert "expected a duration like 250ms, 5s or 2m" in str(err)


def test_missing_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD, file="routing.yaml", environ={})
    assert "environment variable TOKEN is not set" in str(info.value)
    assert info.value.line == 10


def test_environment_default_is_used_when_variable_is_unset() -> None:
    config = parse_config(GOOD.replace("${TOKEN}", "${TOKEN:-fallback}"), environ={})
    assert config.providers["tw"].options["auth_token"] == "fallback"


def test_secret_value_never_appears_in_errors() -> None:
    err = problem_of(GOOD.replace("timeout: 2s", "timeout: nope"), TOKEN="hunter2-secret")
    assert "hunter2-secret" not in str(err)


def test_unknown_provider_type_lists_known_types() -> None:
    err = problem_of(GOOD.replace("type: twilio", "type: twillio"))
    assert "unknown provider type 'twillio': did you mean 'twilio'?" in str(err)
    assert err.path == "providers.tw.type"


def test_missing_required_provider_option_is_named() -> None:
    err = problem_of(GOOD.replace("    account_sid: AC123\n", ""))
    assert "needs 'account_sid'" in str(err)
    assert err.path == "providers.tw"


def test_unknown_provider_option_suggests_the_adapters_own() -> None:
    err = problem_of(GOOD.replace("auth_token:", "auth_tokn:"))
    assert "did you mean 'auth_token'?" in str(err)


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = GOOD.replace("timeout: 2s", "timeout: x").replace("deadline: 2500ms", "deadline: y")
    err = problem_of(text)
    assert len(err.problems) == 2
    assert [p.path for p in err.problems] == ["defaults.deadline", "providers.tw.timeout"]


def test_yaml_syntax_error_has_position() -> None:
    err = problem_of("providers:\n  tw: {type: twilio\nrules: []\n")
    assert err.file == "routing.yaml"
    assert err.line is not None
    assert "YAML syntax error" in str(err)


def test_duplicate_key_is_refused() -> None:
    err = problem_of(GOOD.replace("  deadline: 2500ms\n", "  deadline: 2500ms\n  deadline: 3s\n"))
    assert "key 'deadline' is given twice" in str(err)


def test_weighted_rule_needs_weights() -> None:
    err = problem_of(
        GOOD.replace(
            "    match: {country: [DE]", "    strategy: weighted\n    match: {country: [DE]"
        )
    )
    assert "gives no 'weights'" in str(err)


def test_unknown_category_in_match_suggests_declared_ones() -> None:
    err = problem_of(GOOD.replace("category: otp", "category: otpp"))
    assert "unknown category 'otpp': did you mean 'otp'?" in str(err)


def test_declared_category_can_be_matched() -> None:
    text = (
        GOOD.replace("category: otp", "category: alerts")
        + "categories:\n  alerts: {on_timeout: stop}\n"
    )
    config = parse_config(text, environ={"TOKEN": "x"})
    assert config.categories["alerts"].on_timeout == "stop"
    assert config.categories["marketing"].on_timeout == "stop"
    assert config.categories["otp"].on_timeout == "failover"


def test_unquoted_prefix_keeps_its_plus() -> None:
    config = parse_config(GOOD, environ={"TOKEN": "x"})
    assert config.rules[0].match.prefixes == ("+4915",)


def test_bad_country_code_in_match() -> None:
    err = problem_of(GOOD.replace("country: [DE]", "country: [Germany]"))
    assert err.path == "rules[0].match.country[0]"
    assert "ISO 3166 country code" in str(err)


def test_price_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "tw.yaml").write_text(
        "currency: EUR\nprices: {DE: 0.07, default: 0.1}\n"
    )
    cfg = tmp_path / "routing.yaml"
    cfg.write_text(GOOD.replace("prices: {DE: 0.079, default: 0.05}", "prices: prices/tw.yaml"))
    config = load_config(cfg, environ={"TOKEN": "x"})
    table = config.providers["tw"].prices
    assert (table.price_for("DE"), table.price_for("JP"), table.currency) == (0.07, 0.1, "EUR")


def test_bad_price_file_entry_points_into_that_file(tmp_path: Path) -> None:
    (tmp_path / "tw.yaml").write_text("DE: 0.07\nGermany: 0.1\n")
    cfg = tmp_path / "routing.yaml"
    cfg.write_text(GOOD.replace("prices: {DE: 0.079, default: 0.05}", "prices: tw.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={"TOKEN": "x"})
    assert info.value.file.endswith("tw.yaml")
    assert info.value.line == 2


def test_missing_config_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_empty_config_is_refused() -> None:
    assert "the config is empty" in str(problem_of(""))


def test_shipped_example_config_loads() -> None:
    env = {
        "TWILIO_ACCOUNT_SID": "AC1",
        "TWILIO_AUTH_TOKEN": "t",
        "TWILIO_BACKUP_ACCOUNT_SID": "AC2",
        "TWILIO_BACKUP_AUTH_TOKEN": "t",
        "TWILIO_BACKUP_MESSAGING_SERVICE_SID": "MG1",
    }
    config = load_config(ROOT / "config" / "routing.yaml", environ=env)
    assert [r.name for r in config.rules][-1] == "default"
    assert config.providers["twilio-backup"].prices.price_for("US") == 0.0075


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "rate"), [("100/s", 100.0), ("6000/m", 100.0), ("1/2s", 0.5), (7, 7.0)]
)
def test_rates(text: object, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(("text", "fraction"), [("50%", 0.5), (0.25, 0.25), ("0%", 0.0), (0, 0.0)])
def test_fractions(text: object, fraction: float) -> None:
    assert parse_fraction(text) == fraction


def test_fraction_above_100_percent_is_refused() -> None:
    with pytest.raises(ValueError, match="0% to 100%"):
        parse_fraction("150%")


@settings(max_examples=100, deadline=None)
@given(
    user=st.sampled_from(["", "default", "svc"]),
    tail=st.text(
        alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=%", min_size=0, max_size=30
    ),
)
def test_the_redis_password_never_shows_in_the_configs_repr(user: str, tail: str) -> None:
    """The Redis URL's password (from ${REDIS_URL}, as the docs show it) is in the settings
    the router connects with, and in no repr of the config or of its state settings."""
    password = f"Zq7{tail}7qZ"  # nothing else in a config's repr looks like it
    url = f"redis://{user}:{password}@redis.internal:6380/2"
    text = GOOD + "state:\n  backend: redis\n  url: ${REDIS_URL}\n"
    config = parse_config(text, file="routing.yaml", environ={"TOKEN": "secret", "REDIS_URL": url})
    assert config.state.url == url
    for shown in (repr(config), repr(config.state), str(config.state)):
        assert password not in shown
        assert "redis://***@redis.internal:6380/2" in shown


@settings(max_examples=150, deadline=None)
@given(
    value=st.one_of(
        st.text(min_size=0, max_size=80),
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.booleans(),
    )
)
def test_any_hash_key_loads_or_is_one_error_that_never_shows_it(value: object) -> None:
    """``state.hash_key`` (a secret, from the environment): 16 to 64 bytes load, and the
    config's repr shows '***'; anything else is one error at state.hash_key that names
    what is wrong (a length, a type) and never the value."""
    secret = f"Zq7{value}7qZ" if isinstance(value, str) else value
    text = GOOD + "state:\n  backend: redis\n  hash_key: ${HASH_KEY}\n"
    environ = {"TOKEN": "secret"}
    if isinstance(secret, str):
        environ["HASH_KEY"] = secret
    else:
        text = GOOD + f"state:\n  backend: redis\n  hash_key: {json.dumps(secret)}\n"
    size = len(secret.encode("utf-8", "surrogatepass")) if isinstance(secret, str) else -1
    if not 16 <= size <= 64:
        with pytest.raises(ConfigError) as info:
            parse_config(text, file="routing.yaml", environ=environ)
        assert len(info.value.problems) == 1
        assert str(info.value).startswith("routing.yaml:23:13: state.hash_key: expected a secret")
        if isinstance(secret, str):
            assert secret not in str(info.value)
        return
    config = parse_config(text, file="routing.yaml", environ=environ)
    assert config.state.hash_key == secret
    assert secret not in repr(config)
    assert "hash_key='***'" in repr(config.state)
