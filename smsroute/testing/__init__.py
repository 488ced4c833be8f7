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

__all__ = [
    "FakeBandwidth",
    "FakeInfobip",
    "FakeMessageBird",
    "FakePlivo",
    "FakeProvider",
    "FakeSinch",
    "FakeTelnyx",
    "FakeTwilio",
    "FakeVonage",
    "Fault",
    "Incoming",
    "ManualClock",
    "ReceivedMessage",
]
