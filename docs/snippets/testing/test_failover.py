"""test_failover.py: a service's own test, with two fake providers and a scripted outage.

pip install pytest pytest-asyncio
pytest test_failover.py
"""

from __future__ import annotations

import pytest

from smsroute import Message, Outcome, Router, parse_config
from smsroute.testing import FakeTwilio, FakeVonage

CONFIG = """
defaults: {{default_region: US}}
providers:
  primary:
    type: twilio
    base_url: {a.url}
    account_sid: {a.account_sid}
    auth_token: {a.auth_token}
    from: "+15005550006"
    timeout: 500ms
  backup:
    type: vonage
    base_url: {b.url}
    api_key: {b.api_key}
    api_secret: {b.api_secret}
    from: Acme
rules:
  - providers: [primary, backup]
"""


@pytest.mark.asyncio
async def test_a_503_fails_over_to_the_backup() -> None:
    async with FakeTwilio() as a, FakeVonage() as b:
        config = parse_config(CONFIG.format(a=a, b=b))
        async with Router(config, metrics=False) as router:
            a.fail(503, times=1)  # the fault script: the next request to primary gets 503
            result = await router.send(Message(to="(415) 555-0100", text="Code 123456"))

    assert result.ok
    assert result.provider == "backup"
    assert [attempt.outcome for attempt in result.attempts] == [Outcome.TRANSIENT, Outcome.ACCEPTED]
    assert b.messages[0].to == "+14155550100"


@pytest.mark.asyncio
async def test_a_hung_provider_is_not_retried_for_marketing() -> None:
    async with FakeTwilio() as a, FakeVonage() as b:
        config = parse_config(CONFIG.format(a=a, b=b))
        async with Router(config, metrics=False) as router:
            a.hang()  # primary never answers: the message may have been sent
            result = await router.send(
                Message(to="+14155550100", text="Sale", category="marketing")
            )
            a.heal()

    assert not result.ok
    assert [attempt.outcome for attempt in result.attempts] == [Outcome.TIMEOUT]
    assert b.messages == []  # marketing: on_timeout is stop, never sent twice
