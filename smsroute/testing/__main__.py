"""Run a fake provider as a process: ``python -m smsroute.testing twilio --port 8081``.

Prints one JSON line with the URL and credentials to put in a config, then
serves until interrupted.  Useful for benchmarks (the server in another
process) and for trying a config by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from smsroute.testing import (
    FakeBandwidth,
    FakeInfobip,
    FakeMessageBird,
    FakePlivo,
    FakeSinch,
    FakeTelnyx,
    FakeTwilio,
    FakeVonage,
)
from smsroute.testing.fake import FakeProvider

FAKES: dict[str, type[FakeProvider]] = {
    "twilio": FakeTwilio,
    "vonage": FakeVonage,
    "plivo": FakePlivo,
    "telnyx": FakeTelnyx,
    "infobip": FakeInfobip,
    "sinch": FakeSinch,
    "bandwidth": FakeBandwidth,
    "messagebird": FakeMessageBird,
}


def _credentials(fake: FakeProvider) -> dict[str, str]:
    out = {"url": fake.url}
    for key in (
        "account_sid",
        "auth_token",
        "auth_id",
        "api_key",
        "api_secret",
        "api_token",
        "access_key",
        "service_plan_id",
        "account_id",
        "application_id",
        "username",
        "password",
    ):
        value = getattr(fake, key, None)
        if isinstance(value, str):
            out[key] = value
    return out


async def _serve(kind: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the line that says it is up: a
        loop.add_signal_handler(sig, stop.set)  # Ctrl-C right after it is a clean stop
    fake = FAKES[kind](host=host, port=port)
    await fake.start()
    print(json.dumps(_credentials(fake)), flush=True)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smsroute.testing", description=__doc__)
    parser.add_argument("provider", choices=sorted(FAKES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.provider, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
