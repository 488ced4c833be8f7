"""Where breaker, health and rate-limit state lives.  Memory (one process) by default."""

from smsroute.state.memory import MemoryState

__all__ = ["MemoryState"]
