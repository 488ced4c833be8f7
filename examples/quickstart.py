"""smsroute in one file: two providers, a rule, a send, a failover.

Runs anywhere with no credentials: the two "providers" are smsroute's fake
Twilio servers on 127.0.0.1, speaking Twilio's real wire format.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from smsroute import Message, Router, parse_config
from smsroute.testing import FakeTwilio

CONFIG = """
defaults:
  default_region: US
  deadline: 5s
  breaker: {{consecutive_failures: 3, open_for: 30s}}
providers:
  primary:
    type: twilio
    base_url: {a.url}
    account_sid: {a.account_sid}
    auth_token: {a.auth_token}
    from: "+15005550006"
    timeout: 500ms
    prices: {{US: 0.0079, DE: 0.079}}
  backup:
    type: twilio
    base_url: {b.url}
    account_sid: {b.account_sid}
    auth_token: {b.auth_token}
    from: "+15005550006"
    prices: {{US: 0.0083, DE: 0.081}}
rules:
  - name: marketing-europe
    match: {{country: [DE, FR, GB], category: marketing}}
    strategy: cheapest
    providers: [backup, primary]
  - name: default
    providers: [primary, backup]
"""


def show(label: str, result: object) -> None:
    r = result  # a SendResult
    tried = " -> ".join(f"{a.provider}:{a.outcome.value}" for a in r.attempts)  # type: ignore[attr-defined]
    print(f"{label:<28} {r.status:<9} via {r.provider or '-':<8} [{tried}]")  # type: ignore[attr-defined]


async def main() -> None:
    async with FakeTwilio() as a, FakeTwilio() as b:
        config = parse_config(CONFIG.format(a=a, b=b))
        async with Router(config) as router:
            for msg in (
                Message(to="(415) 555-0100", text="Hello"),
                Message(to="+4915123456789", text="Sale", category="marketing"),
            ):
                plan = router.explain(msg)
                order = ", ".join(f"{c.provider} ({c.price:.4f})" for c in plan.candidates)
                print(f"explain {plan.to}: rule={plan.rule} strategy={plan.strategy} order={order}")

            show("plain send", await router.send(Message(to="(415) 555-0100", text="Hello")))

            a.fail(503, times=1)
            show(
                "primary answers 503",
                await router.send(Message(to="+4915123456789", text="Code 123456", category="otp")),
            )
            show(
                "cheapest for DE marketing",
                await router.send(Message(to="+4915123456789", text="Sale", category="marketing")),
            )

            a.fail(400, 21211, times=1)
            show(
                "invalid number (rejected)",
                await router.send(Message(to="+14155550100", text="Hi")),
            )

            a.hang()
            show(
                "primary hangs, otp",
                await router.send(Message(to="+14155550100", text="Code 1", category="otp")),
            )
            show(
                "primary hangs, marketing",
                await router.send(Message(to="+14155550100", text="Sale", category="marketing")),
            )
            a.heal()

            print(f"\nprimary accepted {len(a.messages)} messages, backup {len(b.messages)}")


if __name__ == "__main__":
    asyncio.run(main())
