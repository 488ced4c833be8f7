"""An outbox that cannot be used is one ERROR line where a call must not raise; a bug keeps
its traceback.

``OutboxUnavailable`` is expected and already worded (the store, what to do): where the
router swallows it (the recipient of an opted-out receipt, a receipt's or a resend's
durable record, a worker rescheduling a message), it is logged as that one line, without
a traceback.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from log_support import Records, every_log_record
from test_outbox_corrupt_file import config_for

from smsroute import DeliveryReport, Message, OutboxUnavailable, Router, SendResult
from smsroute.dispatch import Dispatcher
from smsroute.outbox import SQLiteOutbox
from smsroute.outbox.store import utc
from smsroute.testing import FakeTwilio

WORDED = "the outbox database /srv/outbox.db is locked by another process: end it"


class Broken:
    """A store whose durable-record calls raise ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def recipient(self, message_id: str) -> str | None:
        raise self.exc

    async def record_receipt(self, report: DeliveryReport, now: float) -> bool:
        raise self.exc

    async def record_accepted(self, *args: Any) -> bool:
        raise self.exc

    async def close(self) -> None:
        pass


REPORT = DeliveryReport(
    message_id="0" * 32,
    provider="twilio",
    provider_message_id="SM1",
    status="delivered",
    error_code=None,
    at=utc(1_800_000_000.0),
)


async def durable_calls(router: Router, exc: Exception) -> Records:
    router.outbox_service.adopt(Broken(exc))  # type: ignore[arg-type]
    service = router.outbox_service
    with every_log_record() as logs:
        assert await service.recipient("0" * 32) is None
        assert await service.record_receipt(REPORT) is False
        assert await service.record_accepted("0" * 32, "twilio", "SM2") is False
    return logs


def errors(logs: Records) -> list[str]:
    return [text for level, text in logs.records if level >= logging.ERROR]


async def test_an_unavailable_outbox_is_one_line_without_a_traceback(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    async with Router(make_config(config_for(tmp_path / "o.db", twilio_a)), metrics=False) as r:
        logs = await durable_calls(r, OutboxUnavailable(WORDED))
    found = errors(logs)
    assert len(found) == 3, found
    for text, doing in zip(found, ["recipient", "delivery receipt", "resend"], strict=True):
        assert doing in text, text
        assert text.endswith(WORDED), text
        assert "Traceback" not in text, text
        assert "\n" not in text, text


async def test_a_bug_in_the_store_keeps_its_traceback(tmp_path: Path, twilio_a: FakeTwilio) -> None:
    async with Router(make_config(config_for(tmp_path / "o.db", twilio_a)), metrics=False) as r:
        logs = await durable_calls(r, KeyError("a bug"))
    found = errors(logs)
    assert len(found) == 3, found
    for text in found:
        assert "Traceback" in text, text
        assert "KeyError" in text, text


class NoRetry(SQLiteOutbox):
    """A store that cannot record a retry."""

    async def retry(self, *args: Any) -> bool:
        raise OutboxUnavailable(WORDED)


async def test_a_worker_that_cannot_reschedule_after_a_bug_says_why_in_one_line(
    tmp_path: Path, twilio_a: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(self: Dispatcher, *args: Sequence[object]) -> SendResult:
        raise KeyError("a bug")

    monkeypatch.setattr(Dispatcher, "send", bug)
    async with Router(make_config(config_for(tmp_path / "o.db", twilio_a)), metrics=False) as r:
        r.outbox_service.adopt(NoRetry(tmp_path / "o.db"))
        mid = await r.enqueue(Message(to="+4915123456789", text="hello"))
        with every_log_record() as logs:
            assert await r.worker().run_once() == 1
    found = errors(logs)
    assert len(found) == 2, found
    assert "Traceback" in found[0]
    assert "KeyError" in found[0]  # the bug: its traceback
    assert "could not reschedule" in found[1], found[1]
    assert mid in found[1], found[1]
    assert WORDED in found[1], found[1]
    assert "Traceback" not in found[1], found[1]  # the store: one line
