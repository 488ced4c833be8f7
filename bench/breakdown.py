"""Where Router.send's instructions go, stage by stage, under callgrind.

    python bench/breakdown.py [--messages 2000] [--stage STAGE ...]

Each stage of the send path runs alone, on its own inputs (the realistic
config, bench/realistic.yaml; a new number per message), ``--messages`` times
and not at all, each in a valgrind of its own; the difference divided by
``--messages`` is that stage's instructions per message.  The stages are what
``Dispatcher.send`` does around the HTTP request; what they do not cover
(coroutine frames, the aiohttp call's arguments, the event loop's share) is
the router's total minus raw aiohttp's minus their sum, computed from
bench/callgrind_send.py's numbers in RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Numbers made in every run; --messages must be below it.
POOL = 5001
STAGES = {
    "parse": "number: parse, validate, classify (unseen number)",
    "text": "text: encoding and segments",
    "rule": "rule match (index)",
    "plan": "plan, general path: options, prices, order",
    "steady": "plan as send makes it (breakers closed, cached)",
    "breaker": "breaker: allow + record_success",
    "limiter": "rate limiter: bucket lookup + reserve",
    "slot": "max_concurrency slot: take + give back",
    "request": "request building: OutboundSMS, form, body",
    "response": "response parsing: JSON, Reply",
    "result": "result: Attempt, SendResult, health, status store",
    "metrics": "metrics: in-flight gauge, attempt, message",
}


def stage(name: str, count: int) -> None:
    sys.path.insert(0, str(HERE))
    import bench_send as b
    from multidict import CIMultiDict, CIMultiDictProxy

    from smsroute import Message, Router
    from smsroute.message import Attempt, Outcome, SendResult
    from smsroute.providers.base import HttpProvider, OutboundSMS, Reply, form_encode

    info = {"url": "http://127.0.0.1:9", "account_sid": "AC" + "0" * 32, "auth_token": "t"}
    router = Router(b.realistic_config(info))
    d = router.dispatcher
    rt = d.runtime
    state = d.state
    pcfg = rt.config.providers["twilio-main"]
    provider = rt.providers["twilio-main"]
    assert isinstance(provider, HttpProvider)
    text = "Your code is 123456"
    # Made alike in every run (so they cancel out), POOL of them whatever ``count`` is.
    numbers = b.numbers(POOL, seed=5)
    p = rt.prepare(Message(to=numbers[0], text=text, category="otp"))  # warms metadata
    numbers = numbers[1 : count + 1]
    body = b'{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}'
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    direct = d.direct_metrics
    assert direct is not None
    if name == "parse":
        normalize = rt.normalize
        for n in numbers:
            normalize(n)
    elif name == "text":
        from smsroute.encoding import analyze

        for _ in range(count):
            analyze(text)
    elif name == "rule":
        find = rt.index.find
        dest = p.destination
        for _ in range(count):
            find(dest, "otp", None, ())
    elif name == "plan":
        for _ in range(count):
            d.plan(rt, p)
    elif name == "steady":
        for _ in range(count):
            d._steady_order(rt, p)
    elif name == "breaker":
        for _ in range(count):
            br = state.breaker(pcfg, "DE")
            br.record_success(br.allow())
    elif name == "limiter":
        for _ in range(count):
            state.bucket(pcfg).reserve(1.0)
    elif name == "slot":
        for _ in range(count):
            slots = state.slots(pcfg)
            assert slots is not None
            if slots.try_acquire():
                slots.release()
    elif name == "request":
        for n in numbers:
            sms = OutboundSMS("m1", n, "DE", text, pcfg.sender, "GSM-7", 1, "otp", 1, None, 60.0)
            req = provider.build_request(sms)
            h = dict(req.headers)
            assert req.data is not None
            form_encode(req.data).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
    elif name == "response":
        for _ in range(count):
            provider.parse_response(201, headers, body)
    elif name == "result":
        health = state.health("twilio-main")
        reply = Reply(Outcome.ACCEPTED, provider_message_id="SM1", status_code=201)
        status = d.status_store
        for i in range(count):
            health.record(True, 0.01)
            attempt = Attempt(  # positional, as Dispatcher.send builds it
                "twilio-main",
                Outcome.ACCEPTED,
                0.01,
                reply.status_code,
                reply.error_code,
                reply.detail,
                reply.provider_message_id,
                reply.retry_after,
            )
            per_segment = pcfg.prices.price_for("DE")
            result = SendResult(
                f"m{i}",
                "accepted",
                "twilio-main",
                "SM1",
                (attempt,),
                1,
                "GSM-7",
                None if per_segment is None else per_segment,
                pcfg.prices.currency,
                None,
                "otp-dach",
                False,
                Outcome.ACCEPTED,
            )
            status.record_send(result.message_id, "accepted", "twilio-main", "SM1", "DE")
    elif name == "metrics":
        metrics = d._metrics  # the in-flight gauge, as _attempt reads it
        assert metrics is not None
        for _ in range(count):
            inflight = metrics.inflight("twilio-main")
            inflight.inc()
            inflight.dec()
            direct.attempt_finished("twilio-main", "DE", Outcome.ACCEPTED, 0.01)
            direct.message_finished("otp", "accepted", 0.02, "twilio-main", "DE", 1, 0.079, "USD")
    else:
        raise SystemExit(f"unknown stage {name!r}: use one of {', '.join(STAGES)}")


def instructions(name: str, count: int) -> int:
    """Instructions this script executes running stage ``name`` ``count`` times."""
    sys.path.insert(0, str(HERE))
    from callgrind_send import callgrind

    return callgrind(__file__, ["--stage", name, "--count", str(count)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--stage", choices=sorted(STAGES), action="append")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:  # one measured stage, run by valgrind
        stage(args.stage[0], args.count)
        return
    names = [s for s in STAGES if args.stage is None or s in args.stage]
    total = 0.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name in names:
            small = pool.submit(instructions, name, 0)
            large = pool.submit(instructions, name, args.messages)
            per = (large.result() - small.result()) / args.messages
            total += per
            print(f"{STAGES[name]:52s}: {per / 1000:7.1f} k instructions/msg", flush=True)
    print(f"{'sum of the stages':52s}: {total / 1000:7.1f} k instructions/msg")


if __name__ == "__main__":
    main()
