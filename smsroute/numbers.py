"""Phone numbers: E.164 normalisation with phonenumbers, and masking for logs."""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable

import attrs
import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumberDesc,
    PhoneNumberType,
)

from smsroute.errors import InvalidNumber

# Numbers not written in plain E.164 go through phonenumbers' general parser,
# which compiles metadata patterns on use and relies on the re module's small
# cache; a router seeing numbers of many countries keeps evicting it.  The
# library's own pattern cache (bounded by the fixed metadata) keeps them.
# (Plain E.164 numbers are classified by number_type() below, over patterns
# compiled once per region, and do not depend on it.)
phonenumbers.enable_pattern_cache()


class NumberType(enum.Enum):
    """The kind of line a number belongs to, as rules name it."""

    MOBILE = "mobile"
    FIXED_LINE = "fixed_line"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    TOLL_FREE = "toll_free"
    PREMIUM_RATE = "premium_rate"
    SHARED_COST = "shared_cost"
    VOIP = "voip"
    PERSONAL_NUMBER = "personal_number"
    PAGER = "pager"
    UAN = "uan"
    VOICEMAIL = "voicemail"
    UNKNOWN = "unknown"


_TYPES = {
    PhoneNumberType.MOBILE: NumberType.MOBILE,
    PhoneNumberType.FIXED_LINE: NumberType.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE: NumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST: NumberType.SHARED_COST,
    PhoneNumberType.VOIP: NumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER: NumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER: NumberType.PAGER,
    PhoneNumberType.UAN: NumberType.UAN,
    PhoneNumberType.VOICEMAIL: NumberType.VOICEMAIL,
}

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: (
        "has no valid country code: write it as +<country code><number>, "
        "or configure defaults.default_region"
    ),
    NumberParseException.NOT_A_NUMBER: "is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "is too short",
    NumberParseException.TOO_LONG: "is too long",
}

_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "has an unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "is too short for its country",
    phonenumbers.ValidationResult.TOO_LONG: "is too long for its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "has a length no number of its country has",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: (
        "is too short: it looks like a local number without its area or mobile prefix"
    ),
}


@attrs.frozen(slots=True)
class Destination:
    """A validated destination: E.164 form, ISO country and line type."""

    e164: str
    country: str
    number_type: NumberType

    @property
    def masked(self) -> str:
        """The number safe for logs: ``+49151******89``."""
        return mask(self.e164)


def mask(number: str) -> str:
    """Mask a phone number for logs and errors, keeping a prefix and the last two digits.

    >>> mask("+4915123456789")
    '+49151*******89'
    """
    digits = [c for c in number if c.isdigit()]
    if len(digits) <= 4:
        return "*" * len(digits)
    keep_head = min(5, max(1, len(digits) - 6))
    head = "".join(digits[:keep_head])
    tail = "".join(digits[-2:])
    stars = "*" * (len(digits) - keep_head - 2)
    return ("+" if number.lstrip().startswith("+") else "") + head + stars + tail


def _named(raw: str) -> str:
    """How an error names the number ``raw``: masked, or said to have no digits."""
    shown = mask(raw)
    return f"number {shown}" if shown else "the destination (written without digits)"


_E164 = re.compile(r"\+([1-9]\d{6,14})")


def _parse_e164(digits: str) -> phonenumbers.PhoneNumber | None:
    """A PhoneNumber from E.164 digits without phonenumbers' general parser.

    Most numbers reach the router already in E.164; parsing them by hand
    (country code, then national number) is about twice as fast as
    ``phonenumbers.parse`` and gives the same object.  National numbers with
    a leading zero (Italy) take the general parser, which records the zero.
    """
    for length in (1, 2, 3):
        code = int(digits[:length])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            if not national or national[0] == "0":
                return None
            return phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    return None


# -- number type: phonenumbers' classification over precompiled patterns --------------
#
# phonenumbers.number_type() walks up to eleven pattern descriptions of the
# region's metadata through four Python calls each, looking each pattern up in a
# cache, for every number it sees.  The router classifies every new recipient, so
# the same walk is done here over the same metadata with the patterns compiled
# once per region: same answer (tests compare the two over every region's example
# numbers and random numbers), a third of the cost.

_Desc = tuple[frozenset[int], "re.Pattern[str]"] | None


def _desc(desc: PhoneNumberDesc | None) -> _Desc:
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length), re.compile(desc.national_number_pattern)


def _matches(number: str, desc: _Desc) -> bool:
    # phonenumbers' _is_number_matching_desc: lengths first (none listed: any),
    # then the whole number against the pattern.
    if desc is None:
        return False
    lengths, pattern = desc
    if lengths and len(number) not in lengths:
        return False
    return pattern.fullmatch(number) is not None


@attrs.frozen(slots=True)
class _TypePlan:
    general: _Desc
    special: tuple[tuple[int, _Desc], ...]  # PhoneNumberType values, tried in this order
    fixed_line: _Desc
    mobile: _Desc
    same_mobile_and_fixed_line: bool
    leading_digits: re.Pattern[str] | None  # picks this region among those sharing a code

    def classify(self, number: str) -> int:
        """The order of phonenumbers' _number_type_helper."""
        if not _matches(number, self.general):
            return PhoneNumberType.UNKNOWN
        for kind, desc in self.special:
            if _matches(number, desc):
                return kind
        if _matches(number, self.fixed_line):
            if self.same_mobile_and_fixed_line or _matches(number, self.mobile):
                return PhoneNumberType.FIXED_LINE_OR_MOBILE
            return PhoneNumberType.FIXED_LINE
        if not self.same_mobile_and_fixed_line and _matches(number, self.mobile):
            return PhoneNumberType.MOBILE
        return PhoneNumberType.UNKNOWN


@functools.cache
def _type_plan(region: str) -> _TypePlan | None:
    m = PhoneMetadata.metadata_for_region(region)
    if m is None:
        return None
    return _TypePlan(
        general=_desc(m.general_desc),
        special=tuple(
            (kind, desc)
            for kind, desc in (
                (PhoneNumberType.PREMIUM_RATE, _desc(m.premium_rate)),
                (PhoneNumberType.TOLL_FREE, _desc(m.toll_free)),
                (PhoneNumberType.SHARED_COST, _desc(m.shared_cost)),
                (PhoneNumberType.VOIP, _desc(m.voip)),
                (PhoneNumberType.PERSONAL_NUMBER, _desc(m.personal_number)),
                (PhoneNumberType.PAGER, _desc(m.pager)),
                (PhoneNumberType.UAN, _desc(m.uan)),
                (PhoneNumberType.VOICEMAIL, _desc(m.voicemail)),
            )
            if desc is not None  # a type the region does not have never matches
        ),
        fixed_line=_desc(m.fixed_line),
        mobile=_desc(m.mobile),
        same_mobile_and_fixed_line=bool(m.same_mobile_and_fixed_line_pattern),
        leading_digits=re.compile(m.leading_digits) if m.leading_digits is not None else None,
    )


def number_type(number: phonenumbers.PhoneNumber) -> tuple[int, str | None]:
    """``phonenumbers.number_type(number)`` (a PhoneNumberType value) and the
    number's region, computed once.

    Numbers outside any region (``+800``, ``+882``...) come back UNKNOWN with no
    region: SMS routing needs a destination country.
    """
    return _type_of(number.country_code or 0, phonenumbers.national_significant_number(number))


def _type_of(code: int, national: str) -> tuple[int, str | None]:
    """:func:`number_type` from the country code and the national significant number."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    if len(regions) == 1:
        plan = _type_plan(regions[0]) if regions[0] != "001" else None
        return (
            (PhoneNumberType.UNKNOWN, None)
            if plan is None
            else (plan.classify(national), regions[0])
        )
    # Regions sharing a code (+1, +7, +44...): phonenumbers' region_code_for_number
    # takes the first whose leading digits match, or else the first the number is valid in.
    for region in regions:
        plan = _type_plan(region)
        if plan is None:
            continue
        if plan.leading_digits is not None:
            if plan.leading_digits.match(national):
                return plan.classify(national), region
            continue
        kind = plan.classify(national)
        if kind != PhoneNumberType.UNKNOWN:
            return kind, region
    return PhoneNumberType.UNKNOWN, None


def normalize(raw: str, default_region: str | None = None) -> Destination:
    """Parse ``raw`` into a :class:`Destination`, or raise :class:`InvalidNumber` saying why.

    ``default_region`` (an ISO code) is used for numbers written without
    ``+country``.  Results are cached: the same recipient is common (OTP retries,
    reminders) and parsing is the costliest step before the network.

    >>> normalize("(415) 555-0100", "US").e164
    '+14155550100'
    """
    return normalizer(default_region)(raw)


@functools.cache
def normalizer(default_region: str | None) -> Callable[[str], Destination]:
    """:func:`normalize` for one ``default_region``, with its own cache.

    The cache is keyed by the number string alone, which lru_cache stores as
    is; a (number, region) key would be one more object kept per recipient.
    """

    @functools.lru_cache(maxsize=16384)
    def parse(raw: str) -> Destination:
        return _normalize(raw, default_region)

    return parse


def _fast_e164(raw: str) -> Destination | None:
    """The Destination of a valid number written in plain E.164, or None (then the
    general path decides).  No PhoneNumber is built: for E.164 digits whose national
    part has no leading zero, the national significant number is that part as
    written and the E.164 form is ``raw`` itself.  Measured under callgrind
    (bench/breakdown.py, RESULTS.md, "a realistic config"): the PhoneNumber and the two
    ``national_significant_number`` calls were 16.7k of its 65.5k instructions.
    """
    m = _E164.fullmatch(raw)
    if m is None:
        return None
    digits = m.group(1)
    if not digits.isascii():  # other scripts' digits: the general path writes them in ASCII
        return None
    for length in (1, 2, 3):  # the same split as _parse_e164
        code = int(digits[:length])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            if not national or national[0] == "0":
                return None
            kind, country = _type_of(code, national)
            if kind == PhoneNumberType.UNKNOWN or country is None:
                return None
            return Destination(raw, country, _TYPES.get(kind, NumberType.UNKNOWN))
    return None


def _normalize(raw: str, default_region: str | None) -> Destination:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidNumber("destination number is empty")
    fast = _fast_e164(raw)
    if fast is not None:
        return fast
    m = _E164.fullmatch(raw)
    parsed = _parse_e164(m.group(1)) if m else None
    # UNKNOWN means invalid, and only then is the slower "why" worked out.
    kind, country = number_type(parsed) if parsed is not None else (PhoneNumberType.UNKNOWN, None)
    if parsed is None or kind == PhoneNumberType.UNKNOWN:
        # Not plain valid E.164: the general parser knows every leniency
        # (national prefixes, punctuation, default region).
        try:
            parsed = phonenumbers.parse(raw, default_region)
        except NumberParseException as exc:
            reason = _PARSE_REASONS.get(exc.error_type, "cannot be parsed")
            raise InvalidNumber(f"{_named(raw)} {reason}") from None
        kind, country = number_type(parsed)
    code = parsed.country_code or 0
    if (
        kind == PhoneNumberType.UNKNOWN
        and country is None
        and code in COUNTRY_CODE_TO_REGION_CODE
        and phonenumbers.is_valid_number(parsed)
    ):  # valid, but in no country's plan
        raise InvalidNumber(
            f"number {mask(raw)} is not a number in a country's plan (country code "
            f"+{code}): SMS routing needs a destination country"
        )
    if kind == PhoneNumberType.UNKNOWN:
        possible = phonenumbers.is_possible_number_with_reason(parsed)
        why = _POSSIBLE_REASONS.get(possible) or (
            f"is not a valid number in any numbering plan (country code +{code})"
        )
        raise InvalidNumber(f"{_named(raw)} {why}")
    assert country is not None
    e164 = f"+{code}{phonenumbers.national_significant_number(parsed)}"
    return Destination(e164=e164, country=country, number_type=_TYPES.get(kind, NumberType.UNKNOWN))


_DIGIT_RUN = re.compile(r"\+?\d[\d ()./-]{5,}\d")


def scrub(text: str) -> str:
    """Mask anything that looks like a phone number inside free text.

    Providers quote the number back in their error messages; those messages
    go into attempts and logs, so they are scrubbed first.

    >>> scrub("The 'To' number +15005550001 is not a valid phone number.")
    "The 'To' number +15005****01 is not a valid phone number."
    """

    def hide(m: re.Match[str]) -> str:
        found = m.group(0)
        return mask(found) if sum(c.isdigit() for c in found) >= 7 else found

    return _DIGIT_RUN.sub(hide, text)
