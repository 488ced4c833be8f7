"""Receipts and inbound messages processed once across replicas: providers retry,
and a retry may reach another replica.

The webhooks first check their own memory (a retry to the same replica costs
no round trip), then claim the receipt in Redis with ``SET NX``: the replica
that sets the key processes the receipt, the others drop it.  While Redis is
down every replica processes what it receives (a duplicate is better than a
lost receipt; state only moves forward anyway).  Inbound messages are claimed
the same way, keyed ``("inbound", provider, the provider's message id)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend


class ReceiptLog:
    """Which receipts (and inbound messages) some replica has already processed,
    kept ``receipt_ttl`` in Redis."""

    def __init__(self, backend: SharedBackend) -> None:
        self._backend = backend
        self._prefix = f"{backend.settings.key_prefix}receipt:"

    async def first_time(self, key: Hashable) -> bool:
        """Claim ``key`` (a receipt's identity): True for the first replica to see it."""
        backend = self._backend
        link = backend.link
        if not link.up:
            return True
        name = self._prefix + hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        ttl = max(1, int(backend.settings.receipt_ttl))

        async def claim() -> bool:
            return bool(await link.client.set(name, "1", nx=True, ex=ttl))

        claimed = await link.run("receipts", claim, name)
        return claimed is None or claimed
