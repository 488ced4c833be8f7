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
from smsroute.config import Config
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
from smsroute.instrument import (
    AttemptFinished,
    BreakerTransition,
    ConfigReloaded,
    DeliveryReceived,
    Event,
    Failover,
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
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Outcome,
    SendFailed,
    SendResult,
)
from smsroute.numbers import Destination, NumberType, mask, normalize
from smsroute.outbox import DeadLetter, OutboxStore, OutboxWorker, SQLiteOutbox
from smsroute.router import RoutePlan, Router
from smsroute.selection import Candidate
from smsroute.sync import SyncRouter
from smsroute.version import __version__
from smsroute.webhooks import WebhookResponse

__all__ = [
    "Attempt",
    "AttemptFinished",
    "BreakerState",
    "BreakerTransition",
    "Candidate",
    "CircuitBreaker",
    "Clock",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ConfigReloaded",
    "DeadLetter",
    "DeliveryReceived",
    "DeliveryReport",
    "Destination",
    "Event",
    "Failover",
    "Hook",
    "InboundMessage",
    "InvalidMessage",
    "InvalidNumber",
    "LoggingHook",
    "ManualClock",
    "Message",
    "MessageFinished",
    "MessageState",
    "NumberType",
    "OutboxStore",
    "OutboxUnavailable",
    "OutboxWorker",
    "Outcome",
    "PrometheusHook",
    "RateLimitWait",
    "RoutePlan",
    "Router",
    "SQLiteOutbox",
    "SendFailed",
    "SendResult",
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
]
