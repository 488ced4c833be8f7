"""Message ids: unique, unguessable-looking hex, and never shared with a forked child."""

from __future__ import annotations

import os
import re

from smsroute.ids import new_message_id


def test_ids_are_32_hex_digits_and_unique_across_many_batches() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_reuse_the_parents_batch() -> None:
    new_message_id()  # the parent now holds a partly used batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave at once
        os.close(read)
        os.write(write, "".join(new_message_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_message_id() for _ in range(5))
    assert len(child) == 160
    assert {child[i : i + 32] for i in range(0, 160, 32)}.isdisjoint(
        {parent[i : i + 32] for i in range(0, 160, 32)}
    )
