"""Where breaker, health and rate-limit state lives.

``state: {backend: memory}`` (the default) keeps it in this process;
``state: {backend: redis, url: ...}`` shares it with every replica through
Redis (:mod:`smsroute.state.redis`, which needs the ``redis`` extra).
"""

from smsroute.errors import StateBackendUnavailable
from smsroute.state.backend import StateBackend, open_state
from smsroute.state.memory import MemoryState

__all__ = ["MemoryState", "StateBackend", "StateBackendUnavailable", "open_state"]
