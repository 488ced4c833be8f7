"""The sender of one message at one provider: ``from`` maps, pools, fallbacks, refusals.

Which sender is asked for, first match wins:

1. the message's own ``sender`` (:attr:`Message.sender`);
2. the rule's ``from``, then the provider's, each a plain string or a map looked up by
   (country, number type), then country, then ``default`` (a ``fixed_line_or_mobile``
   number also matches a ``mobile`` entry).  A pool gives one of its members: ``sticky``,
   the member with the highest hash of (member, number) (rendezvous hashing, blake2b: the
   same on every replica and after a restart, and removing a member moves only the
   numbers it had); otherwise the members take turns, per process;
3. nothing: the provider account's own default (a Twilio messaging service, say).

That sender is then checked against the country capability table
(:func:`smsroute.sendercaps.problem`) when it is the message's own or comes from a map.
One that cannot be used there is replaced by the configured sender (for a message's
own), then by the ``fallback`` of the rule's map, then of the provider's, the first that
can be used; with none, the provider is not called, and when no provider of the plan has
a usable sender the send fails before any is called.  A ``from`` written as a plain
string is sent as written, as it always was: write it as a map to have it checked.

:class:`Senders` is built once per :class:`~smsroute.runtime.Runtime`; when no rule or
provider has a map and the message has no sender of its own, the send path does not
call it at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs

from smsroute.config import Config, ProviderConfig, Rule, SenderChoice, SenderMap, SenderPool
from smsroute.numbers import Destination, NumberType
from smsroute.sendercaps import note, problem


@attrs.frozen(slots=True)
class SenderPick:
    """The sender a provider would be given for one message, and why.

    ``sender`` None with ``refused`` None: no sender is sent (the account's default).
    ``refused`` says why no sender can be used: that provider is not called.
    ``note`` is a caution that does not stop the send (an ID needing registration).
    """

    sender: str | None
    why: str
    refused: str | None = None
    note: str | None = None


def sticky_member(members: Iterable[str], number: str) -> str:
    """The pool member rendezvous hashing gives ``number`` (highest blake2b of the pair)."""
    best, best_score = "", -1
    for member in members:
        digest = hashlib.blake2b(f"{member}\n{number}".encode(), digest_size=8).digest()
        score = int.from_bytes(digest, "big")
        if score > best_score:
            best, best_score = member, score
    return best


def _entry(senders: SenderMap, destination: Destination) -> tuple[SenderChoice | None, str]:
    """The choice of ``senders`` for ``destination``, and the key that gave it."""
    entries = senders.entries
    if entries:
        country, ntype = destination.country, destination.number_type
        choice = entries.get((country, ntype))
        if choice is not None:
            return choice, f"{country} {ntype.value}"
        if ntype is NumberType.FIXED_LINE_OR_MOBILE:
            choice = entries.get((country, NumberType.MOBILE))
            if choice is not None:
                return choice, f"{country} mobile"
        choice = entries.get((country, None))
        if choice is not None:
            return choice, country
    return senders.default, "default"


class Senders:
    """Picks the sender of each (rule, provider, destination) of one runtime's config.

    ``active`` is true when a rule or provider has a ``from`` map (or a rule a ``from``):
    only then, or when a message has a sender of its own, does the send path ask.
    """

    __slots__ = ("_turns", "active")

    def __init__(self, config: Config) -> None:
        self.active = any(p.senders is not None for p in config.providers.values()) or any(
            r.senders is not None for r in config.rules
        )
        #: The next member of each non-sticky pool (per process, for this runtime's life).
        self._turns: dict[SenderPool, int] = {}

    def _member(self, choice: SenderChoice, number: str, peek: bool) -> tuple[str, str]:
        if isinstance(choice, str):
            return choice, ""
        if choice.sticky:
            return sticky_member(choice.members, number), " (pool member, sticky for this number)"
        turn = self._turns.get(choice, 0)
        if not peek:
            self._turns[choice] = turn + 1
        return choice.members[turn % len(choice.members)], " (pool member, in turn)"

    def _configured(
        self, rule: Rule, pcfg: ProviderConfig, destination: Destination, peek: bool
    ) -> tuple[str | None, str, bool]:
        """(sender, why, checked?) from the config alone."""
        number = destination.e164
        if rule.senders is not None:
            choice, key = _entry(rule.senders, destination)
            if choice is not None:
                sender, how = self._member(choice, number, peek)
                return sender, f"rule '{rule.name}' from: {key}{how}", True
        if pcfg.senders is not None:
            choice, key = _entry(pcfg.senders, destination)
            if choice is not None:
                sender, how = self._member(choice, number, peek)
                return sender, f"provider '{pcfg.name}' from: {key}{how}", True
            return (
                None,
                f"provider '{pcfg.name}' has no 'from' entry for {destination.country}: "
                "the account's default sender",
                True,
            )
        if pcfg.sender is not None:
            return pcfg.sender, f"provider '{pcfg.name}' from (a plain string, not checked)", False
        return None, "no 'from' configured: the account's default sender", False

    def choose(
        self,
        rule: Rule,
        pcfg: ProviderConfig,
        destination: Destination,
        wanted: str | None,
        *,
        peek: bool = False,
    ) -> SenderPick:
        """The sender ``pcfg`` is given for a message of ``rule`` to ``destination``
        (``wanted``: the message's own).  ``peek``: as :meth:`choose` would answer,
        without taking a pool's turn (for explain)."""
        country = destination.country
        configured, why, checked = self._configured(rule, pcfg, destination, peek)
        if wanted:  # an empty sender (a blank CSV column) is none: the configured one goes
            bad = problem(wanted, country)
            if bad is None:
                return SenderPick(wanted, "the message's own sender", note=note(wanted, country))
            first = f"the message's own sender cannot be used: {bad}"
            if configured is not None and problem(configured, country) is None:
                return SenderPick(
                    configured, f"{why}, because {first}", note=note(configured, country)
                )
        elif configured is None or not checked:
            return SenderPick(configured, why)
        else:
            bad = problem(configured, country)
            if bad is None:
                return SenderPick(configured, why, note=note(configured, country))
            first = f"{why}: {bad}"
        for senders, owner in ((rule.senders, f"rule '{rule.name}'"), (pcfg.senders, pcfg.name)):
            if senders is None or senders.fallback is None:
                continue
            sender, how = self._member(senders.fallback, destination.e164, peek)
            if problem(sender, country) is None:
                whose = owner if owner.startswith("rule") else f"provider '{owner}'"
                return SenderPick(sender, f"fallback of {whose}{how}, because {first}")
        return SenderPick(None, first, refused=f"{first}, and no usable fallback")

    def for_send(
        self,
        rule: Rule,
        names: Iterable[str],
        providers: Mapping[str, ProviderConfig],
        destination: Destination,
        wanted: str | None,
    ) -> tuple[dict[str, str | None], list[str], list[str]]:
        """(sender by provider, the providers that can be called, in order, and
        ``"name: why"`` for each that cannot, for its sender)."""
        picked: dict[str, str | None] = {}
        usable: list[str] = []
        refused: list[str] = []
        for name in names:
            pick = self.choose(rule, providers[name], destination, wanted)
            if pick.refused is None:
                picked[name] = pick.sender
                usable.append(name)
            else:
                refused.append(f"{name}: {pick.refused}")
        return picked, usable, refused


__all__ = ["SenderPick", "Senders", "sticky_member"]
