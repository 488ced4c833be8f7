"""A config made ready to route: adapters built, rules indexed, callback URLs computed.

:class:`Runtime` is immutable once built; :meth:`Router.reload` builds a new one
and swaps it whole, so a send holds the one it started with.  :meth:`Runtime.prepare`
is the first step of every send (and the check :meth:`Router.enqueue` makes):
validate the message, normalise its number, find its rule.
"""

from __future__ import annotations

import attrs

from smsroute.config import Config, QuietHours, Rule
from smsroute.encoding import TextInfo, analyze
from smsroute.errors import InvalidMessage
from smsroute.guards import Guards
from smsroute.message import Message
from smsroute.numbers import Destination, normalizer
from smsroute.providers import load_provider_class
from smsroute.providers.base import HttpProvider, Provider
from smsroute.rules import RuleIndex
from smsroute.senders import Senders
from smsroute.transliterate import transliterate


@attrs.define(slots=True)  # internal and short-lived: mutable is cheaper to build
class Prepared:
    """A message checked and routed: its destination, its text's encoding, its rule,
    and the text to send (``message.text`` itself unless ``encoding: transliterate``
    changed it: ``p.text is not message.text`` says it did)."""

    destination: Destination
    info: TextInfo
    rule: Rule
    text: str


class Runtime:
    """A config made ready to route: adapters built, rules indexed.  Swapped whole on reload."""

    __slots__ = (
        "callbacks",
        "config",
        "guards",
        "index",
        "normalize",
        "orders",
        "providers",
        "quiet",
        "self_timed",
        "senders",
        "transliterating",
    )

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
        #: The sender of each message at each provider (``from`` maps, pools, fallbacks);
        #: ``senders.active`` is false when no rule or provider has a ``from`` map.
        self.senders = Senders(config)
        #: The categories with quiet hours (empty: the send path checks nothing more).
        self.quiet: dict[str, QuietHours] = {
            name: c.quiet_hours for name, c in config.categories.items() if c.quiet_hours
        }
        #: Whether any rule or category says ``encoding: transliterate``.
        #: The fraud and spend guards (smsroute.guards); None when none is configured.
        self.guards: Guards | None = Guards(config) if Guards.needed(config) else None
        self.transliterating = any(r.encoding == "transliterate" for r in config.rules) or any(
            c.encoding == "transliterate" for c in config.categories.values()
        )

    def adopt(self, old: Runtime) -> None:
        """Take over ``old``'s adapters that keep connections (``type: smpp``: binds)
        where the provider's config is unchanged: a reload neither binds twice nor
        holds two sets of binds while the old runtime's sends finish (an SMSC may allow
        a system_id one bind).  The new runtime then owns them (see Dispatcher.swap)."""
        for name, pcfg in self.config.providers.items():
            kept = old.providers.get(name)
            if (
                kept is not None
                and kept.links() is not None
                and old.config.providers.get(name) == pcfg
            ):
                self.providers[name] = kept

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
        if self.transliterating:
            return self._prepare_transliterating(message)
        info = analyze(text)
        if info.encoding != "GSM-7":  # (GSM-7 text is none of what this looks for)
            _carriable(text, "message text")
        limit = config.defaults.max_segments
        if info.segments > limit:
            raise self._too_long(info, limit)
        sender = message.sender
        if sender is not None and not sender.isprintable():  # (a str method: cheap)
            _sender_carriable(sender)
        destination = self.normalize(message.to)
        rule = self.index.find(destination, message.category, sender, message.tags)
        if rule is None:  # a validated config always has a catch-all
            raise InvalidMessage(f"no rule matches this message in {config.source}")
        return Prepared(destination, info, rule, text)

    def _too_long(self, info: TextInfo, limit: int) -> InvalidMessage:
        return InvalidMessage(
            f"message text needs {info.segments} {info.encoding} segments "
            f"({info.units} units) but max_segments is {limit}: shorten it, or raise "
            f"defaults.max_segments in {self.config.source}"
        )

    def _prepare_transliterating(self, message: Message) -> Prepared:
        """:meth:`prepare` when some rule or category transliterates: the rule is found
        first, then the text it sends is analysed (segments are those of what goes)."""
        config = self.config
        destination = self.normalize(message.to)
        rule = self.index.find(destination, message.category, message.sender, message.tags)
        if rule is None:  # a validated config always has a catch-all
            raise InvalidMessage(f"no rule matches this message in {config.source}")
        text = message.text
        _carriable(text, "message text")
        if message.sender is not None and not message.sender.isprintable():
            _sender_carriable(message.sender)
        mode = rule.encoding or config.categories[message.category].encoding
        if mode == "transliterate" and message.category != "otp":
            text = transliterate(text)
        info = analyze(text)
        limit = config.defaults.max_segments
        if info.segments > limit:
            raise self._too_long(info, limit)
        return Prepared(destination, info, rule, text)

    def callback_url(self, provider: str, message_id: str) -> str | None:
        """The status callback URL to give ``provider`` for ``message_id`` (None: none)."""
        url = self.callbacks[provider]
        if url is None or self.providers[provider].echoes_message_id:
            return url
        # Providers that do not echo a reference get ours in the callback's query.
        return f"{url}{'&' if '?' in url else '?'}smsroute_id={message_id}"


def _carriable(text: str, what: str) -> None:
    """Raise :class:`InvalidMessage` when ``text`` holds a lone surrogate (a str may, when
    it was decoded with ``surrogateescape`` or built from UTF-16 halves) or a NUL: no
    encoding carries the one, and the other ends a C string (an SMPP field, a gateway
    written in C) wherever it stands, so no provider can carry either.  Names the code
    point and where, not the text.  (GSM-7 text holds neither: only other text is looked at.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(
            f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X}, character "
            f"{exc.start + 1}), which no provider can carry: decode the text with its real "
            "encoding (or errors='replace')"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise InvalidMessage(
            f"{what} holds a NUL (U+0000, character {nul + 1}), which no provider can carry "
            "(it ends a C string): remove it"
        )


def _sender_carriable(sender: str) -> None:
    """Raise :class:`InvalidMessage` for a sender with a character that is not printable
    (``str.isprintable``: a control character such as CR, LF or NUL, a format or
    invisible character, a lone surrogate): a sender ID is GSM-7 letters, digits and
    spaces, a number is digits, and no network or provider carries such a character in
    one (in an HTTP header or an SMPP address it would end or split the field).  Only
    called for a sender that is not printable."""
    _carriable(sender, "sender")
    at = next(i for i, c in enumerate(sender) if not c.isprintable())
    raise InvalidMessage(
        f"sender holds U+{ord(sender[at]):04X} (character {at + 1}), a control or invisible "
        "character no provider can carry in a sender: give a phone number, short code or "
        "sender ID of printable characters"
    )
