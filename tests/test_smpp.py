"""The smpp adapter against FakeSMSC: outcomes, binds, window, receipts, inbound."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from smsroute import DeliveryReport, InboundMessage, Message, Outcome, Router, parse_config
from smsroute.errors import ConfigError
from smsroute.providers.smpp import SmppProvider
from smsroute.testing.smsc import FakeSMSC

pytestmark = pytest.mark.timeout(30)
TO = "+4915123456789"


def smpp_config(smsc: FakeSMSC, **extra: Any) -> Any:
    options = {
        "type": "smpp",
        "host": "127.0.0.1",
        "port": smsc.port,
        "system_id": smsc.system_id,
        "password": smsc.password,
        "from": "ACME",
        "timeout": "1s",
        "enquire_link": "0.2s",
        "reconnect_delay": "0.05s",
        "reconnect_max": "0.2s",
        **extra,
    }
    block = "\n".join(f"    {k}: {v}" for k, v in options.items())
    return parse_config(
        textwrap.dedent("""
        providers:
          smsc:
        """)
        + block
        + textwrap.dedent("""
        rules:
          - name: all
            providers: [smsc]
        """)
    )


@pytest.fixture
async def smsc() -> AsyncIterator[FakeSMSC]:
    async with FakeSMSC() as fake:
        yield fake


def message(text: str = "Your code is 123456", category: str = "otp") -> Message:
    return Message(to=TO, text=text, category=category)


def adapter(router: Router) -> SmppProvider:
    provider = router.dispatcher.runtime.providers["smsc"]
    assert isinstance(provider, SmppProvider)
    return provider


async def until(check: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - state moved by another peer's socket
            await asyncio.sleep(0.01)


# -- outcomes -----------------------------------------------------------------------------


async def test_accepted_message_carries_the_smsc_id_and_the_derived_addresses(
    smsc: FakeSMSC,
) -> None:
    async with Router(smpp_config(smsc), metrics=False) as router:
        assert smsc.bound_sessions == 1
        result = await router.send(message())
    assert result.ok
    assert result.attempts[0].provider_message_id == smsc.messages[0].message_ids[0]
    sent = smsc.messages[0]
    assert (sent.to, sent.sender, sent.text) == (TO[1:], "ACME", "Your code is 123456")
    assert (sent.source_ton, sent.source_npi, sent.dest_ton, sent.dest_npi) == (5, 0, 1, 1)
    assert sent.registered_delivery == 1
    assert smsc.unbinds == 1  # aclose unbinds


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x58, Outcome.THROTTLED),  # ESME_RTHROTTLED
        (0x14, Outcome.THROTTLED),  # ESME_RMSGQFUL
        (0x0B, Outcome.REJECTED),  # ESME_RINVDSTADR
        (0x51, Outcome.REJECTED),  # ESME_RINVDSTNPI
        (0x0A, Outcome.UNROUTABLE),  # ESME_RINVSRCADR
        (0x08, Outcome.TRANSIENT),  # ESME_RSYSERR
        (0x45, Outcome.TRANSIENT),  # ESME_RSUBMITFAIL
    ],
)
async def test_command_status_maps_to_its_outcome(
    smsc: FakeSMSC, status: int, outcome: Outcome
) -> None:
    smsc.fail(status, times=1)
    async with Router(smpp_config(smsc), metrics=False) as router:
        result = await router.send(message())
    attempt = result.attempts[0]
    assert attempt.outcome is outcome
    assert attempt.error_code == f"0x{status:08X}"


async def test_throttled_pauses_the_provider(smsc: FakeSMSC) -> None:
    smsc.throttle(times=1)
    async with Router(smpp_config(smsc), metrics=False) as router:
        first = await router.send(message())
        assert first.attempts[0].outcome is Outcome.THROTTLED
        pause = router.state.bucket(router.config.providers["smsc"]).paused_for()
        assert pause > 0


@pytest.mark.parametrize("status", [0x0E, 0x0D, 0x0F])
async def test_refused_bind_is_auth_and_not_fatal(smsc: FakeSMSC, status: int) -> None:
    smsc.refuse_bind(status)
    async with Router(smpp_config(smsc), metrics=False) as router:
        links = adapter(router).links()
        assert (links.up, links.down) == (0, 1)
        result = await router.send(message())
        assert result.attempts[0].outcome is Outcome.AUTH
        assert result.attempts[0].error_code == f"0x{status:08X}"
        smsc.heal()
        await until(lambda: smsc.bound_sessions == 1)
        assert (await router.send(message())).ok


async def test_wrong_password_is_auth(smsc: FakeSMSC) -> None:
    config = smpp_config(smsc)
    smsc.password = "other"  # the SMSC expects another password than the config's
    async with Router(config, metrics=False) as router:
        result = await router.send(message())
    assert result.attempts[0].outcome is Outcome.AUTH


async def test_no_answer_in_time_is_timeout(smsc: FakeSMSC) -> None:
    smsc.hang()
    # 1 s, not less: the timeout bounds the bind too, which a busy CI machine once took
    # more than 0.2 s to answer (a transient "cannot bind", not the timeout tested here).
    async with Router(smpp_config(smsc, timeout="1s"), metrics=False) as router:
        result = await router.send(message())
        assert result.attempts[0].outcome is Outcome.TIMEOUT
        assert adapter(router).links().in_flight == 0


async def test_drop_while_in_flight_is_timeout_then_rebinds(smsc: FakeSMSC) -> None:
    smsc.drop(times=1)
    async with Router(smpp_config(smsc), metrics=False) as router:
        result = await router.send(message())
        assert result.attempts[0].outcome is Outcome.TIMEOUT
        assert "may have been sent" in (result.attempts[0].detail or "")
        await until(lambda: smsc.binds == 2 and smsc.bound_sessions == 1)
        assert (await router.send(message())).ok


async def test_no_bind_up_is_transient_and_smsc_down_is_not_fatal() -> None:
    async with FakeSMSC() as smsc:
        config = smpp_config(smsc)
    # The fake is gone: nothing listens on that port any more.
    async with Router(config, metrics=False) as router:
        result = await router.send(message())
    assert result.attempts[0].outcome is Outcome.TRANSIENT


async def test_rebinds_after_the_smsc_drops_every_connection(smsc: FakeSMSC) -> None:
    async with Router(smpp_config(smsc, binds=2), metrics=False) as router:
        assert smsc.bound_sessions == 2
        await smsc.drop_all()
        await until(lambda: smsc.bound_sessions == 2 and adapter(router).links().up == 2)
        assert smsc.binds == 4
        assert (await router.send(message())).ok


async def test_enquire_link_keeps_the_bind_alive(smsc: FakeSMSC) -> None:
    async with Router(smpp_config(smsc), metrics=False):
        await until(lambda: smsc.enquire_links >= 2)


# -- window ---------------------------------------------------------------------------------


async def test_window_is_respected_across_binds(smsc: FakeSMSC) -> None:
    smsc.latency(0.05)
    async with Router(smpp_config(smsc, binds=2, window=2, timeout="3s"), metrics=False) as router:
        results = await asyncio.gather(*(router.send(message()) for _ in range(12)))
    assert all(r.ok for r in results)
    assert smsc.peak_in_flight == 4  # 2 binds x window 2, and never more


async def test_cancelled_send_frees_its_window_slot(smsc: FakeSMSC) -> None:
    smsc.hang(times=1)
    async with Router(smpp_config(smsc, window=1, timeout="5s"), metrics=False) as router:
        task = asyncio.create_task(router.send(message()))
        await until(lambda: len(smsc.submits) == 1)
        assert adapter(router).links().in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert adapter(router).links().in_flight == 0
        assert (await router.send(message())).ok  # the only slot is free again


# -- long messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["udh", "sar", "payload"])
@pytest.mark.parametrize("text", ["x" * 152 + "€" + "y" * 200, "Привет " * 30])
async def test_long_messages_arrive_whole(smsc: FakeSMSC, mode: str, text: str) -> None:
    async with Router(smpp_config(smsc, long_messages=mode), metrics=False) as router:
        result = await router.send(message(text))
    assert result.ok
    assert smsc.messages[0].text == text
    expected = 1 if mode == "payload" else result.segments
    assert len(smsc.submits) == expected
    assert smsc.messages[0].data_coding == (8 if text.startswith("П") else 0)


# -- receipts -------------------------------------------------------------------------------


@pytest.mark.parametrize("id_format", ["same", "decimal", "upper"])
@pytest.mark.parametrize("tlvs", [True, False])
async def test_receipt_correlates_whatever_the_id_format(
    smsc: FakeSMSC, id_format: str, tlvs: bool
) -> None:
    smsc.receipts("DELIVRD", delay=0.01, id_format=id_format, tlvs=tlvs)
    async with Router(smpp_config(smsc), metrics=False) as router:
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(message())
        await until(lambda: bool(reports))
        state = await router.status(result.message_id)
    assert state is not None
    assert state.status == "delivered"
    assert reports[0].message_id == result.message_id
    assert smsc.deliver_answers == [0]


@pytest.mark.parametrize("tlvs", [True, False])
async def test_a_receipt_with_binary_vendor_tlvs_counts(smsc: FakeSMSC, tlvs: bool) -> None:
    """SMSCs add vendor-specific TLVs (0x1400-0x3FFF) in binary: the receipt still counts."""
    smsc.receipts(
        "DELIVRD",
        tlvs=tlvs,
        vendor_tlvs=[(0x1400, b"\x9f\x00\xff\x10"), (0x3FFF, b""), (0x1501, bytes(range(256)))],
    )
    async with Router(smpp_config(smsc), metrics=False) as router:
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(message())
        await until(lambda: bool(reports))
        state = await router.status(result.message_id)
    assert smsc.deliver_answers == [0]
    assert state is not None
    assert state.status == "delivered"
    assert reports[0].message_id == result.message_id


async def test_multipart_receipts_deliver_when_every_part_is(smsc: FakeSMSC) -> None:
    smsc.receipts("DELIVRD", delay=0.01, id_format="decimal")
    async with Router(smpp_config(smsc), metrics=False) as router:
        result = await router.send(message("z" * 400))
        assert result.segments == 3
        await smsc.answered(3)
        state = await router.status(result.message_id)
    assert state is not None
    assert state.status == "delivered"


async def test_undelivered_receipt_carries_the_error(smsc: FakeSMSC) -> None:
    smsc.receipts("UNDELIV", err="034")
    async with Router(smpp_config(smsc), metrics=False) as router:
        result = await router.send(message())
        await smsc.answered(1)
        await until(lambda: bool(router.dispatcher.status_store))
        state = await router.status(result.message_id)
    assert state is not None
    assert (state.status, state.error_code) == ("undelivered", "034")


async def test_two_smscs_giving_the_same_id_each_move_only_their_own_message(
    smsc: FakeSMSC,
) -> None:
    """SMSCs number their messages each on its own: two binds can answer the same
    message_id (both fakes start at 5a000001).  A receipt on one bind moves only the
    message sent through that bind: correlation is by provider and id, never by id."""
    async with FakeSMSC() as other:
        smsc.receipts("UNDELIV", err="034", delay=0.3)  # a's comes last
        other.receipts("DELIVRD", delay=0.01)
        blocks = []
        for name, fake in (("a", smsc), ("b", other)):
            options = {
                "type": "smpp", "host": "127.0.0.1", "port": fake.port,
                "system_id": fake.system_id, "password": fake.password, "from": "ACME",
                "timeout": "1s", "enquire_link": "0.2s",
            }  # fmt: skip
            blocks.append(f"  {name}:\n" + "".join(f"    {k}: {v}\n" for k, v in options.items()))
        config = parse_config(
            "providers:\n" + "".join(blocks) + "rules:\n"
            "  - name: otp\n    match: {category: otp}\n    providers: [a]\n"
            "  - name: rest\n    providers: [b]\n"
        )
        async with Router(config, metrics=False) as router:
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            via_a = await router.send(message(category="otp"))
            via_b = await router.send(message(category="transactional"))
            assert (via_a.provider, via_b.provider) == ("a", "b")
            assert via_a.provider_message_id == via_b.provider_message_id  # the same id
            await until(lambda: len(reports) == 2)
            state_a = await router.status(via_a.message_id)
            state_b = await router.status(via_b.message_id)
    assert state_a is not None
    assert state_b is not None
    assert (state_a.status, state_a.error_code) == ("undelivered", "034")
    assert state_b.status == "delivered"
    assert {(r.message_id, r.status) for r in reports} == {
        (via_a.message_id, "undelivered"),
        (via_b.message_id, "delivered"),
    }


# -- inbound ----------------------------------------------------------------------------------


async def test_inbound_stop_opts_out_and_reaches_on_inbound(smsc: FakeSMSC) -> None:
    async with Router(smpp_config(smsc), metrics=False) as router:
        got: list[InboundMessage] = []
        router.on_inbound(got.append)
        await smsc.send_inbound(TO, "STOP")
        await until(lambda: bool(got))
        assert (got[0].sender, got[0].text, got[0].keyword) == (TO, "STOP", "STOP")
        result = await router.send(message(category="marketing"))
    assert result.reason == "opted_out"


@pytest.mark.parametrize("ref", [7, 300])  # an 8-bit and a 16-bit UDH reference
@pytest.mark.parametrize("text", ["long " * 80, "Grüße, жжж " * 30])
async def test_concatenated_inbound_is_reassembled(smsc: FakeSMSC, ref: int, text: str) -> None:
    async with Router(smpp_config(smsc), metrics=False) as router:
        got: list[InboundMessage] = []
        router.on_inbound(got.append)
        parts = await smsc.send_inbound(TO, text, ref=ref)
        assert parts > 1
        await until(lambda: bool(got))
    assert [m.text for m in got] == [text]


async def test_missing_parts_give_up_after_the_timeout(smsc: FakeSMSC) -> None:
    from aiosmpplib import DeliverSm, PhoneNumber
    from aiosmpplib.state import NPI, TON

    async with Router(smpp_config(smsc, inbound_timeout="0.3s"), metrics=False) as router:
        got: list[InboundMessage] = []
        router.on_inbound(got.append)
        part = DeliverSm(
            short_message=" ",
            source=PhoneNumber(TO[1:], TON.INTERNATIONAL, NPI.ISDN),
            destination=PhoneNumber("12345"),
            esm_class=0x40,
        )
        part.set_encoded_message(bytes((5, 0, 3, 9, 2, 1)) + b"STOP")
        await smsc.deliver(part)
        await smsc.answered(1)
        assert got == []
        await until(lambda: bool(got))  # swept on the keepalive tick
    assert got[0].text == "STOP"


async def test_unreadable_deliver_sm_is_answered_and_changes_nothing(smsc: FakeSMSC) -> None:
    async with Router(smpp_config(smsc), metrics=False) as router:
        got: list[InboundMessage] = []
        router.on_inbound(got.append)
        await until(lambda: smsc.bound_sessions == 1)
        session = next(iter(smsc._sessions))
        garbage = (
            b"\x00\x00\x00\x15\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x09\xff\xff\xff\xff\xff"
        )
        session.writer.write(garbage)
        await smsc.answered(1)
        assert smsc.deliver_answers == [0x65]
        assert got == []
        assert (await router.send(message())).ok


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("window", 0),
        ("binds", "two"),
        ("password", "much-too-long"),
        ("long_messages", "split"),
        ("source_npi", 7),
        ("tls", "maybe"),
        ("enquire_link", "soon"),
        ("data_coding", "{gsm7: 99}"),
    ],
)
async def test_bad_options_are_config_errors(smsc: FakeSMSC, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        smpp_config(smsc, **{key: value})
    assert key in str(info.value)
    assert smsc.password not in str(info.value) or key != "password"


async def test_a_bug_while_reading_the_bind_drops_it_and_binds_again(
    smsc: FakeSMSC, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while the bind is read (here: reading a deliver_sm raises), the
    bind is dropped, logged, and bound again: it is neither left dead nor shown up."""
    import smsroute.providers.smpp as smpp_module

    read = smpp_module.read_deliver_sm
    calls = 0

    def broken(pdu: bytes) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return read(pdu)

    monkeypatch.setattr(smpp_module, "read_deliver_sm", broken)
    async with Router(smpp_config(smsc), metrics=False) as router:
        assert (await router.send(message())).ok
        binds = smsc.binds
        await smsc.send_inbound(TO, "hello")  # read by the broken reader: the bind drops
        await until(lambda: smsc.binds > binds and smsc.bound_sessions == 1, 10.0)
        result = await router.send(message())
    assert result.ok, result.reason
    assert calls >= 1
