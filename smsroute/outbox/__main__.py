"""Run an outbox worker as a process: ``python -m smsroute.outbox CONFIG``.

Prints one JSON line when it is working (its lease owner, store and
concurrency), then sends queued messages until SIGTERM or SIGINT: the first
stops gracefully (no new leases, sends under way finish, the rest goes back
to the queue), a second cancels the sends under way.  Stopping takes a
bounded time whatever the store does (see :meth:`OutboxWorker.stop`).

Exit status, as for every ``smsroute`` command: 0 after a stop; 1 when the
outbox's store or the shared state cannot be used (a damaged or locked
database, Redis not answering, the redis package missing): one line on stderr
saying what to do, and nothing is started; 2 bad usage; 3 a config error
(each problem on a line of its own); 130 interrupted before it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING

from smsroute.errors import ConfigError, SmsrouteError
from smsroute.loglevel import log_level_problem

if TYPE_CHECKING:
    from smsroute.outbox.worker import OutboxWorker


async def _serve(path: str, concurrency: int | None) -> None:
    from smsroute.router import Router

    router = Router.from_yaml(path)
    stop = asyncio.Event()
    worker: OutboxWorker | None = None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
        elif worker is not None:
            worker.abort()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before connecting: a stop is never missed
        loop.add_signal_handler(sig, on_signal)
    async with router:
        worker = router.worker(concurrency=concurrency)
        await worker.start()
        print(
            json.dumps(
                {
                    "worker": worker.owner,
                    "store": repr(router.outbox),
                    "concurrency": worker.concurrency,
                }
            ),
            flush=True,
        )
        await stop.wait()
        await worker.stop()


def _level(text: str) -> str:
    """``--log-level``: a level logging knows, or a usage error (exit 2)."""
    problem = log_level_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smsroute.outbox",
        description="Send the messages queued in the outbox of CONFIG.",
    )
    parser.add_argument("config", help="the routing config (its outbox: section says where)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="messages at once (default: outbox.concurrency)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=_level, help="DEBUG, INFO, WARNING (default INFO)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_serve(args.config, args.concurrency))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 3
    except SmsrouteError as exc:  # the store or Redis cannot be used: what and what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before its signal handlers were installed
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
