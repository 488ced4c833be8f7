"""Exceptions a user of smsroute can cause, and can catch.

    SmsrouteError
    ├── ConfigError        a config file is wrong: file, line, column and field path
    ├── InvalidNumber      a destination is not a valid phone number
    ├── InvalidMessage     a text is empty, too long, or names an unknown category
    ├── StateBackendUnavailable  the config asks for Redis and Redis cannot be used
    ├── OutboxUnavailable  the outbox's store cannot be used (damaged, locked, unreachable)
    └── SendFailed         raised by ``SendResult.raise_for_status()`` only (defined in
                           ``smsroute.message``, beside the result it carries: this
                           module is the bottom layer and imports nothing of smsroute)

Provider failures never raise out of ``Router.send``: they are outcomes in the
result (see ``smsroute.providers.base``).  The default text of every exception
here is free of phone numbers, message text and secrets.
"""

from __future__ import annotations


class SmsrouteError(Exception):
    """Base class of every exception smsroute raises on purpose."""


class ConfigError(SmsrouteError):
    """A configuration file (or mapping) is invalid.

    ``problems`` holds every problem found, each a :class:`ConfigProblem`;
    ``file``, ``line``, ``column`` and ``path`` describe the first one, so the
    common case of a single mistake reads naturally::

        try:
            Router.from_yaml("routing.yaml")
        except ConfigError as e:
            print(e)   # routing.yaml:12:5: rules[1].providers[0]: unknown provider 'twillio' ...
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = tuple(problems)
        first = problems[0]
        self.file = first.file
        self.line = first.line
        self.column = first.column
        self.path = first.path
        super().__init__("\n".join(str(p) for p in problems))


class ConfigProblem:
    """One problem in a config file, located by file:line:column and field path."""

    __slots__ = ("column", "file", "line", "message", "path")

    def __init__(
        self, message: str, *, file: str, line: int | None, column: int | None, path: str
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.path = path

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f"{self.path}: " if self.path else ""
        return f"{where}: {field}{self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({str(self)!r})"

    def as_dict(self) -> dict[str, object]:
        """The problem as plain data (for ``smsroute check --json``)."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class InvalidNumber(SmsrouteError, ValueError):
    """A destination is not a phone number we can send to.

    The message says why (too short, unknown country code, needs a +country
    prefix, ...) and shows the number masked (``number +49151*******89 is too
    long``), or says it has no digits at all
    (``the destination (written without digits) is not a phone number``).
    """


class InvalidMessage(SmsrouteError, ValueError):
    """A message cannot be sent as written: empty text, too many segments,
    an unknown category, and so on.  Raised before any provider is called."""


class StateBackendUnavailable(SmsrouteError):
    """The config asks for shared state in Redis and Redis cannot be used.

    Raised by ``async with router`` (or the first ``send()``) when Redis does
    not answer, and by ``Router(...)`` when the ``redis`` package is missing;
    the message names the URL (never its password) and what to do.  Once
    running, a router that loses Redis goes on with local state instead
    (see the ``StateBackendError`` event).
    """


class OutboxUnavailable(SmsrouteError):
    """The outbox's store cannot be used now.

    A damaged or foreign SQLite file, a database another process keeps locked
    past the busy timeout, a Redis that does not answer, a missing package.  The
    message names the store (its file, or its Redis URL without the password)
    and what to do.  Nothing is remembered: the next call tries again, so a
    lock that was released or a Redis that came back just works.
    """
