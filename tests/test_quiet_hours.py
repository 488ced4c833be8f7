"""Quiet hours: a category's messages refused (or held in the outbox) while it is night
for the recipient, in every time zone the number may be in (issue 18)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import make_config, twilio_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import ConfigError, Message, Router
from smsroute.config import QuietHours
from smsroute.quiet import opens_at, zones_for
from smsroute.testing import FakeTwilio, ManualClock

UTC = datetime.UTC
NIGHT = QuietHours(21 * 60, 8 * 60)  # 21:00-08:00


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: str = "UTC") -> float:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def config_text(fake: FakeTwilio | None, quiet: str = '{from: "21:00", to: "08:00"}') -> str:
    block = (
        twilio_block("a", fake)
        if fake is not None
        else '  a: {type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}'
    )
    return f"""
providers:
{block}
categories:
  marketing:
    quiet_hours: {quiet}
rules:
  - name: default
    providers: [a]
"""


# -- the window in one zone and in several ----------------------------------------------


def test_one_zone_inside_and_outside_the_window() -> None:
    sf = "+14155550100"  # America/Los_Angeles
    assert zones_for(sf) == (ZoneInfo("America/Los_Angeles"),)
    assert opens_at(NIGHT, sf, at(2025, 1, 15, 12, tz="America/Los_Angeles")) is None
    late = at(2025, 1, 15, 22, 30, tz="America/Los_Angeles")
    assert opens_at(NIGHT, sf, late) == at(2025, 1, 16, 8, tz="America/Los_Angeles")
    # Just before 08:00 is still quiet; 08:00 itself is not (the window is [from, to)).
    assert opens_at(NIGHT, sf, at(2025, 1, 16, 7, 59, tz="America/Los_Angeles")) == at(
        2025, 1, 16, 8, tz="America/Los_Angeles"
    )
    assert opens_at(NIGHT, sf, at(2025, 1, 16, 8, tz="America/Los_Angeles")) is None


def test_the_day_boundary_in_the_recipients_zone_not_ours() -> None:
    # 06:00 UTC on the 15th is 22:00 on the 14th in Los Angeles (quiet: it opens at 08:00
    # local on the 15th) but 07:00 in Berlin (quiet until 08:00 the same day).
    now = at(2025, 1, 15, 6)
    assert opens_at(NIGHT, "+14155550100", now) == at(2025, 1, 15, 16)  # 08:00 PST
    assert opens_at(NIGHT, "+4915123456789", now) == at(2025, 1, 15, 7)  # 08:00 CET
    # 23:30 UTC: Berlin is past midnight (00:30, quiet), Los Angeles is 15:30 (not).
    late = at(2025, 1, 15, 23, 30)
    assert opens_at(NIGHT, "+14155550100", late) is None
    assert opens_at(NIGHT, "+4915123456789", late) == at(2025, 1, 16, 7)


def test_an_area_code_with_two_zones_waits_for_both() -> None:
    alaska = "+19075550100"  # 907: America/Anchorage (UTC-9) and America/Adak (UTC-10)
    assert set(zones_for(alaska)) == {ZoneInfo("America/Anchorage"), ZoneInfo("America/Adak")}
    # 08:30 in Anchorage is 07:30 in Adak: still quiet there, so wait for 08:00 in Adak.
    now = at(2025, 1, 15, 8, 30, tz="America/Anchorage")
    assert opens_at(NIGHT, alaska, now) == at(2025, 1, 15, 8, tz="America/Adak")
    # 20:30 in Adak is 21:30 in Anchorage: quiet in one zone is enough to wait.
    evening = at(2025, 1, 15, 20, 30, tz="America/Adak")
    assert opens_at(NIGHT, alaska, evening) == at(2025, 1, 16, 8, tz="America/Adak")


@pytest.mark.parametrize(
    ("number", "country"),
    [("+79161234567", "RU"), ("+61412345678", "AU"), ("+18005550100", "NANP toll-free")],
)
def test_a_mobile_number_of_a_country_with_many_zones(number: str, country: str) -> None:
    zones = zones_for(number)
    assert len(zones) > 1, country
    now = at(2025, 3, 10, 0)
    opens = opens_at(NIGHT, number, now)
    moment = now if opens is None else opens
    assert moment != float("inf")
    for zone in zones:  # when it may go, it is day in every one of them
        local = datetime.datetime.fromtimestamp(moment, zone)
        assert 8 * 60 <= local.hour * 60 + local.minute < 21 * 60, (country, zone)
    if opens is not None:  # and a minute earlier it was night in at least one
        assert any(
            not 8 * 60
            <= (lt := datetime.datetime.fromtimestamp(opens - 60, z)).hour * 60 + lt.minute
            < 21 * 60
            for z in zones
        )


def test_brazil_by_area_code() -> None:
    # Brazil has four zones; phonenumbers places a number by its area code.
    acre, sao_paulo = "+5568912345678", "+5511912345678"  # UTC-5 and UTC-3
    assert zones_for(acre) == (ZoneInfo("America/Rio_Branco"),)
    assert zones_for(sao_paulo) == (ZoneInfo("America/Sao_Paulo"),)
    now = at(2025, 5, 20, 11, 30)  # 08:30 in Sao Paulo, 06:30 in Acre
    assert opens_at(NIGHT, sao_paulo, now) is None
    assert opens_at(NIGHT, acre, now) == at(2025, 5, 20, 13)


def test_zones_that_never_share_a_daytime_hour() -> None:
    # Awake only 12:00-13:00 local: Moscow (UTC+3) and Kamchatka (UTC+12) never overlap.
    narrow = QuietHours(13 * 60, 12 * 60)
    assert opens_at(narrow, "+79161234567", at(2025, 3, 10, 0)) == float("inf")


def test_a_fixed_time_zone_for_everyone() -> None:
    berlin = QuietHours(21 * 60, 8 * 60, "Europe/Berlin")
    now = at(2025, 6, 1, 22, tz="Europe/Berlin")  # summer time: UTC+2
    assert opens_at(berlin, "+14155550100", now) == at(2025, 6, 2, 8, tz="Europe/Berlin")


def test_a_window_that_does_not_wrap_midnight() -> None:
    lunch = QuietHours(12 * 60, 14 * 60, "UTC")
    assert opens_at(lunch, "+14155550100", at(2025, 1, 1, 13)) == at(2025, 1, 1, 14)
    assert opens_at(lunch, "+14155550100", at(2025, 1, 1, 15)) is None


# -- send(), explain() and enqueue() -------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as f:
        yield f


async def test_send_inside_quiet_hours_is_refused_before_any_provider(fake: FakeTwilio) -> None:
    clock = ManualClock(at(2025, 1, 15, 23, tz="America/Los_Angeles"))
    async with Router(make_config(config_text(fake)), clock=clock, metrics=False) as router:
        marketing = Message(to="+14155550100", text="Sale!", category="marketing")
        result = await router.send(marketing)
        assert not result.ok
        assert result.attempts == ()
        assert result.quiet_until == datetime.datetime.fromtimestamp(
            at(2025, 1, 16, 8, tz="America/Los_Angeles"), UTC
        )
        assert "quiet hours of category 'marketing'" in (result.reason or "")
        assert "2025-01-16T16:00:00+00:00" in (result.reason or "")
        assert fake.requests == 0
        # Other categories are not concerned.
        otp = await router.send(Message(to="+14155550100", text="Code 1", category="otp"))
        assert otp.ok
        assert otp.quiet_until is None
        # explain says when it could go.
        plan = router.explain(marketing)
        assert plan.quiet_until == result.quiet_until
        assert not plan.quiet_never
        assert (
            router.explain(Message(to="+14155550100", text="x", category="otp")).quiet_until is None
        )
        # In the morning it goes.
        clock.set(at(2025, 1, 16, 8, tz="America/Los_Angeles"))
        assert (await router.send(marketing)).ok
        assert router.explain(marketing).quiet_until is None
        assert fake.requests == 2


async def test_enqueue_holds_the_message_until_the_window_opens(
    fake: FakeTwilio, tmp_path: Path
) -> None:
    text = config_text(fake) + f"outbox:\n  path: {tmp_path / 'outbox.db'}\n"
    night = at(2025, 1, 15, 23, tz="America/Los_Angeles")
    clock = ManualClock(night)
    async with Router(make_config(text), clock=clock, sleep=clock.sleep, metrics=False) as router:
        marketing = Message(to="+14155550100", text="Sale!", category="marketing")
        held = await router.enqueue(marketing)
        now_ok = await router.enqueue(Message(to="+14155550100", text="Code 1", category="otp"))
        opens = at(2025, 1, 16, 8, tz="America/Los_Angeles")
        store = router.outbox
        due = await store.lease("w", 10, night, night + 30)
        assert [m.message_id for m in due] == [now_ok]  # the held one is not due yet
        await store.release("w", None, night)
        later = await store.lease("w", 10, opens - 1, opens + 30)
        assert [m.message_id for m in later] == [now_ok]
        await store.release("w", None, opens - 1)
        at_open = await store.lease("w", 10, opens, opens + 30)
        assert {m.message_id for m in at_open} == {now_ok, held}


async def test_the_worker_holds_a_message_that_became_quiet(
    fake: FakeTwilio, tmp_path: Path
) -> None:
    text = config_text(fake) + f"outbox:\n  path: {tmp_path / 'outbox.db'}\n"
    evening = at(2025, 1, 15, 20, 59, tz="America/Los_Angeles")
    clock = ManualClock(evening)
    async with Router(make_config(text), clock=clock, sleep=clock.sleep, metrics=False) as router:
        message_id = await router.enqueue(
            Message(to="+14155550100", text="Sale!", category="marketing")
        )
        clock.advance(120)  # 21:01: quiet hours began before a worker took it
        worker = router.worker()
        await worker.run_once()
        assert worker.retried == 1
        assert worker.dead == 0
        assert fake.requests == 0
        state = await router.status(message_id)
        assert state is not None
        assert state.status == "retrying"
        opens = at(2025, 1, 16, 8, tz="America/Los_Angeles")
        assert await router.outbox.lease("w", 10, opens - 1, opens + 30) == []
        assert [i.message_id for i in await router.outbox.lease("w", 10, opens, opens + 30)] == [
            message_id
        ]


# -- the config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quiet", "expected"),
    [
        ('{from: 21:00, to: "08:00"}', 'write the time in quotes, e.g. "21:00"'),
        ('{from: "25:00", to: "08:00"}', 'expected a time of day from "00:00" to "23:59"'),
        ('{from: "21:00"}', "quiet_hours needs 'to'"),
        ('{from: "21:00", to: "21:00"}', "the same time: no window"),
        ('{from: "21:00", to: "08:00", timezone: Mars/Olympus}', "unknown time zone"),
        ('{from: "21:00", to: "08:00", tz: UTC}', "tz"),
        ("nightly", "quiet_hours must be a mapping"),
    ],
)
def test_bad_quiet_hours_are_config_errors_with_their_place(quiet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(config_text(None, quiet))
    text = str(info.value)
    assert expected in text
    assert "categories.marketing.quiet_hours" in text
    assert ":6:" in text  # the line of quiet_hours


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2000, 2000),
    st.text(max_size=8),
    st.sampled_from(
        ["21:00", "08:00", "00:00", "23:59", "24:00", "recipient", "UTC", "Europe/Berlin"]
    ),
    st.lists(st.text(max_size=3), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["from", "to", "timezone", "when"]), _VALUES, max_size=4))
def test_any_quiet_hours_value_loads_or_is_one_config_error(value: dict[str, object]) -> None:
    import json

    text = f"""
providers:
  a: {{type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}}
categories:
  marketing:
    quiet_hours: {json.dumps(value)}
rules:
  - {{name: default, providers: [a]}}
"""
    try:
        config = make_config(text)
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = []
    if problems:  # only ConfigError comes out, each problem with its place
        assert all(p.message and str(p).startswith("<config>:") for p in problems)
        return
    window = config.categories["marketing"].quiet_hours
    assert window is not None
    assert 0 <= window.start < 1440
    assert 0 <= window.end < 1440
    assert window.start != window.end
