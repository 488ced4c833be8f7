"""Instrumentation: the router emits events; hooks turn them into metrics and logs.

A hook is any callable taking one event.  Hooks must be quick and must not
raise (a hook that raises is logged and otherwise ignored)::

    def my_hook(event: smsroute.Event) -> None:
        if isinstance(event, smsroute.Failover):
            print("failover", event.from_provider, "->", event.to_provider, event.reason)

    router = Router.from_yaml("routing.yaml", hooks=[my_hook])
"""

from smsroute.instrument.events import (
    AttemptFinished,
    BreakerTransition,
    ConfigReloaded,
    Event,
    Failover,
    Hook,
    MessageFinished,
    RateLimitWait,
)
from smsroute.instrument.logging import LoggingHook

__all__ = [
    "AttemptFinished",
    "BreakerTransition",
    "ConfigReloaded",
    "Event",
    "Failover",
    "Hook",
    "LoggingHook",
    "MessageFinished",
    "RateLimitWait",
]
