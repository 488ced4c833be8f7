"""A row of the SQLite outbox that another program or version wrote: one message, not the queue.

Hypothesis picks a column of one pending message and a value smsroute never writes there
(another type, invalid JSON, an unknown state, a number that is not one, negative, huge
or infinite times, NULL where allowed).  The contract:

- the worker neither crashes nor spins: two passes send every other message;
- the bad message ends in a known state: sent (the value did no harm), pending and due
  later, or a dead letter whose reason names the field, with one ERROR line naming the
  message id and what to do;
- status() and dead_letters() answer, never raise;
- no traceback, number or message text in any log line.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from pathlib import Path

from conftest import make_config
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from log_support import every_log_record
from test_outbox_corrupt_file import NUMBER, SECRET, START, config_for, pending

from smsroute import ManualClock, Router
from smsroute.testing import FakeTwilio

COLUMNS = [
    "id",
    "state",
    "priority",
    "due",
    "expires",
    "ttl",
    "tries",
    "lease_owner",
    "lease_until",
    "enqueued_at",
    "updated_at",
    "status",
    "provider",
    "outcome",
    "to_number",
    "body",
    "sender",
    "category",
    "tags",
    "metadata",
]

VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.sampled_from(["bogus", "leased", "dead", "{oops", "[1,2]", '{"a": 1}', "1e400", "-5", ""]),
)


async def run(path: Path, ids: list[str]) -> tuple[dict[str, str], list[str], str]:
    clock = ManualClock(START + 10)
    async with (
        FakeTwilio() as fake,
        Router(
            make_config(config_for(path, fake)), clock=clock, sleep=clock.sleep, metrics=False
        ) as router,
    ):
        worker = router.worker(concurrency=8)
        for _ in range(2):
            await worker.run_once()
        for mid in ids:
            await router.status(mid)
        letters = await router.dead_letters()
        sent = sorted(m.text for m in fake.messages)
    with sqlite3.connect(path) as conn:
        states = dict(conn.execute("SELECT id, state FROM messages").fetchall())
    return states, sent, " ".join(d.reason for d in letters)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(column=st.sampled_from(COLUMNS), value=VALUES)
@example(column="tags", value="not json")
@example(column="due", value="soon")
@example(column="enqueued_at", value=1e300)
@example(column="outcome", value="weird")
@example(column="state", value="bogus")
def test_a_bad_row_is_one_dead_letter_and_the_rest_is_sent(column: str, value: object) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.db"
        ids = asyncio.run(pending(path, 4))
        with sqlite3.connect(path) as conn:
            try:
                conn.execute(f"UPDATE messages SET {column} = ? WHERE id = ?", (value, ids[1]))
            except sqlite3.IntegrityError:  # NOT NULL, UNIQUE: SQLite refuses it itself
                assume(False)
        with every_log_record() as logs:
            states, sent, reasons = asyncio.run(run(path, ids))
    others = [i for i in ids if i != ids[1]]
    assert all(states.get(i) == "sent" for i in others), (states, others)
    assert len([t for t in sent if t.startswith(SECRET)]) >= 3
    errors = [text for level, text in logs.records if level >= logging.ERROR]
    bad_state = [s for i, s in states.items() if i not in others]
    assert len(bad_state) == 1
    assert bad_state[0] in ("sent", "dead", "pending"), bad_state
    if bad_state[0] == "dead" and "the outbox record is damaged" in reasons:
        assert len(errors) == 1, errors
        assert "requeue" in errors[0], errors
    for _, text in logs.records:
        assert "Traceback" not in text, text
        assert NUMBER.format(1)[1:] not in text, text
        assert SECRET not in text, text
