"""Which rule applies to a message: first match wins, found through an index.

Rules are indexed by country and by E.164 prefix, so finding the first match
costs about the same with a thousand rules as with ten: only rules keyed to the
message's country, to one of its number's prefixes, or keyed to neither are
looked at, in rule order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import attrs

from smsroute.config import Rule
from smsroute.numbers import Destination

MAX_PREFIX_DIGITS = 15


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


class RuleIndex:
    """Finds the first rule matching a message.

    >>> index = RuleIndex(config.rules)
    >>> index.first(subject).name
    'otp-europe'
    """

    __slots__ = ("_by_country", "_by_prefix", "_prefix_lengths", "_unkeyed", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        by_country: dict[str, list[int]] = defaultdict(list)
        by_prefix: dict[str, list[int]] = defaultdict(list)
        unkeyed: list[int] = []
        for i, rule in enumerate(self.rules):
            m = rule.match
            if m.countries is not None:
                for country in m.countries:
                    by_country[country].append(i)
            elif m.prefixes is not None:
                for prefix in m.prefixes:
                    by_prefix[prefix].append(i)
            else:
                unkeyed.append(i)
        self._by_country = dict(by_country)
        self._by_prefix = dict(by_prefix)
        self._prefix_lengths = sorted({len(p) for p in by_prefix})
        self._unkeyed = tuple(unkeyed)

    def first(self, s: Subject) -> Rule | None:
        """The first matching rule, or None (a validated config always has a catch-all)."""
        rules = self.rules
        e164 = s.destination.e164
        candidates: list[int] = list(self._by_country.get(s.destination.country, ()))
        for length in self._prefix_lengths:
            if length > len(e164):
                break
            hit = self._by_prefix.get(e164[:length])
            if hit:
                candidates.extend(hit)
        if not candidates:
            for i in self._unkeyed:
                if matches(rules[i], s):
                    return rules[i]
            return None
        candidates.extend(self._unkeyed)
        candidates.sort()
        for i in candidates:
            if matches(rules[i], s):
                return rules[i]
        return None
