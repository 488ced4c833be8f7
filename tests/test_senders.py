"""Senders per destination (issue 18): ``from`` maps by country and number type, pools
(sticky across routers), the country capability table at load and at send time, explain.

Sends go to fake Twilio servers on 127.0.0.1: what a fake records is what was on the wire.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import (
    ConfigError,
    Message,
    Outcome,
    Router,
    SenderPool,
    load_config,
    parse_config,
    sender_capabilities,
)
from smsroute.cli import main
from smsroute.errors import ConfigProblem
from smsroute.runtime import Runtime
from smsroute.sendercaps import kind, parse_table, problem
from smsroute.senders import sticky_member
from smsroute.testing import FakeTwilio

US = "+14152001234"
CA = "+16135550123"
IN_MOBILE = "+919876543210"
IN_FIXED = "+911123456789"
CN = "+8613800138000"
DE = "+4915123456789"
US_POOL = ["+14155550100", "+16285550100", "+12125550100"]


def provider(name: str, fake: FakeTwilio | None, sender: Any) -> str:
    """A twilio provider block whose ``from`` is ``sender`` (any YAML value)."""
    url = fake.url if fake else "http://127.0.0.1:9"
    sid = fake.account_sid if fake else "AC1"
    token = fake.auth_token if fake else "secret"
    body = {
        name: {
            "type": "twilio",
            "base_url": url,
            "account_sid": sid,
            "auth_token": token,
            "timeout": "2s",
        }
    }
    if sender is not None:
        body[name]["from"] = sender
    return textwrap.indent(yaml.safe_dump(body, sort_keys=False), "  ")


def config_text(*providers: str, rule_from: Any = None, match: str = "") -> str:
    names = [p.strip().split(":")[0] for p in providers]
    rule = f"  - name: default\n    providers: [{', '.join(names)}]\n"
    if rule_from is not None:
        rule = (
            f"  - name: special\n    match: {match}\n    providers: [{', '.join(names)}]\n"
            f"    from: {json.dumps(rule_from)}\n" + rule
        )
    return "providers:\n" + "".join(providers) + "rules:\n" + rule


MAP = {
    "US": {"pool": US_POOL, "sticky": True},
    "CA": "+16135550100",
    "GB": "ACME",
    "IN": {"mobile": "ACMEIN", "default": "+919000000000"},
    "default": "ACME",
    "fallback": "+14155550100",
}


def plan_sender(router: Router, to: str, sender: str | None = None) -> tuple[str | None, str]:
    plan = router.explain(Message(to=to, text="hi", sender=sender))
    c = plan.candidates[0]
    assert c.sender_why is not None
    return c.sender, c.sender_why


# -- the map --------------------------------------------------------------------------


def test_the_map_is_looked_up_by_country_then_number_type_then_default() -> None:
    router = Router(parse_config(config_text(provider("tw", None, MAP))), metrics=False)
    assert plan_sender(router, CA) == ("+16135550100", "provider 'tw' from: CA")
    sender, why = plan_sender(router, IN_MOBILE)
    assert (sender, why.split(";")[0]) == ("ACMEIN", "provider 'tw' from: IN mobile")
    sender, why = plan_sender(router, IN_FIXED)
    assert (sender, why) == ("+919000000000", "provider 'tw' from: IN")
    assert plan_sender(router, DE) == ("ACME", "provider 'tw' from: default")
    sender, why = plan_sender(router, US)
    assert sender in US_POOL
    assert why == "provider 'tw' from: US (pool member, sticky for this number)"


def test_a_fixed_line_or_mobile_number_takes_the_mobile_entry() -> None:
    text = config_text(provider("tw", None, {"US": {"mobile": "+14155550100"}}))
    router = Router(parse_config(text), metrics=False)
    assert plan_sender(router, US) == ("+14155550100", "provider 'tw' from: US mobile")


def test_the_default_reaching_a_refusing_country_gives_way_to_the_fallback() -> None:
    router = Router(parse_config(config_text(provider("tw", None, MAP))), metrics=False)
    sender, why = plan_sender(router, CN)
    assert sender == "+14155550100"
    assert why.startswith("fallback of provider 'tw', because provider 'tw' from: default: ")
    assert "CN refuses alphanumeric sender IDs ('ACME')" in why


def test_a_rules_from_wins_over_the_providers() -> None:
    text = config_text(
        provider("tw", None, MAP),
        rule_from={"DE": "SHOP", "default": "SHOP"},
        match="{country: DE}",
    )
    router = Router(parse_config(text), metrics=False)
    assert plan_sender(router, DE) == ("SHOP", "rule 'special' from: DE")
    assert plan_sender(router, CA) == ("+16135550100", "provider 'tw' from: CA")


def test_a_plain_string_is_sent_as_written_and_not_checked() -> None:
    router = Router(parse_config(config_text(provider("tw", None, "ACME"))), metrics=False)
    assert not router.dispatcher.runtime.senders.active  # the send path asks nothing
    assert plan_sender(router, US) == ("ACME", "provider 'tw' from (a plain string, not checked)")


# -- pools ----------------------------------------------------------------------------


def numbers(count: int) -> list[str]:
    return [f"+1415{200 + i // 10_000:03d}{i % 10_000:04d}" for i in range(count)]


async def test_a_sticky_pool_gives_each_number_the_same_sender_on_two_routers() -> None:
    text = config_text(provider("tw", None, {"US": {"pool": US_POOL, "sticky": True}}))
    async with FakeTwilio() as fake:
        text = config_text(
            provider("tw", fake, {"US": {"pool": US_POOL, "sticky": True}}),
        )
        to = numbers(40)
        seen: list[dict[str, str | None]] = []
        for _ in range(2):  # two routers: two replicas, or one before and after a restart
            fake.messages.clear()
            async with Router(parse_config(text), metrics=False) as router:
                for n in to:
                    assert (await router.send(Message(to=n, text="hi"))).ok
            seen.append({m.to: m.sender for m in fake.messages})
    assert seen[0] == seen[1]
    assert set(seen[0]) == set(to)
    assert set(seen[0].values()) == set(US_POOL)  # 40 numbers spread over all three


def test_removing_a_pool_member_moves_only_its_own_numbers() -> None:
    members = ["+14155550100", "+16285550100", "+12125550100", "+13105550100"]
    to = numbers(2000)
    before = {n: sticky_member(members, n) for n in to}
    after = {n: sticky_member([m for m in members if m != members[2]], n) for n in to}
    moved = [n for n in to if before[n] != after[n]]
    assert all(before[n] == members[2] for n in moved)
    assert {n for n in to if before[n] == members[2]} == set(moved)
    assert 0.2 < len(moved) / len(to) < 0.3  # its share, about a quarter
    # Adding a member back takes only its share: the others stay where they were.
    assert {n: sticky_member(members, n) for n in to} == before


def test_the_pick_is_a_stable_hash_not_pythons_hash() -> None:
    # blake2b of "member\nnumber": fixed across processes (PYTHONHASHSEED does not matter).
    assert sticky_member(US_POOL, "+14152001234") == sticky_member(
        list(reversed(US_POOL)), "+14152001234"
    )
    picks = [sticky_member(US_POOL, n) for n in numbers(5)]
    assert picks == [sticky_member(US_POOL, n) for n in numbers(5)]


async def test_a_pool_without_sticky_takes_turns() -> None:
    async with FakeTwilio() as fake:
        text = config_text(provider("tw", fake, {"default": {"pool": US_POOL}}))
        async with Router(parse_config(text), metrics=False) as router:
            for _ in range(6):
                assert (await router.send(Message(to=US, text="hi"))).ok
    assert [m.sender for m in fake.messages] == US_POOL * 2


def test_pools_parse_into_pool_objects() -> None:
    config = parse_config(config_text(provider("tw", None, MAP)))
    senders = config.providers["tw"].senders
    assert senders is not None
    assert senders.entries[("US", None)] == SenderPool(tuple(US_POOL), sticky=True)


# -- the capability table at load time --------------------------------------------------


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize(
    ("sender_map", "fragment", "message"),
    [
        ({"GB": "ACME", "US": "ACME"}, "US: ACME", "US refuses alphanumeric sender IDs ('ACME')"),
        (
            {"CA": "+14155550100"},
            "CA: '+14155550100'",
            "CA takes only its own numbers as senders, and +14155****00 is a number of US",
        ),
        (
            {"US": {"pool": ["+14155550100", "ACME"]}},
            "- ACME",
            "US refuses alphanumeric sender IDs ('ACME')",
        ),
        ({"CN": {"mobile": "ACME"}}, "mobile: ACME", "CN refuses alphanumeric sender IDs"),
        ({"default": "ACME"}, "default: ACME", "add a numeric 'fallback'"),
        (
            {"default": "ACME", "fallback": "OTHER"},
            "fallback: OTHER",
            "fallback 'OTHER' is an alphanumeric ID",
        ),
    ],
    ids=["alpha-to-US", "US-number-to-CA", "pool-member", "number-type", "default", "fallback"],
)
def test_a_sender_the_country_refuses_is_a_config_error_at_its_line(
    tmp_path: Path, sender_map: dict[str, Any], fragment: str, message: str
) -> None:
    text = config_text(provider("tw", None, sender_map))
    error = load_error(tmp_path, text)
    assert f"routing.yaml:{line_of(text, fragment)}:" in error
    assert message in error
    assert "providers.tw.from" in error


def test_a_rules_default_is_checked_against_the_countries_it_matches(tmp_path: Path) -> None:
    text = config_text(provider("tw", None, None), rule_from="ACME", match="{country: [GB, US]}")
    error = load_error(tmp_path, text)
    line = line_of(text, 'from: "ACME"')
    assert f"routing.yaml:{line}:" in error
    assert "US refuses alphanumeric sender IDs ('ACME'), and this rule matches US" in error
    # The same rule without US is fine: GB takes alphanumeric IDs.
    parse_config(config_text(provider("tw", None, None), rule_from="ACME", match="{country: GB}"))


def test_the_table_covers_the_big_markets_with_sources() -> None:
    table = sender_capabilities()
    for country in [
        "US",
        "CA",
        "BR",
        "MX",
        "IN",
        "CN",
        "ID",
        "DE",
        "FR",
        "GB",
        "ES",
        "IT",
        "NL",
        "BE",
        "PL",
        "TR",
        "RU",
        "SA",
        "AE",
        "EG",
        "NG",
        "ZA",
        "KE",
        "JP",
        "KR",
        "AU",
        "NZ",
        "PH",
        "VN",
        "TH",
        "MY",
        "SG",
        "AR",
        "CO",
        "CL",
        "PE",
        "PK",
        "BD",
        "UA",
        "IL",
    ]:
        assert table[country].sources, country
    assert table["US"].alphanumeric == "refused"
    assert table["US"].numeric == "local"
    assert table["GB"].alphanumeric == "allowed"
    with pytest.raises(ValueError, match="XX needs a known ISO code"):
        parse_table({"countries": {"XX": {"alphanumeric": "allowed", "numeric": "any"}}})


def test_sender_kinds_and_checks() -> None:
    assert [kind(s) for s in ("ACME", "+14155550100", "4930123456", "12345")] == [
        "alphanumeric",
        "long_code",
        "long_code",
        "short_code",
    ]
    assert problem("12345", "CA") is None  # short codes are national: not checked
    assert problem("ACME", "XK") is None  # a country the table does not list: not checked
    assert problem("+16135550100", "CA") is None


# -- the capability table at send time --------------------------------------------------


async def test_a_callers_sender_the_country_refuses_is_replaced_on_the_wire() -> None:
    async with FakeTwilio() as fake:
        text = config_text(provider("tw", fake, MAP))
        async with Router(parse_config(text), metrics=False) as router:
            result = await router.send(Message(to=CA, text="hi", sender="ACME"))
            ok_elsewhere = await router.send(Message(to=DE, text="hi", sender="MYSHOP"))
    assert result.ok
    assert ok_elsewhere.ok
    assert [m.sender for m in fake.messages] == ["+16135550100", "MYSHOP"]


async def test_a_default_that_cannot_reach_the_country_uses_the_fallback_on_the_wire() -> None:
    async with FakeTwilio() as fake:
        sender_map = {"default": "+14155550100", "fallback": "+16135550100"}
        async with Router(parse_config(config_text(provider("tw", fake, sender_map)))) as router:
            assert (await router.send(Message(to=CA, text="hi"))).ok
            assert (await router.send(Message(to=US, text="hi"))).ok
    assert [m.sender for m in fake.messages] == ["+16135550100", "+14155550100"]


async def test_no_usable_sender_refuses_before_any_provider_is_called() -> None:
    async with FakeTwilio() as fake:
        text = config_text(provider("tw", fake, {"GB": "ACME"}))
        async with Router(parse_config(text), metrics=False) as router:
            result = await router.send(Message(to=US, text="hi", sender="ACME"))
            status = await router.status(result.message_id)
    assert fake.messages == []
    assert not result.ok
    assert result.attempts == ()
    assert result.outcome is Outcome.REJECTED
    assert result.reason == (
        "no usable sender for US: tw: the message's own sender cannot be used: US refuses "
        "alphanumeric sender IDs ('ACME'), and no usable fallback"
    )
    assert status is not None
    assert status.status == "failed"


async def test_a_provider_without_a_usable_sender_is_passed_over_for_one_with() -> None:
    async with FakeTwilio() as a, FakeTwilio() as b:
        text = config_text(
            provider("alpha", a, {"default": "ACME", "fallback": "+14155550100"}),
            provider("beta", b, {"US": "+14155550100"}),
        )
        async with Router(parse_config(text), metrics=False) as router:
            result = await router.send(Message(to=CA, text="hi", sender="ACME"))
    # alpha: ACME is refused in CA, its fallback is a US number; beta has no CA entry and
    # the caller's ACME is refused: neither can send... so both are refused:
    assert not result.ok
    assert a.messages == []
    assert b.messages == []
    assert "alpha: " in (result.reason or "")
    assert "beta: " in (result.reason or "")
    async with FakeTwilio() as a, FakeTwilio() as b:
        text = config_text(
            provider("alpha", a, {"GB": "ACME"}),
            provider("beta", b, {"CA": "+16135550100"}),
        )
        async with Router(parse_config(text), metrics=False) as router:
            result = await router.send(Message(to=CA, text="hi", sender="ACME"))
    assert result.ok
    assert result.provider == "beta"
    assert a.messages == []
    assert [m.sender for m in b.messages] == ["+16135550100"]


# -- explain ----------------------------------------------------------------------------


def test_explain_names_the_refusal_as_the_reason_a_provider_is_skipped() -> None:
    router = Router(parse_config(config_text(provider("tw", None, {"GB": "ACME"}))))
    plan = router.explain(Message(to=US, text="hi", sender="ACME"))
    (c,) = plan.candidates
    assert c.sender is None
    assert c.skipped is not None
    assert c.skipped.startswith("no usable sender: ")
    assert plan.providers == ()


def test_explain_notes_a_country_that_needs_registration() -> None:
    router = Router(parse_config(config_text(provider("tw", None, MAP))))
    assert plan_sender(router, IN_MOBILE)[1] == (
        "provider 'tw' from: IN mobile; IN delivers alphanumeric IDs only once registered"
    )


def test_explain_does_not_take_a_pools_turn() -> None:
    router = Router(parse_config(config_text(provider("tw", None, {"default": {"pool": US_POOL}}))))
    assert {plan_sender(router, US)[0] for _ in range(3)} == {US_POOL[0]}


def test_the_cli_explain_prints_each_providers_sender(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(config_text(provider("tw", None, MAP)))
    result = CliRunner().invoke(main, ["explain", str(path), CN])
    assert result.exit_code == 0, result.output
    assert (
        "sender   tw: +14155550100  (fallback of provider 'tw', because provider 'tw' from: "
        "default: CN refuses alphanumeric sender IDs ('ACME'))"
    ) in result.output


# -- the send path when nothing is configured -------------------------------------------


def test_without_maps_the_runtime_has_nothing_to_check() -> None:
    config = make_config(config_text(provider("tw", None, "+15005550006")))
    assert not Runtime(config).senders.active


# -- any `from` map: ConfigError with a place, or a config -------------------------------

SENDERS = st.sampled_from(
    ["ACME", "+14155550100", "+16135550100", "12345", "", "+", "A" * 30, 12, 0, True, None, 1.5]
)
KEYS = st.sampled_from(
    ["US", "CA", "GB", "IN", "CN", "us", "XX", "NO", "default", "fallback", "mobile", "pool"]
)
VALUES = st.recursive(
    st.one_of(SENDERS, st.lists(SENDERS, max_size=3)),
    lambda inner: st.one_of(
        st.dictionaries(KEYS, inner, max_size=4),
        st.fixed_dictionaries({"pool": st.lists(SENDERS, max_size=4)}, optional={"sticky": inner}),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, where=st.sampled_from(["provider", "rule"]))
def test_any_from_value_gives_a_config_or_config_errors_with_a_place(
    value: Any, where: str
) -> None:
    if where == "provider":
        text = config_text(provider("tw", None, value))
    else:
        text = config_text(provider("tw", None, None), rule_from=value, match="{country: US}")
    problems: list[ConfigProblem] = []
    try:
        config = parse_config(text, file="routing.yaml")
    except ConfigError as exc:  # the only exception: anything else fails the test
        problems = list(exc.problems) or [
            ConfigProblem("no problem listed", file="", line=None, column=None, path="")
        ]
    if problems:
        for p in problems:
            assert p.file == "routing.yaml", p
            assert p.line is not None, p
        return
    # A config that loads sends nothing unusable: every map entry passed the table.
    senders = config.rules[0].senders if where == "rule" else config.providers["tw"].senders
    if senders is not None:
        for (country, _), choice in senders.entries.items():
            members = choice.members if isinstance(choice, SenderPool) else (choice,)
            assert all(problem(m, country) is None for m in members)
