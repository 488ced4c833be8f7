"""Instrumentation: the router emits events; hooks turn them into metrics and logs.

:class:`PrometheusHook` is installed by every router unless ``metrics=False``;
:class:`LoggingHook` writes each event as one log line.

A hook is any callable taking one event.  Hooks must be quick and must not
raise (a hook that raises is logged and otherwise ignored)::

    def my_hook(event: smsroute.Event) -> None:
        if isinstance(event, smsroute.Failover):
            print("failover", event.from_provider, "->", event.to_provider, event.reason)

    router = Router.from_yaml("routing.yaml", hooks=[my_hook])
"""

from smsroute.instrument.events import (
    AnomalyTransition,
    AttemptFinished,
    BreakerTransition,
    BudgetSpent,
    ConcurrencySkip,
    ConfigReloaded,
    DeliveryReceived,
    Event,
    Failover,
    GuardOverrun,
    GuardRefused,
    Hook,
    MessageFinished,
    RateLimitWait,
    StateBackendError,
    WebhookRefused,
)
from smsroute.instrument.logging import LoggingHook
from smsroute.instrument.prometheus import PrometheusHook

__all__ = [
    "AnomalyTransition",
    "AttemptFinished",
    "BreakerTransition",
    "BudgetSpent",
    "ConcurrencySkip",
    "ConfigReloaded",
    "DeliveryReceived",
    "Event",
    "Failover",
    "GuardOverrun",
    "GuardRefused",
    "Hook",
    "LoggingHook",
    "MessageFinished",
    "PrometheusHook",
    "RateLimitWait",
    "StateBackendError",
    "WebhookRefused",
]
