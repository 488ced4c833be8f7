"""Message ids: 128 random bits from the OS, as 32 hex digits.

``secrets.token_hex(16)`` makes one system call per id, a tenth of what the
router itself spends on a message; here one call fills a batch of 256 ids.
The bits are the same kind (``os.urandom``), so ids stay unguessable, which
matters: providers that do not echo a reference get ours in the receipt URL.
A forked child drops the batch it inherited, so parent and child never share ids.
"""

from __future__ import annotations

import os

_BATCH = 256
_pool: list[str] = []


def new_message_id() -> str:
    """A fresh message id: 32 lowercase hex digits, unique and unguessable."""
    if not _pool:
        raw = os.urandom(16 * _BATCH).hex()
        _pool.extend(raw[i : i + 32] for i in range(0, len(raw), 32))
    return _pool.pop()


def _forget_after_fork() -> None:
    _pool.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
