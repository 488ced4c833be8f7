"""smsroute: send SMS through several providers, routed by YAML rules, with
circuit breakers, failover by outcome class, and Prometheus metrics.

The whole public API is here::

    from smsroute import Router, Message

    async with Router.from_yaml("config/routing.yaml") as router:
        result = await router.send(Message(to="+49 151 23456789", text="Code 123456", category="otp"))
        print(result.status, result.provider, result.attempts)
"""

from smsroute.breaker import BreakerState, CircuitBreaker
from smsroute.clock import Clock, ManualClock, SystemClock
from smsroute.config import Config, QuietHours, SenderMap, SenderPool
from smsroute.configload import load_config, parse_config
from smsroute.errors import (
    ConfigError,
    ConfigProblem,
    InvalidMessage,
    InvalidNumber,
    OutboxUnavailable,
    SmsrouteError,
    StateBackendUnavailable,
)
from smsroute.guards import ANOMALY_OVERRIDE, GuardStatus
from smsroute.instrument import (
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
    LoggingHook,
    MessageFinished,
    PrometheusHook,
    RateLimitWait,
    StateBackendError,
    WebhookRefused,
)
from smsroute.message import (
    Attempt,
    Culprit,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Outcome,
    SendFailed,
    SendResult,
)
from smsroute.numbers import Destination, NumberType, mask, normalize
from smsroute.optout_io import OptOutFileError, OptOuts
from smsroute.outbox import DeadLetter, OutboxStore, OutboxWorker, SQLiteOutbox
from smsroute.providers.base import LinkState
from smsroute.router import RoutePlan, Router
from smsroute.selection import Candidate
from smsroute.sendercaps import SenderCapability, sender_capabilities
from smsroute.senders import SenderPick
from smsroute.sync import SyncRouter
from smsroute.version import __version__
from smsroute.webhooks import WebhookResponse

__all__ = [
    "ANOMALY_OVERRIDE",
    "AnomalyTransition",
    "Attempt",
    "AttemptFinished",
    "BreakerState",
    "BreakerTransition",
    "BudgetSpent",
    "Candidate",
    "CircuitBreaker",
    "Clock",
    "ConcurrencySkip",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ConfigReloaded",
    "Culprit",
    "DeadLetter",
    "DeliveryReceived",
    "DeliveryReport",
    "Destination",
    "Event",
    "Failover",
    "GuardOverrun",
    "GuardRefused",
    "GuardStatus",
    "Hook",
    "InboundMessage",
    "InvalidMessage",
    "InvalidNumber",
    "LinkState",
    "LoggingHook",
    "ManualClock",
    "Message",
    "MessageFinished",
    "MessageState",
    "NumberType",
    "OptOutFileError",
    "OptOuts",
    "OutboxStore",
    "OutboxUnavailable",
    "OutboxWorker",
    "Outcome",
    "PrometheusHook",
    "QuietHours",
    "RateLimitWait",
    "RoutePlan",
    "Router",
    "SQLiteOutbox",
    "SendFailed",
    "SendResult",
    "SenderCapability",
    "SenderMap",
    "SenderPick",
    "SenderPool",
    "SmsrouteError",
    "StateBackendError",
    "StateBackendUnavailable",
    "SyncRouter",
    "SystemClock",
    "WebhookRefused",
    "WebhookResponse",
    "__version__",
    "load_config",
    "mask",
    "normalize",
    "parse_config",
    "sender_capabilities",
]
