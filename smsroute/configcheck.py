"""Checking a config's values: the value parsers and the :class:`Checker` that applies them.

Each parser takes one YAML value and returns it typed, or raises ``ValueError`` with
the sentence a user reads (the loader adds the place).  :class:`Checker` collects those
problems with file:line:column and a field path instead of stopping at the first.
:mod:`smsroute.configload` walks the sections of a config with it; the types it builds
are in :mod:`smsroute.config`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from smsroute import yamlsource
from smsroute.config import (
    STRATEGIES,
    BreakerScope,
    EncodingMode,
    GuardChecks,
    OnTimeout,
    OnUndelivered,
    OutboxBackend,
    PriceTable,
    StateBackendName,
    Strategy,
    Synchronous,
)
from smsroute.errors import ConfigError, ConfigProblem
from smsroute.numbers import NumberType
from smsroute.units import parse_duration
from smsroute.yamlsource import Located, shown

T = TypeVar("T")

# -- value parsers: each raises ValueError with the sentence a user reads ------------


def kind(value: Any) -> str:
    """How a YAML value is named in a message: "a mapping", "a list", "nothing", "int"."""
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number from {low} to {high}, got {shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    return parse


#: Highest price of one segment accepted, in the provider's currency.
MAX_PRICE = 1e9
#: Highest rule weight or score weight accepted (weights are relative).
MAX_WEIGHT = 1e6


def _number_in(what: str, high: float) -> Callable[[Any], float]:
    """A finite number from 0 to ``high`` (``.nan``, ``.inf`` and huge numbers refused)."""

    def parse(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= high  # False for nan
        ):
            raise ValueError(
                f"{what} must be a non-negative number of at most {high:,.0f}, got {shown(value)}"
            )
        return float(value)

    return parse


price = _number_in("a price", MAX_PRICE)
weight = _number_in("a weight", MAX_WEIGHT)
non_negative = _number_in("a score weight", MAX_WEIGHT)


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than zero, got {shown(value)}")
    return seconds


def region(value: Any) -> str:
    import phonenumbers

    if not isinstance(value, str) or value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"expected an ISO 3166 country code like US or DE, got {shown(value)}")
    return value.upper()


def region_set(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError(
            f"expected a list of ISO 3166 country codes like [US, DE], got {shown(value)}"
        )
    return frozenset(region(item) for item in value)


def prefix(value: Any) -> str:
    # YAML reads an unquoted +4915 as the integer 4915: put the plus back.
    text = f"+{value}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    text = text.strip()
    digits = text[1:]
    if not text.startswith("+") or not (digits.isascii() and digits.isdigit()) or len(digits) > 15:
        raise ValueError(f"expected an E.164 prefix like +4915, got {shown(value)}")
    return text


def number_type(value: Any) -> str:
    names = [t.value for t in NumberType]
    if value not in names:
        hint = difflib.get_close_matches(str(value), names, n=1)
        suggestion = f"did you mean '{hint[0]}'? " if hint else ""
        raise ValueError(
            f"unknown number_type {shown(value)}: {suggestion}known: {', '.join(names)}"
        )
    return str(value)


def nonempty(what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"a {what} must be a non-empty string, got {shown(value)}")
        return value

    return parse


def file_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a database path must be a non-empty string, got {shown(value)}")
    if "\0" in value:
        raise ValueError("a database path cannot contain a NUL byte (\\0): remove it")
    return value


def name_set(what: str) -> Callable[[Any], frozenset[str]]:
    def parse(value: Any) -> frozenset[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ValueError(f"expected a list of {what} names, got {shown(value)}")
        return frozenset(items)

    return parse


def _choice(options: tuple[str, ...], what: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value not in options:
            hint = difflib.get_close_matches(str(value), options, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            raise ValueError(
                f"unknown {what} {shown(value)}: {suggestion}choose one of {', '.join(options)}"
            )
        return value

    return parse


strategy: Callable[[Any], Strategy] = _choice(STRATEGIES, "strategy")
on_timeout: Callable[[Any], OnTimeout] = _choice(("failover", "stop"), "on_timeout")
on_undelivered: Callable[[Any], OnUndelivered] = _choice(("resend", "ignore"), "on_undelivered")
outbox_backend: Callable[[Any], OutboxBackend] = _choice(("sqlite", "redis"), "outbox backend")
synchronous: Callable[[Any], Synchronous] = _choice(("normal", "full"), "synchronous")
breaker_scope: Callable[[Any], BreakerScope] = _choice(
    ("provider", "provider_country"), "breaker_scope"
)


state_backend: Callable[[Any], StateBackendName] = _choice(("memory", "redis"), "state backend")
guard_checks: Callable[[Any], GuardChecks] = _choice(("exact", "local"), "guard_checks")
encoding_mode: Callable[[Any], EncodingMode] = _choice(("auto", "transliterate"), "encoding")


def redis_url(value: Any) -> str:
    if isinstance(value, yamlsource.Placeholder):
        return value
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "expected a Redis URL like redis://127.0.0.1:6379/0 (or rediss://, unix://), "
            f"got {shown(value)}"
        )
    return value


#: A BLAKE2b key is 64 bytes at most; fewer than 16 is too easy to guess.
HASH_KEY_BYTES = (16, 64)
_KINDS = {int: "a number", float: "a number", list: "a list", dict: "a mapping"}


def hash_key(value: Any) -> str:
    """A secret: its length is named when it does not fit, never its text."""
    if isinstance(value, yamlsource.Placeholder):
        return value
    low, high = HASH_KEY_BYTES
    if not isinstance(value, str):
        kind = "true or false" if isinstance(value, bool) else _KINDS.get(type(value), "a value")
        raise ValueError(
            f"expected a secret of {low} to {high} characters, like ${{SMSROUTE_HASH_KEY}}, "
            f"not {kind}"
        )
    size = len(value.encode("utf-8", "surrogatepass"))
    if not low <= size <= high:
        raise ValueError(
            f"expected a secret of {low} to {high} bytes (UTF-8), got {size}: make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(
            f"expected a key prefix without spaces like 'smsroute:', got {shown(value)}"
        )
    return value


def url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {shown(value)}")
    return value


def currency_code(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise ValueError(f"expected an ISO 4217 currency code like USD, got {shown(value)}")
    return value.upper()


def sender(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"'from' must be a phone number, short code or sender ID, got {shown(value)}"
        )
    return value


# -- checking in place ---------------------------------------------------------------


class Checker:
    """Checks the values of one YAML document and collects every problem with its place.

    ``error`` records a problem at a field path (``problems``, in the order found);
    ``mapping`` checks a section's keys, ``field`` parses one value with a parser
    above, falling back to a default when it is absent or refused; ``prices`` reads a
    price table written inline or in a file.  Nothing raises: the caller turns
    ``problems`` into one :class:`ConfigError` when it is done.
    """

    def __init__(self, located: Located) -> None:
        self.src = located
        self.problems: list[ConfigProblem] = []
        #: Where relative paths (price files, the outbox database) are read from.
        self.base_dir = Path(located.file).parent if located.file != "<config>" else Path.cwd()

    # -- reporting -----------------------------------------------------------------

    def error(self, path: yamlsource.Path, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.src.problem(path, message, at_key=at_key))

    def mapping(
        self,
        value: Any,
        path: yamlsource.Path,
        allowed: frozenset[str],
        *,
        what: str,
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping, got {kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.error(
                    (*path, key),
                    f"unknown key '{key}' in {what}{suggestion} "
                    f"(allowed: {', '.join(sorted(allowed))})",
                    at_key=True,
                )
        return value

    def field(
        self,
        section: Mapping[str, Any],
        path: yamlsource.Path,
        key: str,
        parse: Callable[[Any], T],
        default: T,
    ) -> T:
        if key not in section or section[key] is None:
            return default
        try:
            return parse(section[key])
        except (ValueError, TypeError) as exc:
            self.error((*path, key), str(exc))
            return default

    # -- files named in the config -------------------------------------------------

    def local_file(self, ref: str) -> Path:
        """Where the file a config names is read: a relative name from the config
        file's directory, or from the current one when it is not there."""
        file = Path(ref)
        if not file.is_absolute():
            file = self.base_dir / ref
            try:
                if not file.exists():
                    file = Path.cwd() / ref
            except (OSError, ValueError):  # a name too long, a NUL byte: the reader says
                pass
        return file

    def with_files(
        self, body: Mapping[str, Any], paths: Iterable[tuple[str, ...]]
    ) -> dict[str, Any]:
        """A copy of ``body`` with the file name at each key path found by
        :meth:`local_file`; a value that is not a file name (absent, empty, not
        text, an unset ``${VAR}``) is left as it is for the section's own checks."""
        out = dict(body)
        for path in paths:
            *parents, last = path
            node: dict[str, Any] = out
            for key in parents:
                child = node.get(key)
                if not isinstance(child, Mapping):
                    break
                node[key] = node = dict(child)
            else:
                ref = node.get(last)
                if isinstance(ref, str) and ref and not isinstance(ref, yamlsource.Placeholder):
                    node[last] = str(self.local_file(ref))
        return out

    # -- price tables --------------------------------------------------------------

    def prices(self, value: Any, path: yamlsource.Path, currency: str) -> PriceTable:
        if value is None:
            return PriceTable(currency=currency)
        if isinstance(value, str):
            return self.price_file(value, path, currency)
        if not isinstance(value, dict):
            self.error(
                path, "prices must be a mapping {COUNTRY: price, default: price} or a file path"
            )
            return PriceTable(currency=currency)
        return self.price_mapping(value, path, currency, self.src)

    def price_mapping(
        self, value: dict[str, Any], path: yamlsource.Path, currency: str, src: Located
    ) -> PriceTable:
        prices: dict[str, float] = {}
        default: float | None = None
        for key, raw in value.items():
            if key == "currency":
                try:
                    currency = currency_code(raw)
                except ValueError as exc:
                    self.problems.append(src.problem((*path, key), str(exc)))
                continue
            try:
                amount = price(raw)
            except ValueError as exc:
                self.problems.append(src.problem((*path, key), str(exc)))
                continue
            if key == "default":
                default = amount
            elif isinstance(key, str) and len(key) == 2 and key.isalpha() and key.isupper():
                prices[key] = amount
            else:
                self.problems.append(
                    src.problem(
                        (*path, key),
                        f"price keys are ISO country codes like DE or 'default', got {shown(key)}",
                        at_key=True,
                    )
                )
        return PriceTable(prices=prices, default=default, currency=currency)

    def price_file(self, ref: str, path: yamlsource.Path, currency: str) -> PriceTable:
        file = self.local_file(ref)
        try:
            data = yamlsource.read_bytes(file)
        except yamlsource.ReadFailure as exc:
            self.error(path, f"cannot read price file {shown(ref)}: {exc}")
            return PriceTable(currency=currency)
        try:
            located = yamlsource.load(yamlsource.decode(data, str(file)), str(file))
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return PriceTable(currency=currency)
        value = located.value
        if isinstance(value, dict) and isinstance(value.get("prices"), dict):
            if "currency" in value:
                try:
                    currency = currency_code(value["currency"])
                except ValueError as e:
                    self.problems.append(located.problem(("currency",), str(e)))
            return self.price_mapping(value["prices"], ("prices",), currency, located)
        if isinstance(value, dict):
            return self.price_mapping(value, (), currency, located)
        self.problems.append(located.problem((), "a price file must be a mapping"))
        return PriceTable(currency=currency)
