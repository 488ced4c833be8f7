"""Router.send end to end against fake Twilio servers on 127.0.0.1.

Each test scripts a fault at a fake and checks what the router does next,
as DESIGN.md's outcome table says it must.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_config, twilio_block

from smsroute import (
    BreakerState,
    ConfigError,
    Event,
    Failover,
    InvalidMessage,
    InvalidNumber,
    ManualClock,
    Message,
    MessageFinished,
    Outcome,
    Router,
    SendFailed,
)
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")
MARKETING = Message(to="+4915123456789", text="Sale!", category="marketing")


def two_provider_config(
    a: FakeTwilio,
    b: FakeTwilio,
    *,
    extra_defaults: str = "",
    a_extra: dict[str, object] | None = None,
    rule_extra: str = "",
) -> str:
    return f"""
defaults:
  default_region: US
  breaker: {{consecutive_failures: 3, open_for: 30s, half_open_probes: 1}}
{extra_defaults}
providers:
{twilio_block("primary", a, timeout="300ms", prices="{DE: 0.07, default: 0.05}", **(a_extra or {}))}
{twilio_block("secondary", b, timeout="300ms", prices="{DE: 0.09}")}
rules:
  - name: default
    providers: [primary, secondary]
{rule_extra}
"""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def router(twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock):  # type: ignore[no-untyped-def]
    async with Router(make_config(two_provider_config(twilio_a, twilio_b)), clock=clock) as r:
        yield r


def outcomes(result: object) -> list[tuple[str, Outcome]]:
    return [(a.provider, a.outcome) for a in result.attempts]  # type: ignore[attr-defined]


# -- outcome classes ---------------------------------------------------------------------


async def test_accepted_by_primary(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    result = await router.send(OTP)
    assert result.ok
    assert result.status == "accepted"
    assert result.provider == "primary"
    assert result.provider_message_id == twilio_a.messages[0].provider_message_id
    assert result.provider_message_id.startswith("SM")
    assert (result.segments, result.encoding) == (1, "GSM-7")
    assert result.cost == pytest.approx(0.07)
    assert twilio_a.messages[0].to == "+4915123456789"
    assert twilio_a.messages[0].fields["Attempt"] == "1"
    assert twilio_b.requests == 0


async def test_rejected_number_never_fails_over(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.fail(400, 21211)
    result = await router.send(OTP)
    assert result.status == "failed"
    assert outcomes(result) == [("primary", Outcome.REJECTED)]
    assert result.attempts[0].error_code == "21211"
    assert result.reason is not None
    assert result.reason.startswith("rejected by primary")
    assert twilio_b.requests == 0
    with pytest.raises(SendFailed, match="rejected by primary"):
        result.raise_for_status()


async def test_rejections_do_not_open_the_breaker(router: Router, twilio_a: FakeTwilio) -> None:
    twilio_a.fail(400, 21211)
    for _ in range(10):
        await router.send(OTP)
    assert router.breaker_states()[("primary", None)] is BreakerState.CLOSED


async def test_unroutable_fails_over_without_hurting_health(twilio_b: FakeTwilio) -> None:
    async with FakeTwilio(unroutable_countries={"DE"}) as a:
        config = make_config(two_provider_config(a, twilio_b))
        async with Router(config) as router:
            for _ in range(5):
                result = await router.send(OTP)
                assert outcomes(result) == [
                    ("primary", Outcome.UNROUTABLE),
                    ("secondary", Outcome.ACCEPTED),
                ]
            assert result.attempts[0].error_code == "21408"
            assert router.breaker_states()[("primary", None)] is BreakerState.CLOSED
            assert router.state.health("primary").success_rate == 1.0


async def test_throttled_fails_over_and_pauses_the_provider(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.throttle(retry_after=30)
    first = await router.send(OTP)
    assert outcomes(first) == [("primary", Outcome.THROTTLED), ("secondary", Outcome.ACCEPTED)]
    assert first.attempts[0].retry_after == 30
    twilio_a.heal()
    second = await router.send(OTP)
    assert second.provider == "secondary"
    assert twilio_a.requests == 1  # paused: not called again before Retry-After
    plan = router.explain(OTP)
    assert plan.providers == ("secondary",)
    assert "paused for 30.0s more" in (plan.candidates[-1].skipped or "")
    clock.advance(30)
    third = await router.send(OTP)
    assert third.provider == "primary"


async def test_auth_failure_fails_over_and_opens_breaker_at_once(
    router: Router, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(401)
    result = await router.send(OTP)
    assert outcomes(result) == [("primary", Outcome.AUTH), ("secondary", Outcome.ACCEPTED)]
    assert router.breaker_states()[("primary", None)] is BreakerState.OPEN


async def test_wrong_credentials_are_auth_failures(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    text = two_provider_config(twilio_a, twilio_b).replace(twilio_a.auth_token, "wrong-token")
    async with Router(make_config(text)) as router:
        result = await router.send(OTP)
    assert outcomes(result) == [("primary", Outcome.AUTH), ("secondary", Outcome.ACCEPTED)]
    assert result.attempts[0].error_code == "20003"


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        (lambda f: f.fail(503), "20503"),
        (lambda f: f.fail(500), "20500"),
        (lambda f: f.garbage(), "malformed reply"),
        (lambda f: f.drop(), "connection error"),
    ],
    ids=["503", "500", "garbage", "drop"],
)
async def test_transient_failures_fail_over_to_the_secondary(
    router: Router,
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    fault: Callable[[FakeTwilio], None],
    detail: str,
) -> None:
    fault(twilio_a)
    results = [await router.send(OTP) for _ in range(5)]
    assert all(r.ok and r.provider == "secondary" for r in results)
    assert len(twilio_b.messages) == 5
    first = results[0].attempts[0]
    assert first.outcome is Outcome.TRANSIENT
    assert detail in f"{first.detail} {first.error_code}"


async def test_primary_down_every_message_still_accepted(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    # 50 at once against one in-process fake: the 300 ms attempt timeout of the other
    # tests is not the subject here, and a loaded machine must not turn it into a failure.
    text = two_provider_config(twilio_a, twilio_b).replace("timeout: 300ms", "timeout: 5s")
    await twilio_a.stop()  # connection refused
    async with Router(make_config(text)) as router:
        results = await asyncio.gather(*(router.send(OTP) for _ in range(50)))
        assert all(r.ok for r in results)
        assert len(twilio_b.messages) == 50
        # after 3 consecutive failures the breaker opened and later sends skip the primary
        assert router.breaker_states()[("primary", None)] is BreakerState.OPEN
        assert (await router.send(OTP)).attempts[0].provider == "secondary"


async def test_hanging_primary_times_out_and_otp_fails_over(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.hang()
    result = await router.send(OTP)
    assert outcomes(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]
    assert 0.25 < result.attempts[0].latency < 1.0


async def test_answer_whose_body_stalls_times_out_and_otp_fails_over(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    # Status line and headers arrive at once; the body never completes. The
    # attempt's timeout covers reading the body, not only the connection.
    twilio_a.stall()
    result = await router.send(OTP)
    assert outcomes(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]
    assert 0.25 < result.attempts[0].latency < 1.0


async def test_timeout_on_marketing_stops_to_avoid_a_duplicate(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.hang()
    result = await router.send(MARKETING)
    assert result.status == "failed"
    assert outcomes(result) == [("primary", Outcome.TIMEOUT)]
    assert "on_timeout: stop" in (result.reason or "")
    assert twilio_b.requests == 0


async def test_rule_can_choose_failover_on_timeout_for_marketing(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    config = make_config(
        two_provider_config(twilio_a, twilio_b, rule_extra="    on_timeout: failover")
    )
    twilio_a.hang()
    async with Router(config) as router:
        result = await router.send(MARKETING)
    assert result.provider == "secondary"


async def test_overall_deadline_bounds_the_send(twilio_a: FakeTwilio, twilio_b: FakeTwilio) -> None:
    config = make_config(
        two_provider_config(twilio_a, twilio_b, extra_defaults="  deadline: 400ms")
    )
    twilio_a.hang()
    twilio_b.hang()
    loop = asyncio.get_running_loop()
    async with Router(config) as router:
        started = loop.time()
        result = await router.send(OTP)
        elapsed = loop.time() - started
    assert result.status == "failed"
    assert elapsed < 0.8
    assert [a.outcome for a in result.attempts] == [Outcome.TIMEOUT, Outcome.TIMEOUT]


async def test_max_attempts_limits_providers_called(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    config = make_config(two_provider_config(twilio_a, twilio_b, rule_extra="    max_attempts: 1"))
    twilio_a.fail(503)
    async with Router(config) as router:
        result = await router.send(OTP)
    assert outcomes(result) == [("primary", Outcome.TRANSIENT)]
    assert "max_attempts=1" in (result.reason or "")
    assert twilio_b.requests == 0


async def test_every_provider_failing_gives_a_failed_result_not_an_exception(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.fail(503)
    twilio_b.fail(500)
    result = await router.send(OTP)
    assert result.status == "failed"
    assert not result.ok
    assert "every provider of rule 'default' failed" in (result.reason or "")


# -- breakers through the router -----------------------------------------------------------


async def test_breaker_cycle_closed_open_half_open_closed(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(503)
    for _ in range(3):
        await router.send(OTP)
    assert router.breaker_states()[("primary", None)] is BreakerState.OPEN
    calls = twilio_a.requests
    result = await router.send(OTP)
    assert result.attempts[0].provider == "secondary"  # open: skipped without a call
    assert twilio_a.requests == calls
    twilio_a.heal()
    clock.advance(30)
    assert router.explain(OTP).candidates[0].breaker == "half_open"
    probe = await router.send(OTP)
    assert probe.provider == "primary"
    assert router.breaker_states()[("primary", None)] is BreakerState.CLOSED


async def test_failed_probe_reopens_the_breaker(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(503)
    for _ in range(3):
        await router.send(OTP)
    clock.advance(30)
    result = await router.send(OTP)
    assert outcomes(result)[0] == ("primary", Outcome.TRANSIENT)
    assert router.breaker_states()[("primary", None)] is BreakerState.OPEN


async def test_open_breaker_moves_traffic_to_secondary_in_the_plan(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(401)
    await router.send(OTP)
    plan = router.explain(OTP)
    assert plan.providers == ("secondary",)
    skipped = plan.candidates[-1]
    assert skipped.provider == "primary"
    assert skipped.skipped == "breaker open, half-opens in 30.0s"


async def test_all_breakers_open_tries_the_soonest_to_reopen_as_last_resort(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    twilio_b.fail(401)
    twilio_a.fail(401)
    await router.send(OTP)  # both trip: primary first, at t=0
    clock.advance(10)
    plan = router.explain(OTP)
    assert plan.last_resort
    assert plan.providers == ("primary",)  # reopens at 30 (secondary too, but later on ties: first)
    twilio_a.heal()
    result = await router.send(OTP)
    assert result.ok
    assert result.last_resort
    assert result.provider == "primary"
    twilio_a.fail(503)
    failed = await router.send(OTP)
    assert "last resort" in (failed.reason or "")


async def test_per_country_breaker_keeps_other_countries_flowing(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    text = two_provider_config(twilio_a, twilio_b, a_extra={"breaker_scope": "provider_country"})
    async with Router(make_config(text)) as router:
        twilio_a.fail(503, country="DE")
        for _ in range(3):
            await router.send(OTP)
        assert router.breaker_states()[("primary", "DE")] is BreakerState.OPEN
        us = await router.send(Message(to="+14155550100", text="hi", category="otp"))
        assert us.provider == "primary"
        assert router.explain(OTP).providers == ("secondary",)


# -- limits ------------------------------------------------------------------------------


async def test_rate_limited_provider_is_skipped_when_the_wait_is_too_long(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    text = two_provider_config(
        twilio_a,
        twilio_b,
        extra_defaults="  max_rate_wait: 0s",
        a_extra={"rate_limit": "2/s", "burst": 2},
    )
    async with Router(make_config(text), clock=clock) as router:
        results = [await router.send(OTP) for _ in range(4)]
    assert [r.provider for r in results] == ["primary", "primary", "secondary", "secondary"]
    assert results[2].attempts[0].outcome is Outcome.THROTTLED
    assert results[2].attempts[0].latency == 0.0
    assert twilio_a.requests == 2


async def test_rate_limited_provider_is_waited_for_within_max_rate_wait(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    text = two_provider_config(twilio_a, twilio_b, a_extra={"rate_limit": "10/s", "burst": 1})
    async with Router(make_config(text), clock=clock, sleep=clock.sleep) as router:
        results = [await router.send(OTP) for _ in range(5)]
    assert all(r.provider == "primary" for r in results)
    assert clock.now() == pytest.approx(0.4)  # four waits of 0.1 s, on the manual clock


async def test_concurrency_cap_is_respected(twilio_a: FakeTwilio, twilio_b: FakeTwilio) -> None:
    text = two_provider_config(twilio_a, twilio_b, a_extra={"max_concurrency": 3})
    twilio_a.latency(0.02)
    async with Router(make_config(text)) as router:
        results = await asyncio.gather(*(router.send(OTP) for _ in range(30)))
    assert all(r.provider == "primary" for r in results)
    assert twilio_a.peak_in_flight == 3


# -- messages ----------------------------------------------------------------------------


async def test_bad_number_raises_before_any_provider_is_called(
    router: Router, twilio_a: FakeTwilio
) -> None:
    with pytest.raises(InvalidNumber):
        await router.send(Message(to="+1 555 000 0000", text="hi"))
    assert twilio_a.requests == 0


async def test_national_number_uses_the_configs_default_region(
    router: Router, twilio_a: FakeTwilio
) -> None:
    result = await router.send(Message(to="(415) 555-0100", text="hi"))
    assert result.ok
    assert twilio_a.messages[0].to == "+14155550100"


async def test_empty_text_is_refused(router: Router) -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        await router.send(Message(to="+4915123456789", text="  "))


async def test_text_over_max_segments_is_refused(router: Router, twilio_a: FakeTwilio) -> None:
    with pytest.raises(InvalidMessage, match="11 UCS-2 segments"):
        await router.send(Message(to="+4915123456789", text="ж" * 700))
    assert twilio_a.requests == 0


async def test_unknown_category_is_refused(router: Router) -> None:
    with pytest.raises(InvalidMessage, match="unknown category 'alerts'"):
        await router.send(Message(to="+4915123456789", text="hi", category="alerts"))


async def test_message_repr_hides_number_and_text() -> None:
    text = repr(Message(to="+4915123456789", text="Your code is 123456"))
    assert "4915123456789" not in text
    assert "123456" not in text.replace("+49151", "")


async def test_message_ids_are_unique(router: Router) -> None:
    results = await asyncio.gather(*(router.send(OTP) for _ in range(20)))
    assert len({r.message_id for r in results}) == 20


async def test_status_callback_is_sent_when_webhook_url_is_configured(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    text = two_provider_config(
        twilio_a, twilio_b, extra_defaults="  webhook_url: https://hooks.example.com/sms"
    )
    async with Router(make_config(text)) as router:
        result = await router.send(OTP)
    callback = twilio_a.messages[0].status_callback
    assert (
        callback == f"https://hooks.example.com/sms/primary/status?smsroute_id={result.message_id}"
    )


async def test_no_status_callback_without_webhook_url(router: Router, twilio_a: FakeTwilio) -> None:
    await router.send(OTP)
    assert "StatusCallback" not in twilio_a.messages[0].fields


async def test_attempt_number_counts_providers_tried(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.fail(503)
    await router.send(OTP)
    assert twilio_b.messages[0].fields["Attempt"] == "2"


# -- explain -----------------------------------------------------------------------------


async def test_explain_does_no_io(
    router: Router, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    plan = router.explain(OTP)
    assert (plan.rule, plan.strategy, plan.country) == ("default", "priority", "DE")
    assert plan.providers == ("primary", "secondary")
    assert [c.price for c in plan.candidates] == [pytest.approx(0.07), pytest.approx(0.09)]
    assert all(c.breaker == "closed" and c.skipped is None for c in plan.candidates)
    assert plan.to == "+49151******89"
    assert twilio_a.requests == twilio_b.requests == 0


async def test_explain_price_counts_segments(router: Router) -> None:
    plan = router.explain(Message(to="+4915123456789", text="x" * 200))
    assert plan.segments == 2
    assert plan.candidates[0].price == pytest.approx(0.14)


# -- hooks ---------------------------------------------------------------------------------


async def test_hooks_see_failover_and_finish_events(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    seen: list[Event] = []
    twilio_a.fail(503)
    async with Router(
        make_config(two_provider_config(twilio_a, twilio_b)), hooks=[seen.append]
    ) as router:
        await router.send(OTP)
    failovers = [e for e in seen if isinstance(e, Failover)]
    assert [(f.from_provider, f.to_provider, f.reason) for f in failovers] == [
        ("primary", "secondary", "transient")
    ]
    finished = [e for e in seen if isinstance(e, MessageFinished)]
    assert [(f.status, f.provider, f.category, f.country) for f in finished] == [
        ("accepted", "secondary", "otp", "DE")
    ]


async def test_a_failing_hook_does_not_break_sending(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    async with Router(
        make_config(two_provider_config(twilio_a, twilio_b)), hooks=[broken]
    ) as router:
        assert (await router.send(OTP)).ok


# -- reload ------------------------------------------------------------------------------------


async def test_reload_swaps_the_config(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(two_provider_config(twilio_a, twilio_b))
    async with Router.from_yaml(path) as router:
        path.write_text(
            two_provider_config(twilio_a, twilio_b).replace(
                "providers: [primary, secondary]", "providers: [secondary, primary]"
            )
        )
        router.reload()
        assert (await router.send(OTP)).provider == "secondary"


async def test_reload_with_a_bad_config_keeps_the_old_one(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    path = tmp_path / "routing.yaml"
    good = two_provider_config(twilio_a, twilio_b)
    path.write_text(good)
    async with Router.from_yaml(path) as router:
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            good.replace("providers: [primary, secondary]", "providers: [primary, nope]")
        )
        with pytest.raises(ConfigError) as info:
            router.reload(bad)
        assert info.value.file == str(bad)
        assert "unknown provider 'nope'" in str(info.value)
        assert router.config.source == str(path)
        assert (await router.send(OTP)).provider == "primary"


async def test_breaker_state_survives_a_reload(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(two_provider_config(twilio_a, twilio_b))
    async with Router.from_yaml(path) as router:
        twilio_a.fail(401)
        await router.send(OTP)
        router.reload()
        assert router.explain(OTP).providers == ("secondary",)
