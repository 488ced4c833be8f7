"""The guards' counts shared by every replica: sliding logs, anomaly slots and spend in Redis.

A guard's check must see every replica's messages, so each check is answered in Redis
by one script (:data:`GUARDS`) that applies the rules of :mod:`smsroute.guardcounts`
atomically: budgets at their cap, the anomaly slots, the velocity logs, then the
counting.  Checks are batched: the messages that reach the guards while a script call
is under way wait for the next one, which carries them all (and the spend of messages
accepted meanwhile), so a busy router makes one round trip per batch, not per message.

    P guard:v|<scope>|<per>|<window>|<hash>   zset   send times (score) of the last max messages
    P guard:a|<scope>|<window>|<baseline>|CC  hash   r<slot>: requests, p<slot>: passed messages
    P guard:a|<scope>|since                   str    when the category was first counted (kept)
    P guard:b|<scope:name>|<per>|<period>     str    spend of the period (expires after it)

Numbers and prefixes appear in keys only hashed (BLAKE2b).  Times are the replicas'
wall clocks (UTC epoch seconds), which must agree (NTP) to well within a window.

What a message costs here is kept small, because every message of a guarded category
makes one (issue 19: "the Redis state keeps its ratio"): a :class:`~smsroute.guardquery.Lane`
(the messages of one category, rule and country) is packed into the script's arguments
once per budget period (:class:`Spec`), and a message is one line of one argument,
``<lane> <hashed number and prefixes> <member>``, and its time one double of another
(:class:`~smsroute.state.guards_spec.Queued`, :func:`~smsroute.state.guards_spec.pack`:
no decimal text to make); the script answers each lane
once per batch (its provider spends) and only the messages with something to report (a
refusal, a trip, a release: :mod:`smsroute.state.guards_script`), so the lane's other
messages share one answer, with its providers at their cap worked out once.  A batch
goes over a connection of its own (:class:`~smsroute.state.redis_link.Channel`): one
write, one read.

With ``state.guard_checks: local`` nothing waits: the replica decides in its memory
(:mod:`smsroute.state.guards_mirror`) and the batches, every :data:`SPEND_DELAY` at most,
carry *records* of what it decided (:meth:`RedisGuardCounts.record`, the script's
``record`` mode), whose answers go back to the mirror.

While Redis is down, checks are answered by a :class:`MemoryGuardCounts` in this
process (each replica counts alone), and spend waits to be written when Redis is back.
``explain`` reads the counts in Redis with a blocking call (:meth:`RedisGuardCounts.peek`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from smsroute.guardcounts import MemoryGuardCounts
from smsroute.guardquery import SPEND_KEPT, GuardAnswer, GuardQuery, Lane, SpendKey
from smsroute.state.guards_script import GUARDS
from smsroute.state.guards_spec import (
    Queued,
    Spec,
    hashed,
    keyed_hash,
    lane_query,
    lane_spec,
    pack,
    packed_times,
    query_spec,
)
from smsroute.state.redis_link import Channel

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend

log = logging.getLogger("smsroute.state")

#: Prefix hashes remembered (prefixes repeat; numbers rarely do).
PREFIXES_MAX = 50_000
#: Spend totals remembered (for BudgetSpent events between two script calls).
SEEN_MAX = 100_000
#: Seconds a replica's spend may wait for a batch of checks to carry it to Redis
#: (other replicas see it this much later: a cap is overrun by at most what the
#: replica accepts meanwhile).
SPEND_DELAY = 0.01


class Learner(Protocol):
    """What the batches of ``state.guard_checks: local`` tell (the
    :class:`~smsroute.state.guards_mirror.Mirror`)."""

    def learn(
        self, specs: Sequence[Spec], numbers: Sequence[str | None], mark: int, reply: Any
    ) -> None:
        """A batch of records was answered (see the script's 'record' mode)."""
        ...

    def release(self, specs: Sequence[Spec], numbers: Sequence[str | None]) -> None:
        """Given-back messages left their logs in Redis."""
        ...

    def take_unrecorded(self, now: float) -> list[tuple[str, float, float]]:
        """This replica's spend not recorded yet, taken: (key, amount, seconds to keep)."""
        ...

    def has_unrecorded(self) -> bool:
        """Whether :meth:`take_unrecorded` has anything to give."""
        ...


class RedisGuardCounts:
    """:class:`~smsroute.guardquery.SharedGuardCounts` in Redis, checks batched."""

    def __init__(self, backend: SharedBackend) -> None:
        self._backend = backend
        self._link = backend.link
        self.prefix = f"{backend.settings.key_prefix}guard:"
        #: What numbers and prefixes are hashed from (keyed with ``state.hash_key``).
        self._hash = keyed_hash(backend.settings.hash_key)
        self._channel = Channel(backend.link, "guards", GUARDS)
        #: Answers checks while Redis is down.
        self.local = MemoryGuardCounts()
        self.tripped: dict[str, bool] = {}
        #: The checks (or records) waiting for the next batch.
        self._queued = Queued()
        #: Spend not yet written: key -> [amount, ttl seconds].
        self._unwritten: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: No batch is due: neither under way nor waiting for its timer (see wake()).
        self.asleep = True
        #: The clock's time the guards last gave (a record's, a wake's): how long spend
        #: taken from the mirror is kept in Redis is counted from it.
        self._now = 0.0
        #: Cancelled sends' checks whose times go back out of the logs (see give_back).
        self._back = Queued()
        self._batches = 0
        self._ids = 0
        self._prefixes: dict[str, str] = {}
        #: The spend totals Redis answered last: key -> total.
        self._seen: dict[str, float] = {}
        #: With ``state.guard_checks: local``: the counts that decide (this process's),
        #: told what Redis counted (see :mod:`smsroute.state.guards_mirror`).
        self.mirror: Learner | None = None

    @property
    def up(self) -> bool:
        """Whether Redis answered the last call."""
        return self._link.up

    # -- the guards' side ------------------------------------------------------------

    def ask(self, lane: Lane, e164: str, member: str, now: float) -> asyncio.Future[GuardAnswer]:
        """Check and count a message of ``lane`` to ``e164`` with the next batch."""
        future: asyncio.Future[GuardAnswer] = asyncio.get_running_loop().create_future()
        if not self._link.up:
            future.set_result(self.local.evaluate(lane_query(lane, e164, member, now), True))
            return future
        spec = self._spec_of(lane, now)
        self._enqueue(spec, self._line(spec, e164, member), now, future, e164)
        return future

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer ``query`` (any message: tag budgets, an override) with the next batch."""
        if not self._link.up:
            return self.local.evaluate(query, True)
        future: asyncio.Future[GuardAnswer] = asyncio.get_running_loop().create_future()
        spec = self._query_spec(query)
        text = self._line(spec, "", query.member)
        self._enqueue(spec, text, query.now, future, None)
        try:
            return await future
        except BaseException:  # cancelled as its answer came (a waiting check's cancel
            if (  # is seen by the batch, which gives its count back)
                future.done()
                and not future.cancelled()
                and future.exception() is None
                and future.result().refused is None
            ):
                self._give_back_line(spec, text, query.now, None)
            raise

    def give_back(self, lane: Lane, e164: str, member: str, now: float) -> None:
        """:meth:`GuardCounts.give_back`, with the next batch (in this process's counts
        while Redis is down)."""
        if not self._link.up:
            self.local.give_back(lane, e164, member, now)
            return
        spec = self._spec_of(lane, now)
        self._give_back_line(spec, self._line(spec, e164, member), now, e164)

    def _give_back_line(self, spec: Spec, text: str, now: float, number: str | None) -> None:
        """Take a counted message (its ``spec`` and line) out of the logs with the next batch."""
        back = self._back
        back.specs.append(spec)
        back.texts.append(text)
        back.times.append(now)
        back.numbers.append(number)
        self._start()

    def record(self, lane: Lane, e164: str, member: str, now: float, passed: bool) -> None:
        """Count in Redis a message of ``lane`` the replica decided on (``state.guard_checks:
        local``): ``passed``, or refused after the anomaly guard counted its request.
        Written with the next batch, at most :data:`SPEND_DELAY` after the batch before
        (so that batches carry many: nothing waits for them); while Redis is down only
        this process counts."""
        if self._link.up:
            self._now = now
            # _spec_of(), inline: once a message.  The lane's periods hold ``now`` (the
            # counts' fast() has just checked it): a spec kept on it is current.
            spec: Spec | None = lane.shared
            if spec is None or spec.owner is not self:
                spec = self._lane_spec(lane, now)
            queued = self._queued
            queued.specs.append(spec)
            queued.times.append(now)
            queued.numbers.append(e164)
            queued.texts.append(self._line(spec, e164, member, "p" if passed else "r"))
            if self.asleep:  # neither a batch under way nor its timer
                self._later()

    def record_query(self, query: GuardQuery, passed: bool) -> None:
        """:meth:`record` for a message that took the general path (a query)."""
        if self._link.up:
            self._now = query.now
            spec = self._query_spec(query)
            queued = self._queued
            queued.specs.append(spec)
            queued.texts.append(self._line(spec, "", query.member, "p" if passed else "r"))
            queued.times.append(query.now)
            queued.numbers.append(None)
            if self._timer is None and self._task is None:
                self._later()

    def _start(self) -> None:
        """Start the batches unless one is under way."""
        if self._task is None:
            self.asleep = False
            self._task = asyncio.ensure_future(
                self._run() if self.mirror is None else self._run_records()
            )

    def wake(self, now: float) -> None:
        """The mirror holds spend to record (``state.guard_checks: local``): a batch
        within :data:`SPEND_DELAY` unless one is due (see :attr:`asleep`)."""
        self._now = now
        if self._link.up and self._timer is None and self._task is None:
            self._later()

    def _spec_of(self, lane: Lane, now: float) -> Spec:
        """``lane``'s spec for the budget periods ``now`` falls in."""
        spec: Spec | None = lane.shared
        if spec is None or spec.owner is not self or not spec.start <= now < spec.until:
            spec = self._lane_spec(lane, now)
        return spec

    def _enqueue(
        self,
        spec: Spec,
        text: str,
        now: float,
        future: asyncio.Future[GuardAnswer],
        number: str | None,
    ) -> None:
        """Put a check in the next batch (starting the batches if none is under way)."""
        queued = self._queued
        queued.specs.append(spec)
        queued.texts.append(text)
        queued.times.append(now)
        queued.futures.append(future)
        queued.numbers.append(number)
        self._start()

    def _line(self, spec: Spec, e164: str, member: str, flag: str = "") -> str:
        """A message as a line of the script's queries: the idents ``spec`` leaves free
        (a query's spec fixes them all), hashed, and its ``member``, which the script
        makes ``<member>:<time in µs>`` in the logs: unique, and made again the same by
        :meth:`give_back` (a recorded message's line puts its ``flag`` before it)."""
        if "\n" in member:  # a line of the queries: only its uniqueness matters
            member = hashed(member)
        end = spec.pair
        if end:  # the number and a prefix: the loop below in one step
            h = self._hash.copy()  # hashed(e164, self._hash), inline: once a message
            h.update(e164.encode())
            part = e164[1:end]
            known = self._prefixes.get(part)
            return f"{spec.head}{h.hexdigest()} {known or self._prefix_hash(part)} {flag}{member}"
        line = spec.head
        for end in spec.free:
            if end:
                part = e164[1:end]
                digest = self._prefixes.get(part)
                if digest is None:
                    digest = self._prefix_hash(part)
            else:
                h = self._hash.copy()  # hashed(e164, self._hash), inline: once a message
                h.update(e164.encode())
                digest = h.hexdigest()
            line += digest + " "
        return f"{line}{flag}{member}"

    def _prefix_hash(self, part: str) -> str:
        """A prefix's hash, remembered (at most :data:`PREFIXES_MAX`)."""
        if len(self._prefixes) > PREFIXES_MAX:
            self._prefixes.clear()
        digest = self._prefixes[part] = hashed(part, self._hash)
        return digest

    def spend(self, keys: Sequence[SpendKey], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend; written with the next batch of checks, or
        on its own after :data:`SPEND_DELAY` (the totals returned count what Redis said
        last and this replica's spend since)."""
        out = []
        seen = self._seen
        for sk in keys:
            key = sk.key
            total = seen[key] = seen.get(key, 0.0) + amount
            out.append(total)
        self.queue_spend(keys, amount, now)
        if not self._link.up:
            for sk in keys:
                self.local.add_spend(sk.key, amount, sk.end + SPEND_KEPT, sk.limit)
        return out

    def queue_spend(self, keys: Sequence[SpendKey], amount: float, now: float) -> None:
        """Write ``amount`` to each key's spend with the next batch, or after
        :data:`SPEND_DELAY` (kept while Redis is down, written when it is back)."""
        unwritten = self._unwritten
        for sk in keys:
            entry = unwritten.get(sk.key)
            if entry is None:
                unwritten[sk.key] = [amount, sk.end - now + SPEND_KEPT]
            else:
                entry[0] += amount
        if self._link.up and self._task is None and self._timer is None:
            self._later()

    def unwritten(self, key: str) -> float:
        """This replica's spend on ``key`` not yet sent to Redis."""
        entry = self._unwritten.get(key)
        return 0.0 if entry is None else entry[0]

    def _later(self) -> None:
        """Write what waits (spend, records) after :data:`SPEND_DELAY`."""
        self.asleep = False
        self._timer = asyncio.get_running_loop().call_later(SPEND_DELAY, self._flush)

    def _pending(self) -> bool:
        """Whether anything waits for a batch."""
        return bool(
            self._unwritten
            or self._queued.specs
            or self._back.specs
            or (self.mirror is not None and self.mirror.has_unrecorded())
        )

    def _flush(self) -> None:
        """Write what no batch has carried since :data:`SPEND_DELAY`."""
        self._timer = None
        if self._task is None:
            if self._pending():
                self._start()
            else:
                self.asleep = True

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What a check would answer now, changing nothing: read in Redis with a blocking
        call (at most ``state.timeout``; for ``explain``), or in this process's counts
        while Redis is down."""
        if not self._link.up:
            return self.local.peek(query)
        spec = self._query_spec(query)
        line = f"{spec.head}peek".encode()
        args = [b"peek", b"0", b"1", *spec.fields, line, packed_times([query.now])]

        def call(client: Any) -> Any:
            return client.register_script(GUARDS)(keys=[], args=args)

        reply = self._link.run_now("guards", call)
        if reply is None:  # this process's counts (not local.peek: a Mirror's asks Redis)
            return MemoryGuardCounts.peek(self.local, query)
        _, lanes, details = reply
        return self._answer(details[1], tuple(float(s) for s in lanes[0][0]))

    # -- the specs -------------------------------------------------------------------

    def _lane_spec(self, lane: Lane, now: float) -> Spec:
        """``lane``'s spec for the budget periods ``now`` falls in (kept on the lane)."""
        self._ids += 1
        return lane_spec(self, self.prefix, self._ids, lane, now, self._hash)

    def _query_spec(self, query: GuardQuery) -> Spec:
        self._ids += 1
        return query_spec(self, self.prefix, self._ids, query, self._hash)

    # -- the batches -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._queued.specs or self._unwritten or self._back.specs:
                if self._back.specs:
                    back, self._back = self._back, Queued()
                    await self._give_back(back)
                    continue
                queued, self._queued = self._queued, Queued()
                try:
                    answers = await self._call(queued)
                except Exception:  # a bug must not leave sends waiting
                    log.exception("smsroute: checking guards in Redis failed")
                    answers = None
                back = Queued()
                for i, future in enumerate(queued.futures):
                    if future.done():  # its send was cancelled while it waited
                        if answers is not None and answers[i].refused is None:
                            back.specs.append(queued.specs[i])
                            back.texts.append(queued.texts[i])
                            back.times.append(queued.times[i])
                            back.numbers.append(queued.numbers[i])
                        continue
                    future.set_result(answers[i] if answers is not None else self._local(queued, i))
                if back.specs:
                    await self._give_back(back)
                if answers is None:  # Redis is down: checks go local; spend waits for it
                    queued, self._queued = self._queued, Queued()
                    for i, future in enumerate(queued.futures):
                        if not future.done():
                            future.set_result(self._local(queued, i))
                    return
        finally:
            self._task = None
            self.asleep = self._timer is None

    async def _run_records(self) -> None:
        """The batches of ``state.guard_checks: local``: the messages recorded (and the
        spend) go in one script call, the times of cancelled sends out after them, and
        what Redis counted goes back to the mirror."""
        written = False
        try:
            written = await self._records()
        except Exception:  # a bug must not stop the batches (the next one tries again)
            log.exception("smsroute: recording the guards' counts in Redis failed")
        finally:
            self._task = None
            if self._timer is None:
                if written and self._link.up and self._pending():
                    self._later()  # what came meanwhile: the next batch, SPEND_DELAY on
                else:  # after a failed call the next record or spend starts one (no loop
                    self.asleep = True  # of calls while Redis answers each with an error)

    async def _records(self) -> bool:
        """One batch of records and spend; then the given-back messages.  False when the
        call failed."""
        if self.mirror is not None:  # the spend the mirror counted since the last batch
            unwritten = self._unwritten
            for key, amount, ttl in self.mirror.take_unrecorded(self._now):
                entry = unwritten.get(key)
                if entry is None:
                    unwritten[key] = [amount, ttl]
                else:
                    entry[0] += amount
        if self._queued.specs or self._unwritten:
            queued, self._queued = self._queued, Queued()
            unwritten, self._unwritten = self._unwritten, {}
            parts, count = self._pack(b"record", unwritten, queued)
            reply = await self._channel.evalsha(parts, count)
            if reply is None:  # Redis is down (or refused bad data): these records are
                self._keep(unwritten)  # lost, spend waits
                self._queued, self._back = Queued(), Queued()
                return False
            if self.mirror is not None:
                self.mirror.learn(queued.specs, queued.numbers, self._batches, reply)
        if self._back.specs:
            back, self._back = self._back, Queued()
            await self._give_back(back)
            if self.mirror is not None:  # after any record's answer that held them
                self.mirror.release(back.specs, back.numbers)
        return True

    def _keep(self, unwritten: dict[str, list[float]]) -> None:
        """Put spend a failed call did not write back in line (written when Redis is back)."""
        for key, (amount, ttl) in unwritten.items():
            entry = self._unwritten.setdefault(key, [0.0, ttl])
            entry[0] += amount

    def _local(self, queued: Queued, i: int) -> GuardAnswer:
        """The answer of the counts in this process (Redis is down) to ``queued``'s
        ``i``-th check."""
        spec = queued.specs[i]
        if spec.query is not None:
            return self.local.evaluate(spec.query, True)
        assert spec.lane is not None
        e164 = queued.numbers[i]
        assert e164 is not None
        member = queued.texts[i].rsplit(" ", 1)[-1]
        return self.local.evaluate(lane_query(spec.lane, e164, member, queued.times[i]), True)

    def _pack(
        self, mode: bytes, spends: dict[str, list[float]], queued: Queued
    ) -> tuple[list[bytes], int]:
        """The script's arguments (packed) for writing ``spends`` and answering
        ``queued`` in ``mode`` (a new batch), and how many there are."""
        self._batches += 1
        return pack(self.prefix, self._batches, mode, spends, queued)

    async def _call(self, queued: Queued) -> list[GuardAnswer] | None:
        unwritten, self._unwritten = self._unwritten, {}
        specs = queued.specs
        parts, count = self._pack(b"check", unwritten, queued)
        reply = await self._channel.evalsha(parts, count)
        if reply is None:
            self._keep(unwritten)
            return None
        totals, lanes, details = reply
        seen = self._seen
        if len(seen) > SEEN_MAX:
            seen.clear()
        for key, total in zip(unwritten, totals, strict=True):
            seen[key] = float(total)
        # one answer per lane, shared by its messages that passed with nothing to report
        mark, n = self._batches, 0
        for spec in specs:
            if spec.mark == mark:
                spec.mark = -mark  # its lane's answer is next
                spends, _, recent, base = lanes[n]
                n += 1
                spent = tuple([float(x) for x in spends])
                answer = GuardAnswer(None, 0, 0.0, spent, False, recent, base)
                if spec.query is None:  # a lane's: the providers at their cap (a query's:
                    answer.over = frozenset(  # the guards work them out from its plan)
                        [
                            n
                            for n, x, cap in zip(spec.names, spent, spec.limits, strict=True)
                            if x >= cap
                        ]
                    )
                spec.answer = answer
        answers: list[GuardAnswer] = [spec.answer for spec in specs]  # type: ignore[misc]
        for k in range(0, len(details), 2):
            q = details[k] - 1
            answers[q] = self._answer(details[k + 1], answers[q].spends)
        return answers

    @staticmethod
    def _answer(text: str, spends: tuple[float, ...]) -> GuardAnswer:
        refused, index, count, tripped, recent, base, *counts = text.split(" ")
        return GuardAnswer(
            None if refused == "-" else refused,
            int(index),
            float(count),
            spends,
            tripped == "1",
            int(recent),
            int(base),
            tuple(int(c) for c in counts if c),
        )

    async def _give_back(self, back: Queued) -> None:
        """Take cancelled sends' times out of the velocity windows: a send cancelled while
        its check waited for Redis counts for nothing (the anomaly guard's request count
        keeps it: it counts requests, refused ones included)."""
        parts, count = self._pack(b"back", {}, back)
        await self._channel.evalsha(parts, count)

    async def settle(self) -> None:
        """Wait until what was checked, recorded and spent so far is answered or written
        (what waits for :data:`SPEND_DELAY` goes now)."""
        while True:
            if self._timer is not None:
                self._timer.cancel()
                self._flush()
            task = self._task
            if task is None:
                return
            await asyncio.shield(task)

    async def aclose(self) -> None:
        """Let the batch under way (and the spend it writes) finish, briefly; close the
        batches' connection."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, 2 * self._backend.settings.timeout)):
                await self.settle()
        await self._channel.aclose()
