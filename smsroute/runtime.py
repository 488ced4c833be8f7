"""A config made ready to route: adapters built, rules indexed, callback URLs computed.

:class:`Runtime` is immutable once built; :meth:`Router.reload` builds a new one
and swaps it whole, so a send holds the one it started with.  :meth:`Runtime.prepare`
is the first step of every send (and the check :meth:`Router.enqueue` makes):
validate the message, normalise its number, find its rule.
"""

from __future__ import annotations

import attrs

from smsroute.config import Config, Rule
from smsroute.encoding import TextInfo, analyze
from smsroute.errors import InvalidMessage
from smsroute.message import Message
from smsroute.numbers import Destination, normalizer
from smsroute.providers import load_provider_class
from smsroute.providers.base import HttpProvider, Provider
from smsroute.rules import RuleIndex


@attrs.define(slots=True)  # internal and short-lived: mutable is cheaper to build
class Prepared:
    """A message checked and routed: its destination, its text's encoding, its rule."""

    destination: Destination
    info: TextInfo
    rule: Rule


class Runtime:
    """A config made ready to route: adapters built, rules indexed.  Swapped whole on reload."""

    __slots__ = ("callbacks", "config", "index", "normalize", "orders", "providers", "self_timed")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = RuleIndex(config.rules)
        self.normalize = normalizer(config.defaults.default_region)
        self.providers: dict[str, Provider] = {}
        self.callbacks: dict[str, str | None] = {}
        webhook = config.defaults.webhook_url
        for name, pcfg in config.providers.items():
            cls = load_provider_class(pcfg.type)
            self.providers[name] = cls(pcfg)
            self.callbacks[name] = pcfg.status_callback or (
                f"{webhook.rstrip('/')}/{name}/status" if webhook else None
            )
        # Providers sending through HttpProvider.send, which hands sms.timeout to
        # aiohttp: the router needs no timer of its own around their requests.
        self.self_timed = frozenset(
            name for name, p in self.providers.items() if type(p).send is HttpProvider.send
        )
        #: The order of a ``cheapest`` rule's providers when every breaker is closed, by
        #: (id of the rule, country, segments): prices are fixed for a runtime's life, so
        #: it is worked out once (see :meth:`Dispatcher.send`).  Bounded by the config:
        #: rules x countries x max_segments.
        self.orders: dict[tuple[int, str, int], tuple[str, ...]] = {}

    def prepare(self, message: Message) -> Prepared:
        """Check ``message`` and find its rule; raises :class:`InvalidMessage` or
        :class:`InvalidNumber` when it cannot be sent as written.  No I/O."""
        config = self.config
        text = message.text
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessage("message text is empty: give the text to send")
        if message.category not in config.categories:
            raise InvalidMessage(
                f"unknown category '{message.category}': use one of "
                f"{', '.join(sorted(config.categories))}, or declare it under 'categories' "
                f"in {config.source}"
            )
        info = analyze(text)
        limit = config.defaults.max_segments
        if info.segments > limit:
            raise InvalidMessage(
                f"message text needs {info.segments} {info.encoding} segments "
                f"({info.units} units) but max_segments is {limit}: shorten it, or raise "
                f"defaults.max_segments in {config.source}"
            )
        destination = self.normalize(message.to)
        rule = self.index.find(destination, message.category, message.sender, message.tags)
        if rule is None:  # a validated config always has a catch-all
            raise InvalidMessage(f"no rule matches this message in {config.source}")
        return Prepared(destination, info, rule)

    def callback_url(self, provider: str, message_id: str) -> str | None:
        """The status callback URL to give ``provider`` for ``message_id`` (None: none)."""
        url = self.callbacks[provider]
        if url is None or self.providers[provider].echoes_message_id:
            return url
        # Providers that do not echo a reference get ours in the callback's query.
        return f"{url}{'&' if '?' in url else '?'}smsroute_id={message_id}"
