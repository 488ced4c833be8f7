"""Provider adapters, and how a config's ``type:`` finds one.

Built-in adapters live in this package; third-party packages add their own
through the entry-point group ``smsroute.providers``::

    [project.entry-points."smsroute.providers"]
    acme = "acme_sms:AcmeProvider"
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smsroute.providers.base import Provider

ENTRY_POINT_GROUP = "smsroute.providers"

#: Built-in adapters: config ``type`` -> "module:Class".
BUILTIN: dict[str, str] = {
    "twilio": "smsroute.providers.twilio:TwilioProvider",
    "vonage": "smsroute.providers.vonage:VonageProvider",
    "plivo": "smsroute.providers.plivo:PlivoProvider",
    "telnyx": "smsroute.providers.telnyx:TelnyxProvider",
    "infobip": "smsroute.providers.infobip:InfobipProvider",
    "sinch": "smsroute.providers.sinch:SinchProvider",
    "bandwidth": "smsroute.providers.bandwidth:BandwidthProvider",
    "messagebird": "smsroute.providers.messagebird:MessageBirdProvider",
    "http": "smsroute.providers.http:HttpApiProvider",
    "smpp": "smsroute.providers.smpp:SmppProvider",
}


@functools.cache
def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_types() -> dict[str, str]:
    """Every known ``type``: built-ins, then those installed packages declare."""
    return {**_entry_points(), **BUILTIN}


def refresh() -> None:
    """Forget cached entry points (after installing an adapter package at run time)."""
    _entry_points.cache_clear()
    importlib.invalidate_caches()


def load_provider_class(type_name: str) -> type[Provider]:
    """The adapter class for ``type_name``; ``KeyError`` if no adapter has that name."""
    from smsroute.providers.base import Provider

    target = provider_types()[type_name]
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        raise TypeError(f"{target} (provider type '{type_name}') is not a Provider subclass")
    return obj
