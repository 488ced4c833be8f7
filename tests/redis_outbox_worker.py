"""An outbox worker process whose store is in Redis (for tests/test_redis_outbox.py).

    python tests/redis_outbox_worker.py CONFIG REDIS_URL KEY_PREFIX --concurrency N

Like ``python -m smsroute.outbox CONFIG``: prints one JSON line once it works
(its lease owner), then sends until SIGTERM (a graceful stop) or SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from smsroute.outbox.redis import RedisOutbox
from smsroute.router import Router


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    router = Router.from_yaml(args.config, metrics=False)
    router.outbox_service.adopt(RedisOutbox(args.url, key_prefix=args.prefix))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with router:
        worker = router.worker(concurrency=args.concurrency)
        await worker.start()
        print(json.dumps({"worker": worker.owner}), flush=True)
        await stop.wait()
        await worker.stop()


if __name__ == "__main__":
    asyncio.run(main())
