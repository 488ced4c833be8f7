"""Sending SMS from Celery tasks, the broker being Redis.

    SMSROUTE_CONFIG=config/routing.yaml celery -A celery_tasks worker   # in examples/

and, anywhere: ``send_sms.delay("+4915123456789", "Your code is 123456", "otp")``.

The router is made when the module is imported (in the worker's parent) but
starts on first use: each prefork child starts its own loop and connections.
"""

from __future__ import annotations

import os

from celery import Celery

from smsroute import Message, SyncRouter

BROKER = os.environ.get("SMSROUTE_CELERY_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("celery_tasks", broker=BROKER, backend=BROKER)
router = SyncRouter.from_yaml(os.environ["SMSROUTE_CONFIG"])


@app.task
def send_sms(to: str, text: str, category: str = "transactional") -> dict[str, object]:
    """Send one SMS; what the router answered (provider failures are in it, not raised)."""
    result = router.send(Message(to=to, text=text, category=category))
    return {
        "message_id": result.message_id,
        "status": result.status,
        "provider": result.provider,
        "pid": os.getpid(),
    }
