"""One rule over three different adapters (Twilio, Vonage, Telnyx), each failing in turn.

The rule uses ``strategy: cheapest`` with per-country prices, so each provider
comes first for one country and each can be made to fail where it matters:

    DE: twilio -> vonage -> telnyx
    FR: vonage -> telnyx -> twilio
    US: telnyx -> twilio -> vonage

Every message must still be accepted, and the fakes' own counts show who was
called and who took each message.  Breakers are set not to open, so the counts
depend only on the scripted faults (breakers have their own tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import make_config
from provider_support import attempts

from smsroute import Config, ManualClock, Message, Outcome, Router, SendResult
from smsroute.testing import FakeTelnyx, FakeTwilio, FakeVonage
from smsroute.testing.fake import country_of

NUMBERS = {"DE": "+4915123456789", "FR": "+33612345678", "US": "+12025550123"}
ORDER = {
    "DE": ("twilio", "vonage", "telnyx"),
    "FR": ("vonage", "telnyx", "twilio"),
    "US": ("telnyx", "twilio", "vonage"),
}


def otp(country: str) -> Message:
    return Message(to=NUMBERS[country], text="Your code is 123456", category="otp")


def three_adapter_config(twilio: FakeTwilio, vonage: FakeVonage, telnyx: FakeTelnyx) -> Config:
    return make_config(
        f"""
        defaults:
          default_region: US
          breaker: {{consecutive_failures: null, min_calls: 1000}}
        providers:
          twilio:
            type: twilio
            base_url: {twilio.url}
            account_sid: {twilio.account_sid}
            auth_token: {twilio.auth_token}
            from: "+15005550006"
            timeout: 300ms
            prices: {{DE: 0.01, FR: 0.03, US: 0.02}}
          vonage:
            type: vonage
            base_url: {vonage.url}
            api_key: "{vonage.api_key}"
            api_secret: "{vonage.api_secret}"
            from: Acme
            timeout: 300ms
            prices: {{DE: 0.02, FR: 0.01, US: 0.03}}
          telnyx:
            type: telnyx
            base_url: {telnyx.url}
            api_key: {telnyx.api_key}
            from: "+14155550100"
            timeout: 300ms
            prices: {{DE: 0.03, FR: 0.02, US: 0.01}}
        rules:
          - name: everywhere
            strategy: cheapest
            providers: [twilio, vonage, telnyx]
        """
    )


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTwilio, FakeVonage, FakeTelnyx]]:
    async with FakeTwilio() as twilio, FakeVonage() as vonage, FakeTelnyx() as telnyx:
        yield twilio, vonage, telnyx


async def send_all(router: Router, country: str, n: int) -> list[SendResult]:
    results = await asyncio.gather(*(router.send(otp(country)) for _ in range(n)))
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    return list(results)


async def test_the_rule_puts_a_different_adapter_first_in_each_country(
    fakes: tuple[FakeTwilio, FakeVonage, FakeTelnyx],
) -> None:
    async with Router(three_adapter_config(*fakes)) as router:
        for country, order in ORDER.items():
            assert router.explain(otp(country)).providers == order


async def test_each_adapter_failing_in_turn_every_message_is_accepted(
    fakes: tuple[FakeTwilio, FakeVonage, FakeTelnyx],
) -> None:
    twilio, vonage, telnyx = fakes
    clock = ManualClock()
    async with Router(three_adapter_config(*fakes), clock=clock) as router:
        # Twilio answers 503: Vonage takes the German messages.
        twilio.fail(503)
        for r in await send_all(router, "DE", 3):
            assert attempts(r) == [("twilio", Outcome.TRANSIENT), ("vonage", Outcome.ACCEPTED)]
        twilio.heal()

        # Vonage hangs: after the attempt's timeout, Telnyx takes the French ones.
        vonage.hang()
        for r in await send_all(router, "FR", 3):
            assert attempts(r) == [("vonage", Outcome.TIMEOUT), ("telnyx", Outcome.ACCEPTED)]
        vonage.heal()

        # Telnyx throttles with Retry-After: 30 s: Twilio takes the American ones, and
        # Telnyx is not called again while paused.
        telnyx.throttle(retry_after=30)
        results = [await router.send(otp("US")) for _ in range(3)]
        assert all(r.provider == "twilio" for r in results)
        assert results[0].attempts[0].outcome is Outcome.THROTTLED
        assert results[0].attempts[0].retry_after == 30
        assert all(
            r.attempts[0].detail == "skipped: rate limit or Retry-After pause" for r in results[1:]
        )
        telnyx.heal()
        clock.advance(30)

        # Twilio answers garbage and Vonage drops the connection: Telnyx takes them.
        twilio.garbage()
        vonage.drop()
        for r in [await router.send(otp("DE")) for _ in range(3)]:
            assert r.ok
            assert attempts(r) == [
                ("twilio", Outcome.TRANSIENT),
                ("vonage", Outcome.TRANSIENT),
                ("telnyx", Outcome.ACCEPTED),
            ]
        twilio.heal()
        vonage.heal()

        # All healthy again: each country goes to its first choice.
        for country in ORDER:
            assert (await router.send(otp(country))).provider == ORDER[country][0]

    assert (twilio.requests, len(twilio.messages)) == (3 + 3 + 3 + 1, 3 + 1)
    assert (vonage.requests, len(vonage.messages)) == (3 + 3 + 3 + 1, 3 + 1)
    assert (telnyx.requests, len(telnyx.messages)) == (3 + 1 + 3 + 1, 3 + 3 + 1)


async def test_faults_at_all_three_at_once_every_message_is_accepted(
    fakes: tuple[FakeTwilio, FakeVonage, FakeTelnyx],
) -> None:
    twilio, vonage, telnyx = fakes
    # In each country the first two adapters fail, each in its own way; the third accepts.
    twilio.fail(503, country="DE")
    vonage.fail(500, country="DE")
    vonage.garbage(country="FR")
    telnyx.hang(country="FR")
    telnyx.fail(500, country="US")
    twilio.garbage(country="US")
    n = 5
    async with Router(three_adapter_config(*fakes)) as router:
        batches = await asyncio.gather(*(send_all(router, c, n) for c in ORDER))

    for country, results in zip(ORDER, batches, strict=True):
        first, second, third = ORDER[country]
        for r in results:
            assert [a.provider for a in r.attempts] == [first, second, third]
            assert r.provider == third
        assert {r.attempts[1].outcome for r in results} == (
            {Outcome.TIMEOUT} if country == "FR" else {Outcome.TRANSIENT}
        )
    # Each fake took exactly the messages of the one country where it came last...
    assert {country_of(m.to) for m in twilio.messages} == {"FR"}
    assert {country_of(m.to) for m in vonage.messages} == {"US"}
    assert {country_of(m.to) for m in telnyx.messages} == {"DE"}
    # ...and was called for every message of every country.
    for fake in fakes:
        assert (fake.requests, len(fake.messages)) == (3 * n, n)
