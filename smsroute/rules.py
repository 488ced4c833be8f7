"""Which rule applies to a message: first match wins, found through an index.

Every match field is indexed as bitmasks over the rules, so finding the first
match costs about the same with a thousand rules as with ten.  ``matches`` is
the plain definition, kept for tests and for explaining a match.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from smsroute.config import Rule
from smsroute.numbers import Destination


@attrs.frozen(slots=True)
class Subject:
    """What rules look at: the normalised destination and the message's attributes."""

    destination: Destination
    category: str
    sender: str | None
    tags: tuple[str, ...]


def matches(rule: Rule, s: Subject) -> bool:
    """Whether ``rule`` matches ``s`` (every field it names must match)."""
    m = rule.match
    d = s.destination
    if m.countries is not None and d.country not in m.countries:
        return False
    if m.prefixes is not None and not d.e164.startswith(m.prefixes):
        return False
    if m.number_types is not None and d.number_type not in m.number_types:
        return False
    if m.categories is not None and s.category not in m.categories:
        return False
    if m.senders is not None and s.sender not in m.senders:
        return False
    return m.tags is None or not m.tags.isdisjoint(s.tags)


class _Dimension:
    """One field of the match, as bitmasks over rule positions.

    ``any`` has the bit of every rule that does not constrain this field;
    ``by_value[v]`` the bits of the rules that accept value ``v``.
    """

    __slots__ = ("any", "by_value")

    def __init__(self) -> None:
        self.any = 0
        self.by_value: dict[object, int] = {}

    def add(self, bit: int, values: Iterable[object] | None) -> None:
        if values is None:
            self.any |= bit
            return
        for value in values:
            self.by_value[value] = self.by_value.get(value, 0) | bit

    def mask(self, value: object) -> int:
        return self.any | self.by_value.get(value, 0)

    def mask_any_of(self, values: Iterable[object]) -> int:
        found = self.any
        by_value = self.by_value
        for value in values:
            found |= by_value.get(value, 0)
        return found


class RuleIndex:
    """Finds the first rule matching a message in time independent of the rule count.

    Every match field is a :class:`_Dimension` of bitmasks; the rules a message
    satisfies are the AND of one mask per field, and the first match is the
    lowest set bit.  No rule is looked at one by one.

    >>> index = RuleIndex(config.rules)
    >>> index.first(subject).name
    'otp-europe'
    """

    __slots__ = (
        "_category",
        "_country",
        "_number_type",
        "_prefix",
        "_prefix_lengths",
        "_sender",
        "_tags",
        "rules",
    )

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._country = _Dimension()
        self._prefix = _Dimension()
        self._number_type = _Dimension()
        self._category = _Dimension()
        self._sender = _Dimension()
        self._tags = _Dimension()
        for i, rule in enumerate(self.rules):
            m = rule.match
            bit = 1 << i
            self._country.add(bit, m.countries)
            self._prefix.add(bit, m.prefixes)
            self._number_type.add(bit, m.number_types)
            self._category.add(bit, m.categories)
            self._sender.add(bit, m.senders)
            self._tags.add(bit, m.tags)
        self._prefix_lengths = sorted({len(str(p)) for p in self._prefix.by_value})

    def first(self, s: Subject) -> Rule | None:
        """The first matching rule, or None (a validated config always has a catch-all)."""
        return self.find(s.destination, s.category, s.sender, s.tags)

    def find(
        self, d: Destination, category: str, sender: str | None, tags: tuple[str, ...]
    ) -> Rule | None:
        """:meth:`first` without building a :class:`Subject` (the router's hot path)."""
        e164 = d.e164
        # _Dimension.mask inlined: four method calls were half of this lookup's cost.
        country, kind, cat, snd = self._country, self._number_type, self._category, self._sender
        found = (
            (country.any | country.by_value.get(d.country, 0))
            & (kind.any | kind.by_value.get(d.number_type, 0))
            & (cat.any | cat.by_value.get(category, 0))
            & (snd.any | snd.by_value.get(sender, 0))
        )
        if found and self._tags.by_value:
            found &= self._tags.mask_any_of(tags)
        if found and self._prefix_lengths:
            found &= self._prefix.mask_any_of(e164[:n] for n in self._prefix_lengths)
        if not found:
            return None
        return self.rules[(found & -found).bit_length() - 1]
