"""Test tools that are part of the product: fake providers speaking each
provider's real wire format on 127.0.0.1, and a clock that never sleeps.

    from smsroute.testing import FakeTwilio, ManualClock

    async with FakeTwilio() as fake:
        fake.fail(503, times=1)
        ...
"""

from smsroute.clock import ManualClock
from smsroute.testing.fake import FakeProvider, Fault, Incoming, ReceivedMessage
from smsroute.testing.twilio import FakeTwilio

__all__ = ["FakeProvider", "FakeTwilio", "Fault", "Incoming", "ManualClock", "ReceivedMessage"]
