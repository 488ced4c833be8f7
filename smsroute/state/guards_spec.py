"""The guards' script arguments (see :mod:`smsroute.state.redis_guards` and
:mod:`smsroute.state.guards_script`): a lane's part, packed once (the :class:`Spec`, made
of a lane or of an unusual message's query), the messages waiting for a batch
(:class:`Queued`) and a batch packed (:func:`pack`); and a lane's message as a query for
the counts in this process."""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smsroute.guardquery import AnomalyQuery, GuardAnswer, GuardQuery, Lane
from smsroute.state.redis_link import resp

if TYPE_CHECKING:
    import asyncio

#: The hash of :func:`hashed` with nothing in it yet, without a key: every hash of an
#: ident is a copy of this or of :func:`keyed_hash`'s (cheaper than a new one, and one
#: place for its parameters; ``RedisGuardCounts._line`` copies it inline for a
#: message's number).
HASH = hashlib.blake2b(digest_size=12)


def keyed_hash(key: str | None) -> hashlib.blake2b:
    """The empty hash idents are hashed from: :data:`HASH`, or keyed with ``state.hash_key``
    (then whoever reads the keys cannot find a number by hashing every number of its
    range without the key)."""
    if key is None:
        return HASH
    return hashlib.blake2b(digest_size=12, key=key.encode("utf-8", "surrogatepass"))


def hashed(ident: str, base: hashlib.blake2b = HASH) -> str:
    """A number or prefix (or country) hashed from ``base``: the keys in Redis never show
    the digits."""
    h = base.copy()
    h.update(ident.encode())
    return h.hexdigest()


def packed_number(value: float) -> bytes:
    """A number as the script reads it."""
    return repr(value).encode()


def packed_times(times: Sequence[float]) -> bytes:
    """Times as the script reads them: little-endian doubles, one after the other."""
    packed = array("d", times)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


class Spec:
    """One lane's (or one unusual query's) part of the script's arguments, packed.

    ``free`` says how a message's idents are found, one per velocity limit whose ident
    is not fixed (a country's is): 0 its number, ``n`` its prefix ``e164[1:n]``."""

    __slots__ = (
        "answer", "count", "fields", "free", "head", "ident", "keys", "lane", "limits", "mark",
        "names", "owner", "packed", "pair", "query", "start", "until",
    )  # fmt: skip

    def __init__(
        self,
        owner: object,
        prefix: str,
        ident: int,
        caps: Sequence[tuple[str, float]],
        reads: Sequence[tuple[str, str, float]],
        anomaly: AnomalyQuery | None,
        velocity: Sequence[tuple[str, str | None, float, int]],
        free: tuple[int, ...],
        base: hashlib.blake2b = HASH,
    ) -> None:
        fields: list[bytes] = [b"%d" % ident, b"%d" % len(caps)]
        for key, limit in caps:
            fields += [(prefix + key).encode(), packed_number(limit)]
        fields.append(b"%d" % len(reads))
        fields += [(prefix + key).encode() for key, _, _ in reads]
        if anomaly is None:
            fields.append(b"0")
        else:
            a = anomaly
            fields += [
                b"1",
                (prefix + a.key).encode(),
                (prefix + a.armed_key).encode(),
                packed_number(a.window),
                packed_number(a.baseline),
                packed_number(a.slot),
                packed_number(a.factor),
                b"%d" % a.min_count,
                b"1" if a.blocks else b"0",
            ]
        fields.append(b"%d" % len(velocity))
        for key, fixed, window, most in velocity:
            digest = b"" if fixed is None else hashed(fixed, base).encode()
            fields += [(prefix + key).encode(), packed_number(window), b"%d" % most, digest]
        #: The counts it was made for (a lane keeps one spec, for one store).
        self.owner = owner
        #: Its id in the script's queries, and as its lines start.
        self.ident = ident
        self.head = f"{ident} "
        #: Its fields, and the same packed (RESP) for the batches.
        self.fields = fields
        self.packed = resp(fields)
        self.count = len(fields)
        #: The provider budgets read: their names and limits, in the order of the spends.
        self.names = tuple(name for _, name, _ in reads)
        #: The budget keys (caps, then reads), as this process names them.
        self.keys = tuple([key for key, _ in caps] + [key for key, _, _ in reads])
        self.limits = tuple(limit for _, _, limit in reads)
        self.free = free
        #: ``n`` when ``free`` is the number then the prefix ``e164[1:n]`` (the usual
        #: velocity limits, whose line is made in one step), else 0.
        self.pair = free[1] if len(free) == 2 and free[0] == 0 and free[1] else 0
        #: The clock's span in which the budget keys packed here are current.
        self.start, self.until = float("-inf"), float("inf")
        #: The batch that carries it (it goes once in each).
        self.mark = 0
        self.lane: Lane | None = None
        #: The query the spec was made of (an unusual message's, see check()).
        self.query: GuardQuery | None = None
        #: Its answer for the messages that passed with nothing to report, in a batch.
        self.answer: GuardAnswer | None = None


def lane_spec(
    owner: object, prefix: str, ident: int, lane: Lane, now: float, base: hashlib.blake2b = HASH
) -> Spec:
    """``lane``'s spec (id ``ident``) for the budget periods ``now`` falls in, kept on the
    lane (its fixed idents hashed from ``base``) until the lane rolls into other periods
    (:meth:`Lane.roll` forgets it)."""
    if not lane.start <= now < lane.until:
        lane.roll(now)
    keys = lane.keys
    n = lane.ncaps
    spec = Spec(
        owner,
        prefix,
        ident,
        [(key, sk.limit) for key, sk in zip(keys[:n], lane.budgets[:n], strict=True)],
        [
            (key, sk.budget.name, sk.limit)
            for key, sk in zip(keys[n:], lane.budgets[n:], strict=True)
        ],
        lane.anomaly,
        [
            (key, lane.country if kind == 2 else None, window, most)
            for key, kind, _, window, most in lane.velocity
        ],
        tuple(0 if kind == 0 else end for _, kind, end, _, _ in lane.velocity if kind != 2),
        base,
    )
    spec.start, spec.until = lane.start, lane.until
    spec.lane = lane
    lane.shared = spec
    return spec


def query_spec(
    owner: object, prefix: str, ident: int, query: GuardQuery, base: hashlib.blake2b = HASH
) -> Spec:
    """The spec (id ``ident``) of an unusual message's query: every ident fixed (hashed
    from ``base``)."""
    spec = Spec(
        owner,
        prefix,
        ident,
        query.caps,
        [(key, "", float("inf")) for key in query.spends],
        query.anomaly,
        [(key, ident_, window, most) for key, ident_, window, most in query.velocity],
        (),
        base,
    )
    spec.query = query
    return spec


def lane_query(lane: Lane, e164: str, member: str, now: float) -> GuardQuery:
    """The query of a lane's message, for counts in this process."""
    return GuardQuery(
        now,
        member,
        [(sk.at(now), sk.limit) for sk in lane.budgets[: lane.ncaps]],
        [sk.at(now) for sk in lane.budgets[lane.ncaps :]],
        lane.anomaly,
        [
            (key, e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country, w, most)
            for key, kind, end, w, most in lane.velocity
        ],
    )


class Queued:
    """Messages waiting for a batch, a column each: their specs; their lines of the
    script's queries, ``<lane> <idents...> <flag><member>`` (the idents its spec leaves
    free, hashed); their times (the clock's; the script gets them packed as doubles, see
    :func:`pack`); their numbers (None: a query's); and, for checks, the answers to come."""

    __slots__ = ("futures", "numbers", "specs", "texts", "times")

    def __init__(self) -> None:
        self.specs: list[Spec] = []
        self.texts: list[str] = []
        self.times: list[float] = []
        self.numbers: list[str | None] = []
        self.futures: list[asyncio.Future[GuardAnswer]] = []


def pack(
    prefix: str, mark: int, mode: bytes, spends: dict[str, list[float]], queued: Queued
) -> tuple[list[bytes], int]:
    """The script's arguments (packed) for writing ``spends`` (key -> [amount, ttl
    seconds]) and answering ``queued`` in ``mode`` as batch ``mark`` (each spec goes once
    in a batch), and how many there are."""
    head = [mode, b"%d" % len(spends)]
    for key, (amount, ttl) in spends.items():
        head += [(prefix + key).encode(), packed_number(amount), b"%d" % (int(ttl * 1000) + 1)]
    parts: list[bytes] = []
    count = 0
    for spec in queued.specs:
        if spec.mark != mark:
            spec.mark = mark
            parts.append(spec.packed)
            count += spec.count
    head.append(b"%d" % len(parts))
    lines = "\n".join(queued.texts).encode()
    packed = packed_times(queued.times)
    parts.insert(0, resp(head))
    parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(lines), lines, len(packed), packed))
    return parts, len(head) + count + 2
