"""A hook that writes every event as one structured log line (numbers never appear)."""

from __future__ import annotations

import logging

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
    MessageFinished,
    RateLimitWait,
    WebhookRefused,
)
from smsroute.message import Outcome

_NAMES = {
    AttemptFinished: "attempt_finished",
    MessageFinished: "message_finished",
    Failover: "failover",
    BreakerTransition: "breaker_transition",
    RateLimitWait: "ratelimit_wait",
    ConcurrencySkip: "concurrency_skip",
    ConfigReloaded: "config_reloaded",
    DeliveryReceived: "delivery_received",
    WebhookRefused: "webhook_refused",
    GuardRefused: "guard_refused",
    GuardOverrun: "guard_overrun",
    AnomalyTransition: "anomaly_transition",
    BudgetSpent: "budget_spent",
}


class LoggingHook:
    """Log events to ``logger`` (default ``smsroute.events``) as ``event key=value ...``.

    The fields also go into the record's ``extra`` as ``smsroute_event`` and
    ``smsroute_fields`` for JSON formatters.  Failures, failovers, breaker
    changes and refused webhooks log at WARNING; receipts saying a message was not
    delivered at INFO; the rest at DEBUG.  Events never carry a phone number or
    text, so nothing needs masking here.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("smsroute.events")

    def __call__(self, event: Event) -> None:
        level = self._level(event)
        if not self.logger.isEnabledFor(level):
            return
        name = _NAMES.get(type(event), type(event).__name__)
        fields = {k: (v.value if isinstance(v, Outcome) else v) for k, v in event._asdict().items()}
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        self.logger.log(
            level,
            "%s %s",
            name,
            text,
            extra={"smsroute_event": name, "smsroute_fields": fields},
        )

    @staticmethod
    def _level(event: Event) -> int:
        if isinstance(event, Failover | BreakerTransition | WebhookRefused | AnomalyTransition):
            return logging.WARNING
        if isinstance(event, GuardRefused | GuardOverrun):
            return logging.INFO
        if isinstance(event, ConfigReloaded):
            return logging.INFO if event.result == "success" else logging.ERROR
        if isinstance(event, MessageFinished) and event.status != "accepted":
            return logging.WARNING
        if isinstance(event, DeliveryReceived) and event.status in ("undelivered", "failed"):
            return logging.INFO
        return logging.DEBUG
