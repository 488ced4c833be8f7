"""Reading ``from``, a provider's or a rule's: a sender, or a map by country and number type.

:func:`read_from` turns the YAML value into a :class:`~smsroute.config.SenderMap` (or the
plain string of old), records every problem with its place on the loader, and checks the
map against the country capability table (:mod:`smsroute.sendercaps`):

- a country's own entry (its number-type entries and pool members included) must be a
  sender that country takes: an alphanumeric ID where it refuses them, or a long code of
  another country where it takes only its own numbers, is an error naming the country;
- ``fallback`` must be a number (it is used where the chosen sender cannot be, which is
  mostly where alphanumeric IDs are refused);
- an alphanumeric ``default`` reaches every country without an entry, refusing ones
  included: the map must then have a ``fallback``, unless it is a rule's map and the
  rule's ``match: country`` lists only countries that take it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from smsroute import configcheck as check
from smsroute import sendercaps, yamlsource
from smsroute.config import SenderChoice, SenderMap, SenderPool
from smsroute.configcheck import Checker
from smsroute.numbers import NumberType
from smsroute.yamlsource import shown

#: Keys of a pool written as a map.
POOL_KEYS = frozenset({"pool", "sticky"})
#: Largest pool accepted (each message hashes the number with every member).
MAX_POOL = 1000
_TYPES = {t.value: t for t in NumberType}


def read_from(
    checker: Checker,
    section: dict[str, Any],
    path: yamlsource.Path,
    *,
    countries: frozenset[str] | None = None,
    plain_is_map: bool = False,
) -> tuple[str | None, SenderMap | None]:
    """(plain sender, map) of ``section['from']``: at most one is not None.

    ``countries``: the countries a rule's ``match`` restricts it to (a rule's map only).
    ``plain_is_map``: a plain string becomes ``{default: it}`` and is checked (rules).
    """
    value = section.get("from")
    if value is None:
        return None, None
    fpath: yamlsource.Path = (*path, "from")
    if not isinstance(value, dict):
        try:
            sender = check.sender(value)
        except ValueError as exc:
            checker.error(fpath, str(exc))
            return None, None
        if not plain_is_map:
            return sender, None
        senders = SenderMap(default=sender)
        _check_default(checker, fpath, senders, countries)
        return None, senders
    return None, _read_map(checker, value, fpath, countries)


def rule_from(
    checker: Checker,
    section: dict[str, Any],
    path: yamlsource.Path,
    countries: frozenset[str] | None,
) -> SenderMap | None:
    """A rule's ``from`` (a plain string is ``{default: it}``); ``countries``: its match's."""
    return read_from(checker, section, path, countries=countries, plain_is_map=True)[1]


def _read_map(
    checker: Checker,
    value: dict[str, Any],
    path: yamlsource.Path,
    countries: frozenset[str] | None,
) -> SenderMap | None:
    if not value:
        checker.error(path, "a 'from' map needs at least one entry: a country, or 'default'")
        return None
    entries: dict[tuple[str, NumberType | None], SenderChoice] = {}
    default: SenderChoice | None = None
    fallback: SenderChoice | None = None
    problems = len(checker.problems)
    for key, raw in value.items():
        kpath = (*path, key)
        if key == "default":
            default = _one(checker, raw, kpath)
        elif key == "fallback":
            fallback = _one(checker, raw, kpath)
            if fallback is not None:
                for member in _members(fallback):
                    if sendercaps.kind(member) == "alphanumeric":
                        checker.error(
                            kpath,
                            f"fallback {shown(member)} is an alphanumeric ID: the fallback is "
                            "used where the chosen sender cannot be, mostly where such IDs "
                            "are refused, so make it a number",
                        )
        else:
            country = _country(checker, key, kpath)
            if country is None:
                continue
            choice = _by_type(checker, raw, kpath)
            if isinstance(choice, dict):
                for ntype, sub in choice.items():
                    entries[(country, ntype)] = sub
                    where = (*kpath, "default" if ntype is None else ntype.value)
                    _check_entry(checker, where, country, sub)
            elif choice is not None:
                entries[(country, None)] = choice
                _check_entry(checker, kpath, country, choice)
    if len(checker.problems) > problems:
        return None
    senders = SenderMap(entries=entries, default=default, fallback=fallback)
    _check_default(checker, path, senders, countries)
    return senders


def _country(checker: Checker, key: str, path: yamlsource.Path) -> str | None:
    try:
        return check.region(key)
    except ValueError:
        if key in ("False", "false"):
            hint = " (YAML reads NO, Norway's code, as false: quote it, 'NO')"
        else:
            close = difflib.get_close_matches(key, ["default", "fallback"], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
        checker.error(
            path,
            f"a 'from' map's keys are ISO country codes like US or GB, 'default' or "
            f"'fallback', got {shown(key)}{hint}",
            at_key=True,
        )
        return None


def _one(checker: Checker, raw: Any, path: yamlsource.Path) -> SenderChoice | None:
    """A sender, or a pool."""
    if isinstance(raw, dict):
        return _pool(checker, raw, path)
    try:
        return check.sender(raw)
    except ValueError as exc:
        checker.error(path, str(exc))
        return None


def _by_type(
    checker: Checker, raw: Any, path: yamlsource.Path
) -> SenderChoice | dict[NumberType | None, SenderChoice] | None:
    """A country's value: a sender, a pool, or a map by number type."""
    if not isinstance(raw, dict) or "pool" in raw:
        return _one(checker, raw, path)
    out: dict[NumberType | None, SenderChoice] = {}
    for key, sub in raw.items():
        if key != "default" and key not in _TYPES:
            close = difflib.get_close_matches(str(key), [*_TYPES, "default", "pool"], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            checker.error(
                (*path, key),
                f"unknown key {shown(key)} under a country: {hint}give a sender, a pool "
                f"{{pool: [...], sticky: true}}, or senders by number type "
                f"({', '.join(_TYPES)}, default)",
                at_key=True,
            )
            continue
        choice = _one(checker, sub, (*path, key))
        if choice is not None:
            out[None if key == "default" else _TYPES[key]] = choice
    if not out:
        checker.error(path, "give this country at least one sender")
        return None
    return out


def _pool(checker: Checker, raw: dict[str, Any], path: yamlsource.Path) -> SenderPool | None:
    checker.mapping(raw, path, POOL_KEYS, what="a sender pool")
    members = raw.get("pool")
    if not isinstance(members, list) or not members or len(members) > MAX_POOL:
        checker.error(
            (*path, "pool") if "pool" in raw else path,
            f"a sender pool is {{pool: [sender, ...], sticky: true}} with 1 to {MAX_POOL:,} "
            f"senders, got {shown(members)}",
        )
        return None
    out: list[str] = []
    for i, member in enumerate(members):
        try:
            sender = check.sender(member)
        except ValueError as exc:
            checker.error((*path, "pool", i), str(exc))
            continue
        if sender in out:
            checker.error((*path, "pool", i), f"{shown(sender)} is in the pool twice")
            continue
        out.append(sender)
    sticky = raw.get("sticky", False)
    if not isinstance(sticky, bool):
        checker.error((*path, "sticky"), f"sticky is true or false, got {shown(sticky)}")
        sticky = False
    if len(out) != len(members):
        return None
    return SenderPool(tuple(out), sticky)


def _members(choice: SenderChoice) -> Iterable[str]:
    return choice.members if isinstance(choice, SenderPool) else (choice,)


def _check_entry(
    checker: Checker, path: yamlsource.Path, country: str, choice: SenderChoice
) -> None:
    for i, member in enumerate(_members(choice)):
        why = sendercaps.problem(member, country)
        if why is not None:
            where = (*path, "pool", i) if isinstance(choice, SenderPool) else path
            checker.error(where, f"{why}: give {country} a sender it takes")


def _check_default(
    checker: Checker,
    path: yamlsource.Path,
    senders: SenderMap,
    countries: frozenset[str] | None,
) -> None:
    default = senders.default
    if default is None:
        return
    where = (*path, "default") if senders.entries or senders.fallback is not None else path
    if countries is not None:  # a rule's map: the default reaches only these countries
        listed = {c for c, _ in senders.entries}
        for country in sorted(countries - listed):
            for member in _members(default):
                why = sendercaps.problem(member, country)
                if why is not None and senders.fallback is None:
                    checker.error(
                        where,
                        f"{why}, and this rule matches {country}: give {country} its own "
                        "entry, or add a numeric 'fallback'",
                    )
        return
    alphanumeric = [m for m in _members(default) if sendercaps.kind(m) == "alphanumeric"]
    if alphanumeric and senders.fallback is None:
        refusing = sorted(
            c
            for c, cap in sendercaps.sender_capabilities().items()
            if cap.alphanumeric == "refused" and (c, None) not in senders.entries
        )
        checker.error(
            where,
            f"default {shown(alphanumeric[0])} is an alphanumeric ID, which "
            f"{len(refusing)} countries refuse ({_some(refusing)}): add a "
            "numeric 'fallback' for them (or write 'from' as a plain string to send it "
            "everywhere unchecked)",
        )


def _some(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:6])}, ..."


__all__ = ["read_from", "rule_from"]
