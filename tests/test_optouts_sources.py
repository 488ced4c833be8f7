"""Opt-outs from every source: a provider's "recipient opted out" answer, and an imported
CSV list (API, CLI, shared across replicas through Redis) (issue 18)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from provider_support import provider_settings, routing_yaml
from redis_support import prefix, redis_url, state_block, until  # noqa: F401

from smsroute import Message, Outcome, Router
from smsroute.cli import main
from smsroute.optout import OptOutStore
from smsroute.optout_io import OptOutFileError, OptOuts, read_csv, write_csv
from smsroute.testing import (
    FakeBandwidth,
    FakeInfobip,
    FakeMessageBird,
    FakePlivo,
    FakeProvider,
    FakeSinch,
    FakeTelnyx,
    FakeTwilio,
    FakeVonage,
)

# -- from a provider's answer ------------------------------------------------------------------

#: Providers whose send answer can say "this recipient opted out", with a sender they take
#: and a number of a country they serve: Twilio 21610, Telnyx 40300, Infobip
#: REJECTED_DESTINATION_BLOCKLISTED.
WITH_OPT_OUT_ANSWER: list[tuple[Callable[[], FakeProvider], str, str, str]] = [
    (FakeTwilio, "+15005550006", "+14155550123", "21610"),
    (FakeTelnyx, "+14155550100", "+12025550123", "40300"),
    (FakeInfobip, "InfoSMS", "+41793026727", "REJECTED_DESTINATION_BLOCKLISTED"),
]


@pytest.mark.parametrize(("make", "sender", "number", "code"), WITH_OPT_OUT_ANSWER)
async def test_a_providers_opt_out_answer_is_recorded_and_obeyed(
    make: Callable[[], FakeProvider], sender: str, number: str, code: str
) -> None:
    async with make() as fake:
        fake.opt_out(number)
        config = make_config(routing_yaml({"p": provider_settings(fake, sender)}))
        async with Router(config, metrics=False) as router:
            promo = Message(to=number, text="Sale!", category="marketing")
            first = await router.send(promo)
            assert not first.ok
            assert [(a.outcome, a.error_code) for a in first.attempts] == [(Outcome.REJECTED, code)]
            assert router.is_opted_out(number)
            assert number in router.optouts
            requests = fake.requests
            # The next one is refused here, before any provider is called.
            second = await router.send(promo)
            assert (second.reason, second.attempts) == ("opted_out", ())
            assert fake.requests == requests
            # Another number is not concerned.
            other = await router.send(
                Message(to=number[:-1] + "9", text="Hi", category="marketing")
            )
            assert other.ok


@pytest.mark.parametrize("make", [FakeVonage, FakePlivo, FakeSinch, FakeBandwidth, FakeMessageBird])
async def test_providers_without_a_send_time_opt_out_answer_say_so(
    make: Callable[[], FakeProvider],
) -> None:
    # Their opt-outs come in delivery receipts (Vonage err-code 9, Plivo 200, Bandwidth
    # 4775) or are not documented (Sinch, MessageBird): no send answer to script.
    async with make() as fake:
        with pytest.raises(NotImplementedError, match="no documented opted-out answer"):
            fake.opt_out("+14155550123")


async def test_an_ordinary_rejection_records_no_opt_out() -> None:
    async with FakeTwilio() as fake:
        fake.fail(400, 21211)  # invalid 'To'
        config = make_config(routing_yaml({"p": provider_settings(fake, "+15005550006")}))
        async with Router(config, metrics=False) as router:
            result = await router.send(Message(to="+14155550123", text="x", category="marketing"))
            assert not result.ok
            assert not router.is_opted_out("+14155550123")


# -- the CSV format -----------------------------------------------------------------------------


def test_read_csv_normalises_and_skips_blank_rows_and_extra_columns() -> None:
    data = (
        "\ufeffNumber,source\r\n+1 (415) 555-0123,twilio\r\n\r\n"
        '"030 1234567",shop\n+14155550123,again\n'
    ).encode()
    assert read_csv(data, "DE") == ["+14155550123", "+49301234567"]
    assert write_csv(["+14155550123"]) == "number\n+14155550123\n"
    assert read_csv(write_csv(["+14155550123", "+49301234567"])) == [
        "+14155550123",
        "+49301234567",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty: the first row must be the header 'number'"),
        (b"phone\n+14155550123\n", "row 1: the first row must be a header"),
        (b"number\n+14155550123\nnot a number\n", "row 3: "),
        (b"number\n+14155550123\n,extra\n", "row 3: the number column is empty"),
        (b"number\n\xff\xfe\n", "not UTF-8 text"),
        (b'number\n"+1415\n', "not valid CSV"),
        (b"number\n5550123\n", "row 2: "),  # no +country and no default region
    ],
)
def test_a_bad_csv_is_one_error_naming_the_row(data: bytes, expected: str) -> None:
    with pytest.raises(OptOutFileError) as info:
        read_csv(data, source="list.csv")
    assert expected in str(info.value)
    assert str(info.value).startswith("list.csv: ")
    assert "4155550123" not in str(info.value)  # numbers are masked


@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_import_or_fail_with_the_documented_error_and_nothing_imported(
    data: bytes,
) -> None:
    store = OptOutStore()
    store.opt_out("+14155550100")
    config = make_config(
        'providers: {a: {type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}}\n'
        "rules: [{name: d, providers: [a]}]\n"
    )
    optouts = OptOuts(store, lambda: config)
    try:
        added = optouts.import_csv(data)
    except OptOutFileError as exc:
        error: OptOutFileError | None = exc
    else:
        error = None
    if error is not None:
        assert str(error)
        assert store.numbers() == {"+14155550100"}  # all or nothing
        return
    assert len(store) == 1 + added
    assert all(n.startswith("+") for n in store.numbers())


# -- through the API, across replicas, and the command -------------------------------------------


def redis_config(fake: FakeTwilio, url: str, key_prefix: str) -> str:
    return (
        routing_yaml({"p": provider_settings(fake, "+15005550006")})
        + state_block(url, key_prefix, sync_interval="50ms")
        + "\n"
    )


async def test_an_import_is_obeyed_at_once_and_by_another_replica(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    async with FakeTwilio() as fake:
        config = make_config(redis_config(fake, redis_url, prefix))
        async with Router(config, metrics=False) as a, Router(config, metrics=False) as b:
            added = a.optouts.import_csv(b"number\n+14155550123\n+14155550124\n")
            assert added == 2
            promo = Message(to="+14155550123", text="Sale!", category="marketing")
            assert (await a.send(promo)).reason == "opted_out"
            await a.optouts.flush()
            await until(lambda: "+14155550124" in b.optouts, what="replica b sees the import")
            assert (await b.send(promo)).reason == "opted_out"
            assert fake.requests == 0
            assert b.optouts.list() == ["+14155550123", "+14155550124"]
            # otp still goes (opt_out_categories is marketing and transactional).
            assert (await b.send(Message(to="+14155550123", text="1", category="otp"))).ok


async def test_the_optouts_command_imports_lists_and_exports(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with FakeTwilio() as fake:
        config_file = tmp_path / "routing.yaml"
        config_file.write_text(redis_config(fake, redis_url, prefix))
        good = tmp_path / "stop.csv"
        good.write_text("number,source\n+14155550123,shop\n")
        bad = tmp_path / "bad.csv"
        bad.write_text("number\n+14155550124\nnonsense\n")
        runner = CliRunner()

        def run(*args: str) -> tuple[int, str, str]:
            result = runner.invoke(main, list(args))
            return result.exit_code, result.stdout, result.stderr

        loop = asyncio.get_running_loop()
        code, out, err = await loop.run_in_executor(
            None, run, "optouts", "import", str(config_file), str(bad)
        )
        assert code == 2
        assert "row 3" in err
        assert "bad.csv" in err
        code, out, _ = await loop.run_in_executor(
            None, run, "optouts", "import", str(config_file), str(good)
        )
        assert code == 0
        assert "1 number(s) newly opted out" in out
        code, out, _ = await loop.run_in_executor(None, run, "optouts", "list", str(config_file))
        assert code == 0
        assert "1 number(s) opted out" in out
        assert "+14155550123" not in out
        code, out, _ = await loop.run_in_executor(None, run, "optouts", "export", str(config_file))
        assert code == 0
        assert out == "number\n+14155550123\n"
        # A router started later obeys the import.
        async with Router(make_config(config_file.read_text()), metrics=False) as router:
            sent = await router.send(Message(to="+14155550123", text="x", category="marketing"))
            assert sent.reason == "opted_out"
            assert fake.requests == 0


def test_the_optouts_command_refuses_a_memory_state(tmp_path: Path) -> None:
    config_file = tmp_path / "routing.yaml"
    config_file.write_text(
        'providers: {a: {type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}}\n'
        "rules: [{name: d, providers: [a]}]\n"
    )
    result = CliRunner().invoke(main, ["optouts", "list", str(config_file)])
    assert result.exit_code == 3
    assert "state backend memory" in result.stderr
