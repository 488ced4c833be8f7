"""Test tools that are part of the product: fake providers speaking each
provider's real wire format on 127.0.0.1, and a clock that never sleeps.

    from smsroute.testing import FakeTwilio, ManualClock

    async with FakeTwilio() as fake:
        fake.fail(503, times=1)
        ...
"""

from smsroute.clock import ManualClock
from smsroute.testing.bandwidth import FakeBandwidth
from smsroute.testing.fake import FakeProvider, Fault, Incoming, ReceivedMessage
from smsroute.testing.infobip import FakeInfobip
from smsroute.testing.messagebird import FakeMessageBird
from smsroute.testing.plivo import FakePlivo
from smsroute.testing.sinch import FakeSinch
from smsroute.testing.telnyx import FakeTelnyx
from smsroute.testing.twilio import FakeTwilio
from smsroute.testing.vonage import FakeVonage


def __getattr__(name: str) -> object:
    # FakeSMSC needs the smpp extra (aiosmpplib): imported on first use only.
    if name == "FakeSMSC":
        from smsroute.testing.smsc import FakeSMSC

        return FakeSMSC
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FakeBandwidth",
    "FakeInfobip",
    "FakeMessageBird",
    "FakePlivo",
    "FakeProvider",
    "FakeSMSC",
    "FakeSinch",
    "FakeTelnyx",
    "FakeTwilio",
    "FakeVonage",
    "Fault",
    "Incoming",
    "ManualClock",
    "ReceivedMessage",
]
