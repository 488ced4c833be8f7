"""The ``guards`` config section and a rule's ``guards`` / ``on_budget`` keys (issue 19).

Every mistake is one :class:`ConfigError` problem at the line of the value, saying what
to do; a property test throws arbitrary YAML values at every part of the section and
sees nothing but a loaded config or a ConfigError whose problems all have a place, and
a router reloading such a config keeps the one it runs.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import ConfigError, Router, parse_config
from smsroute.guardconfig import Anomaly, Budget, GuardSet, Velocity

BASE = """\
providers:
  a:
    type: twilio
    account_sid: AC123
    auth_token: secret
    from: "+15005550006"
    prices: {DE: 0.08, default: 0.05}
  b:
    type: twilio
    account_sid: AC123
    auth_token: secret
    from: "+15005550006"
rules:
  - name: otp
    match: {category: otp}
    providers: [a, b]
    on_budget: cheapest_under_cap
    guards:
      countries: {deny: [RU]}
  - name: default
    providers: [a]
"""


def load(guards: str) -> Any:
    return parse_config(BASE + textwrap.dedent(guards))


def test_the_suggested_shape_loads() -> None:
    config = load(
        """
        guards:
          otp:
            countries: {allow: [US, CA, DE, GB]}
            velocity:
              - {per: prefix, digits: 7, max: 20, window: 10m}
              - {per: number, max: 5, window: 1h}
              - {per: country, max: 500, window: 1m}
            anomaly: {window: 5m, baseline: 1h, factor: 5, min_count: 50, action: require_override}
          budgets:
            - {scope: provider, name: a, limit: 500, per: day}
            - {scope: category, name: marketing, limit: 2000, per: month}
            - {scope: country, name: id, limit: 50, per: hour}
            - {scope: tag, name: campaign-42, limit: 100, per: day}
        """
    )
    otp = config.guards.categories["otp"]
    assert otp == GuardSet(
        allow=frozenset({"US", "CA", "DE", "GB"}),
        velocity=(
            Velocity("prefix", 20, 600.0, 7),
            Velocity("number", 5, 3600.0),
            Velocity("country", 500, 60.0),
        ),
        anomaly=Anomaly(300.0, 3600.0, 5.0, 50, "require_override"),
    )
    assert config.guards.budgets[2] == Budget("country", "ID", 50.0, "hour")
    assert [b.label for b in config.guards.budgets] == [
        "provider:a",
        "category:marketing",
        "country:ID",
        "tag:campaign-42",
    ]
    rule = config.rules[0]
    assert rule.on_budget == "cheapest_under_cap"
    assert rule.guards == GuardSet(deny=frozenset({"RU"}))
    assert config.rules[1].guards is None
    assert config.rules[1].on_budget == "refuse"


@pytest.mark.parametrize(
    ("guards", "line", "path", "fragment"),
    [
        ("guards:\n  otpp: {}\n", 23, "guards.otpp", "unknown key 'otpp'"),
        (
            "guards:\n  otp:\n    velocity:\n      - {per: prefix, max: 5, window: 1m}\n",
            25,
            "guards.otp.velocity[0]",
            "needs 'digits'",
        ),
        (
            "guards:\n  otp:\n    velocity:\n      - {per: number, digits: 6, max: 5, window: 1m}\n",
            25,
            "guards.otp.velocity[0].digits",
            "per prefix only",
        ),
        (
            "guards:\n  otp:\n    velocity:\n      - {per: numbr, max: 5, window: 1m}\n",
            25,
            "guards.otp.velocity[0].per",
            "did you mean 'number'",
        ),
        (
            "guards:\n  otp:\n    velocity:\n      - {per: number, max: 0, window: 1m}\n",
            25,
            "guards.otp.velocity[0].max",
            "from 1 to 100000",
        ),
        (
            "guards:\n  otp:\n    velocity:\n      - {per: number, max: 5}\n",
            25,
            "guards.otp.velocity[0]",
            "needs 'window'",
        ),
        (
            "guards:\n  otp:\n    countries: {allow: [DE], deny: [RU]}\n",
            24,
            "guards.otp.countries",
            "not both",
        ),
        (
            "guards:\n  otp:\n    countries: {allow: [XX]}\n",
            24,
            "guards.otp.countries.allow",
            "ISO 3166",
        ),
        (
            "guards:\n  otp:\n    anomaly: {window: 5m, baseline: 1m}\n",
            24,
            "guards.otp.anomaly.baseline",
            "from 1 to 100 times the window",
        ),
        (
            "guards:\n  otp:\n    anomaly: {factor: 1}\n",
            24,
            "guards.otp.anomaly.factor",
            "above 1",
        ),
        (
            "guards:\n  otp:\n    anomaly: {action: block}\n",
            24,
            "guards.otp.anomaly.action",
            "choose one of refuse, require_override",
        ),
        (
            "guards:\n  budgets:\n    - {scope: provider, name: c, limit: 5, per: day}\n",
            24,
            "guards.budgets[0].name",
            "unknown provider 'c'",
        ),
        (
            "guards:\n  budgets:\n    - {scope: provider, name: a, limit: 5, per: week}\n",
            24,
            "guards.budgets[0].per",
            "choose one of hour, day, month",
        ),
        (
            "guards:\n  budgets:\n    - {scope: provider, name: a, limit: -5, per: day}\n",
            24,
            "guards.budgets[0].limit",
            "above 0",
        ),
        (
            "guards:\n  budgets:\n    - {scope: provider, name: a, limit: 5, per: day}\n"
            "    - {scope: provider, name: a, limit: 9, per: month}\n",
            25,
            "guards.budgets[1]",
            "one budget per scope and name",
        ),
        (
            "guards:\n  budgets:\n    - {scope: category, name: spam, limit: 5, per: day}\n",
            24,
            "guards.budgets[0].name",
            "unknown category 'spam'",
        ),
    ],
)
def test_each_mistake_is_one_problem_at_its_place(
    guards: str, line: int, path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + guards, file="routing.yaml")
    problems = info.value.problems
    assert [(p.line, p.path) for p in problems] == [(line, path)], str(info.value)
    assert fragment in problems[0].message


def test_a_rules_on_budget_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.replace("on_budget: cheapest_under_cap", "on_budget: cheapest"))
    assert [(p.line, p.path) for p in info.value.problems] == [(17, "rules[0].on_budget")]
    assert "did you mean 'cheapest_under_cap'" in info.value.problems[0].message


def test_budgets_across_currencies_are_refused() -> None:
    text = BASE.replace(
        '    from: "+15005550006"\nrules:', '    from: "+15005550006"\n    currency: EUR\nrules:'
    )
    with pytest.raises(ConfigError, match="several currencies"):
        parse_config(
            text + "guards:\n  budgets:\n    - {scope: country, name: DE, limit: 5, per: day}\n"
        )
    parse_config(
        text + "guards:\n  budgets:\n    - {scope: provider, name: b, limit: 5, per: day}\n"
    )


# -- property: any value anywhere in the section ------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "1h", "5m", "0s", "99999999h", "DE", "US", "xx", "number", "prefix",
                     "country", "refuse", "require_override", "provider", "a", "otp", "day",
                     "month", "hour", "tag", "category", "budgets", "-1", "1e400"]),
    st.text(max_size=8),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(sorted({"per", "digits", "max", "window", "baseline", "factor",
                                    "min_count", "action", "scope", "name", "limit", "allow",
                                    "deny", "countries", "velocity", "anomaly", "otp",
                                    "budgets", "x"})),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=20,
)  # fmt: skip


def shaped() -> st.SearchStrategy[Any]:
    """Mostly well-formed sections with hostile values in them."""
    velocity = st.fixed_dictionaries(
        {"per": values, "max": values, "window": values},
        optional={"digits": values},
    )
    guard_set = st.fixed_dictionaries(
        {},
        optional={
            "countries": st.fixed_dictionaries({}, optional={"allow": values, "deny": values}),
            "velocity": st.lists(velocity, max_size=3),
            "anomaly": st.dictionaries(
                st.sampled_from(["window", "baseline", "factor", "min_count", "action"]), values
            ),
        },
    )
    budget = st.fixed_dictionaries(
        {"scope": values, "name": values, "limit": values, "per": values}
    )
    return st.fixed_dictionaries(
        {},
        optional={"otp": guard_set, "marketing": values, "budgets": st.lists(budget, max_size=3)},
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.one_of(values, shaped()), rule_guards=st.one_of(st.just(None), values))
def test_only_config_errors_with_a_place_come_out(section: Any, rule_guards: Any) -> None:
    # JSON is YAML: the generated values are written as flow YAML.
    text = (
        BASE.replace(
            "    guards:\n      countries: {deny: [RU]}\n",
            f"    guards: {json.dumps(rule_guards, allow_nan=True)}\n",
        )
        + f"guards: {json.dumps(section, allow_nan=True)}\n"
    )
    try:
        parse_config(text, file="routing.yaml")
    except ConfigError as exc:
        problems = exc.problems
    else:
        return
    assert problems
    for problem in problems:
        assert problem.file == "routing.yaml"
        assert problem.line is not None, str(problem)


async def test_a_reload_with_bad_guards_keeps_the_running_config(tmp_path: Path) -> None:
    good = tmp_path / "routing.yaml"
    good.write_text(BASE + "guards:\n  otp:\n    countries: {allow: [DE]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "guards:\n  otp:\n    countries: {allow: DE}\n")
    async with Router.from_yaml(good, metrics=False) as router:
        before = router.config
        with pytest.raises(ConfigError) as info:
            router.reload(bad)
        assert info.value.line == 24
        assert router.config is before


def test_the_schema_describes_every_guard_key() -> None:
    from smsroute import guardconfig

    schema = json.loads((Path(__file__).resolve().parent.parent / "config/schema.json").read_text())
    defs = schema["$defs"]
    assert set(defs["guard_set"]["properties"]) == guardconfig.GUARD_SET_KEYS
    assert set(defs["guard_set"]["properties"]["countries"]["properties"]) == (
        guardconfig.COUNTRIES_KEYS
    )
    assert set(defs["velocity"]["properties"]) == guardconfig.VELOCITY_KEYS
    assert set(defs["anomaly"]["properties"]) == guardconfig.ANOMALY_KEYS
    assert set(defs["budget"]["properties"]) == guardconfig.BUDGET_KEYS
    assert set(defs["guards"]["properties"]) == {guardconfig.BUDGETS_KEY}
    assert defs["rule"]["properties"]["on_budget"]["enum"] == list(guardconfig.ON_BUDGET)
