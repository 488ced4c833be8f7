"""Background tasks that always stop: the two asyncio helpers every loop of ours uses.

On Python 3.11, ``asyncio.wait_for`` loses a cancellation that arrives just
as the call it wraps completes: it returns the result instead of raising
(gh-86296, fixed in 3.12).  redis-py wraps every socket write in it, so
``task.cancel()`` alone may not stop a task that talks to Redis: the task
goes on to its next sleep, and the code awaiting it waits for ever.  Hence,
for every background loop (the shared state's sync, the outbox worker's
lease loop and lease keeper):

* it checks a stop flag on every turn, and sleeps with :func:`wait_event` on
  an event its owner sets to stop it, so it ends without being cancelled;
* its owner stops it with :func:`stop_task`: a moment's patience, then
  cancellations repeated until it ends, and never longer than a bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: Seconds between two cancellations of a task that has not ended (one may be lost).
RECANCEL = 0.05


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set, at most ``seconds`` (None: no limit); True when it is set.

    ``asyncio.timeout``, not ``wait_for``, so a cancellation is never swallowed.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def stop_task(task: asyncio.Future[Any], within: float, *, patience: float = 0.0) -> bool:
    """End ``task`` within ``within`` seconds; True when it has ended.

    The task (told to stop by its flag) has ``patience`` seconds to end by
    itself; then it is cancelled, and cancelled again every :data:`RECANCEL`
    seconds while it runs on (at least once, even with no time left).  After
    ``within`` seconds it is left running and False is returned, for the
    caller to say so.  What the task raised is retrieved, never raised here;
    a cancellation of the caller is.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, within)
    if not task.done() and patience > 0.0:
        await asyncio.wait([task], timeout=min(patience, max(0.0, within)))
    while not task.done():
        task.cancel()
        left = deadline - loop.time()
        if left <= 0.0:
            return False
        await asyncio.wait([task], timeout=min(RECANCEL, left))
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit
    return True


async def stop_tasks(
    tasks: Iterable[asyncio.Future[Any]], within: float, *, patience: float = 0.0
) -> int:
    """:func:`stop_task` for several tasks at once; returns how many are still running."""
    ended = await asyncio.gather(*(stop_task(t, within, patience=patience) for t in tasks))
    return sum(1 for done in ended if not done)
