"""Whatever arguments the ``smsroute`` command is given, it ends with a documented exit
status and at most a few lines saying what is wrong: never a traceback, a secret or a
whole phone number, and no file changes.

Hypothesis builds the argument lists from the click group itself, so a new command or
option is fuzzed as soon as it exists: every command's real name (a group's subcommands
included), its real options (``--name value``, ``--name=value``, a flag, a value left
out) and arguments, in order or shuffled, with stray tokens; values of every kind (empty,
whitespace, unicode text, very long text, huge and negative numbers, number-like strings
such as ``+4915123456789``, ``0049 151``, ``+``); and paths, in a temporary folder, to
configs: a valid one whose provider is at 127.0.0.1 port 1 (a send fails at once,
connection refused, no network), the same with its token from an environment variable,
with an unset variable, with opt-outs in a Redis at port 1 (refused too), a YAML error, an
unknown key; to a missing file, a directory, a file of random bytes, a CSV.  ``serve`` and
``worker`` are only given configs they refuse before they listen or loop (and values that
cannot name another), ``demo`` (which starts its fake providers before it reads a config)
only ``--help``.

Each list runs in-process (click's CliRunner; standard input empty; the current folder an
empty one in the temporary folder; logging as in a new process, with no handler yet) and
must keep the contract of ``smsroute --help``:

- the exit status is 0, 1, 2 or 3 (130 is Ctrl-C's, never sent here), the only exception
  escaping a SystemExit, and nothing says "Traceback" or "this is a bug in smsroute";
- a non-zero exit says what is wrong in at most six lines, usage errors included (``check
  --json`` says it as JSON on stdout; a group given no command at all shows its help);
- nothing leaks: the configs' secrets (a token, a token from the environment, a Redis
  password) never show unless typed on the command line, and the NUMBER argument shows
  masked (``+49151******89``), never its whole digits unless they were typed elsewhere too;
- nothing changes: no file of the temporary folder is created, changed or removed (the
  command never writes to a config; ``optouts export`` would write only once its Redis
  answers).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import operator
import random
import traceback
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from smsroute.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

#: A hang fails the test instead of the run.
pytestmark = pytest.mark.timeout(120)

#: The exit statuses of the table in ``smsroute --help``, but 130 (Ctrl-C).
DOCUMENTED = {EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG}
SECRET = "tok-SECRET-9d2e"
ENV_SECRET = "envtok-SECRET-41c7"
REDIS_PASSWORD = "redispw-SECRET-77a1"
#: Commands that listen or run until stopped: only given what stops them before.
LONG_RUNNING = frozenset({"serve", "worker", "demo"})

PROVIDER = """\
providers:
  tw:
    type: twilio
    base_url: http://127.0.0.1:1
    account_sid: AC0123456789abcdef0123456789abcdef
    auth_token: {token}
    from: "+15005550006"
rules:
  - name: default
    providers: [tw]
"""
#: The temporary folder's files: what each holds.
FILES: dict[str, bytes] = {
    "valid.yaml": PROVIDER.format(token=SECRET).encode(),
    "env.yaml": PROVIDER.format(token="${SMSROUTE_FUZZ_TOKEN}").encode(),
    "unset.yaml": PROVIDER.format(token="${SMSROUTE_FUZZ_UNSET}").encode(),
    "redis.yaml": (
        PROVIDER.format(token=SECRET)
        + f"state:\n  backend: redis\n  url: redis://:{REDIS_PASSWORD}@127.0.0.1:1/0\n"
    ).encode(),
    "yaml-error.yaml": (
        f"providers:\n  tw: {{type: twilio, account_sid: AC1, auth_token: {SECRET}\nrules: [\n"
    ).encode(),
    "unknown-key.yaml": (
        f"providers:\n  tw: {{type: twilio, account_sid: AC1, auth_token: {SECRET}, "
        "timout: 5s}\nrules:\n  - name: default\n    providers: [tw]\n"
    ).encode(),
    "random.bin": random.Random(20240611).randbytes(4096),
    "numbers.csv": b"number\n+14155550100\n+4915123456789\n",
}
FOLDERS = ("a-directory", "work")  # "work": the current folder, empty


@attrs.frozen
class At:
    """A path in the temporary folder, named in an argument list before it exists."""

    name: str


Token = str | At

#: Configs the command refuses before it listens or loops: all but the valid ones.
FAILING_CONFIGS = [
    At(name) for name in ("unset.yaml", "yaml-error.yaml", "unknown-key.yaml", "random.bin")
] + [At("missing.yaml"), At("a-directory"), At("no-such-folder/routing.yaml"), At("numbers.csv")]
FAILING = st.sampled_from(FAILING_CONFIGS)
CONFIGS = st.one_of(st.sampled_from([At("valid.yaml"), At("env.yaml"), At("redis.yaml")]), FAILING)
DATA_FILES = st.sampled_from(
    [
        "-",  # standard input: empty
        At("numbers.csv"),
        At("random.bin"),
        At("a-directory"),
        At("missing.csv"),
        At("no-such-folder/x.csv"),
        At("work/export.csv"),
    ]
)

_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
TEXT = st.text(_CHARS, max_size=24)
LONG = st.builds(operator.mul, _CHARS, st.integers(300, 5000))
NUMBER_LIKE = st.one_of(
    st.sampled_from(
        [
            "+4915123456789",
            "0049 151",
            "0049 151 23456789",
            "+49 151 2345 6789",
            "(415) 555-0100",
            "4915123456789",
            "+14155550100",
            "+1",
            "+",
            "abc",
            "+٤٩١٥١٢٣٤٥٦٧٨٩",  # Arabic-Indic digits
            "+4915123456789" * 3,
        ]
    ),
    st.from_regex(r"\+?[0-9 ()./-]{0,20}", fullmatch=True),
)
#: Numbers a router sends to (German mobile, US): the command gets past them.
SENDABLE = st.one_of(
    st.integers(10**7, 10**8 - 1).map(lambda n: f"+49151{n}"),
    st.integers(1000, 9999).map(lambda n: f"+1415555{n}"),
)
#: Numbers with enough digits to be masked, most refused (no +, no such country, too long).
DIGITS = st.tuples(st.sampled_from(["", "+", "00", "0", " +"]), st.integers(10**6, 10**17)).map(
    lambda t: f"{t[0]}{t[1]}"
)
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(str),
    st.sampled_from(["0", "-1", "65535", "65536", "1e999", "nan", "-inf", "0x10", "1_000"]),
)
SPECIAL = st.sampled_from(
    ["", " ", "\t", "\n", "-", "--", "--help", SECRET, "DEBUG", "nonsense", "otp", "marketing"]
)
VALUES = st.one_of(SPECIAL, TEXT, NUMBER_LIKE, NUMBERS, LONG)
#: Any value, for commands that end by themselves; no valid config for the others.
ANY = st.one_of(VALUES, CONFIGS, DATA_FILES)
SAFE = st.one_of(VALUES, FAILING)
STRAY = st.sampled_from(["--no-such-option", "-x", "--", "-", "--help", "-h"])


def leaves(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``group`` with the names that reach it, groups' commands included."""
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaves(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def groups(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Group]]:
    found = [(path, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += groups(command, (*path, name))
    return found


LEAVES = leaves(main)


def argument_values(
    param: click.Parameter, pool: st.SearchStrategy[Token], configs: st.SearchStrategy[Token]
) -> Any:
    if pool is SAFE:  # a long-running command: nothing may name a config it would run with
        return FAILING if param.name == "config" else SAFE
    by_name: dict[str | None, st.SearchStrategy[Token]] = {
        "config": configs,
        "number": st.one_of(SENDABLE, DIGITS, NUMBER_LIKE, VALUES),
        "text": st.one_of(TEXT, TEXT, VALUES),
        "file": DATA_FILES,
    }
    return by_name.get(param.name, ANY)


def option_values(option: click.Option, pool: st.SearchStrategy[Token]) -> Any:
    if isinstance(option.type, (click.types.IntParamType, click.types.FloatParamType)):
        return st.one_of(NUMBERS, NUMBERS, pool)
    if isinstance(option.type, click.Path) and pool is not SAFE:
        return st.one_of(CONFIGS, DATA_FILES, pool)
    return pool


@st.composite
def option_tokens(
    draw: st.DrawFn, option: click.Option, pool: st.SearchStrategy[Token]
) -> list[Token]:
    name = draw(st.sampled_from([*option.opts, *option.secondary_opts]))
    if option.is_flag or option.count:
        return [name]
    if draw(st.integers(0, 14)) == 14:
        return [name]  # its value left out: an error, or it takes the next token
    value = draw(option_values(option, pool))
    if name.startswith("--") and isinstance(value, str) and draw(st.integers(0, 4)) == 4:
        return [f"{name}={value}"]
    return [name, value]


@st.composite
def command_lines(
    draw: st.DrawFn,
    path: tuple[str, ...],
    command: click.Command,
    configs: st.SearchStrategy[Token] = CONFIGS,
) -> list[Token]:
    """``path`` then arguments and options of ``command``, in order or shuffled."""
    params = command.params
    long_running = path[0] in LONG_RUNNING
    if long_running and not any(p.name == "config" for p in params):
        return [*path, draw(st.sampled_from(["--help", "-h"]))]  # it would start at once
    pool = SAFE if long_running else ANY
    chunks: list[list[Token]] = []
    for param in params:
        if isinstance(param, click.Argument) and draw(st.integers(0, 19)) < 19:
            chunks.append([draw(argument_values(param, pool, configs))])
    options = [p for p in params if isinstance(p, click.Option)]
    for option in draw(st.lists(st.sampled_from(options), max_size=4)) if options else []:
        # Anywhere: click takes options between arguments too.
        chunks.insert(draw(st.integers(0, len(chunks))), draw(option_tokens(option, pool)))
    if draw(st.integers(0, 7)) == 7:
        chunks.insert(draw(st.integers(0, len(chunks))), [draw(st.one_of(STRAY, pool))])
    if draw(st.integers(0, 4)) == 4:
        chunks = draw(st.permutations(chunks))  # arguments out of order too
    return [*path, *(token for chunk in chunks for token in chunk)]


def _not_long_running(argv: list[Token]) -> bool:
    return not argv or argv[0] not in LONG_RUNNING


COMMAND_LINES = st.sampled_from(LEAVES).flatmap(lambda leaf: command_lines(*leaf))
ARGV = st.one_of(
    # Mostly (8 in 10): a command with its arguments and options.
    *[COMMAND_LINES] * 8,
    # A group alone, or with whatever follows.
    st.tuples(
        st.sampled_from([path for path, _ in groups(main)]),
        st.lists(st.one_of(STRAY, VALUES), max_size=3),
    )
    .map(lambda t: [*t[0], *t[1]])
    .filter(_not_long_running),
    # What stops before any command runs (help, version, a bad option), then anything.
    st.tuples(
        st.sampled_from(["--help", "-h", "--version", "--no-such-option"]),
        COMMAND_LINES,
    ).map(lambda t: [t[0], *t[1]]),
)


#: The commands that take a NUMBER (but servers), each with a config it runs with: the NUMBER
#: reaches the router, which refuses most of them.
NUMBER_LINES = st.sampled_from(
    [
        leaf
        for leaf in LEAVES
        if leaf[0][0] not in LONG_RUNNING and any(p.name == "number" for p in leaf[1].params)
    ]
).flatmap(
    lambda leaf: command_lines(*leaf, configs=st.sampled_from([At("valid.yaml"), At("env.yaml")]))
)


# -- the contract -------------------------------------------------------------------------------


def resolve(argv: Sequence[Token], root: Path) -> list[str]:
    return [str(root / t.name) if isinstance(t, At) else t for t in argv]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under ``root``."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@contextlib.contextmanager
def logging_as_in_a_new_process() -> Iterator[None]:
    """No handler on the root logger, as in a new process (pytest has given it its own), so
    that ``logging.basicConfig`` takes effect and checks its level; then pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def runner() -> CliRunner:
    env = {
        "SMSROUTE_FUZZ_TOKEN": ENV_SECRET,
        "SMSROUTE_FUZZ_UNSET": None,
        "SMSROUTE_TRACEBACK": None,  # a traceback on an unexpected error: not here
        "NO_COLOR": "1",
    }
    if "mix_stderr" in inspect.signature(CliRunner).parameters:  # click < 8.2
        return CliRunner(env=env, mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner(env=env)


def reached(argv: Sequence[str]) -> tuple[tuple[str, ...], click.Command, list[str]]:
    """The command ``argv`` names, the names that reach it, and the arguments it is given."""
    command: click.Command = main
    path: list[str] = []
    while isinstance(command, click.Group) and len(path) < len(argv):
        sub = command.commands.get(argv[len(path)])
        if sub is None:
            break
        command = sub
        path.append(argv[len(path)])
    return tuple(path), command, list(argv[len(path) :])


def ascii_digits(text: str) -> str:
    """``text`` with every decimal digit, of any script, written 0-9."""
    return "".join(str(d) if (d := unicodedata.decimal(c, None)) is not None else c for c in text)


def only_digits(text: str) -> str:
    return "".join(c for c in ascii_digits(text) if c in "0123456789")


def assert_contract(argv: list[str], result: Result, root: Path) -> None:
    shown = (
        f"\nargv: {argv!r}\nexit status: {result.exit_code}\n"
        f"stdout: {result.stdout[:3000]!r}\nstderr: {result.stderr[:3000]!r}"
    )
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(exc))
        pytest.fail(f"{type(exc).__name__} escaped the command:\n{tb}{shown}")
    code, out, err = result.exit_code, result.stdout, result.stderr
    everything = out + err + result.output
    assert code in DOCUMENTED, f"undocumented exit status{shown}"
    assert "Traceback" not in everything, shown
    assert "this is a bug in smsroute" not in everything, shown

    path, command, rest = reached(argv)
    if code != EXIT_OK:
        if not rest and isinstance(command, click.Group):
            assert code == EXIT_USAGE, shown  # click 8.2 and later: its help, exit 2
            assert "Commands:" in err, shown
        else:
            said = err if err.strip() else out
            lines = [line for line in said.splitlines() if line.strip()]
            try:
                doc = json.loads(said)
            except ValueError:
                doc = None
            if isinstance(doc, dict):  # check --json
                assert doc.get("ok") is False, shown
                assert {"problems", "unset", "warnings"} <= doc.keys(), shown  # one shape
                assert doc["problems"], shown  # --strict: the unset among them
            else:
                typed = sum(len(f"{token}.".splitlines()) - 1 for token in argv)  # echoed
                assert 1 <= len(lines) <= 6 + typed, f"not a short error{shown}"
                assert ": " in said, f"does not say what is wrong{shown}"

    for secret in (SECRET, ENV_SECRET, REDIS_PASSWORD):
        if not any(secret in token for token in argv):
            assert secret not in everything, f"{secret} leaked{shown}"

    if path and not isinstance(command, click.Group):
        params = command.make_context(path[-1], rest, resilient_parsing=True).params
        number = params.get("number")
        digits = only_digits(number) if isinstance(number, str) else ""
        if len(digits) >= 7:  # what smsroute.numbers.scrub masks
            others = list(argv)
            others.remove(number)
            if not any(digits in only_digits(token) for token in others):
                assert number.strip() not in everything, f"NUMBER shown whole{shown}"
                assert digits not in ascii_digits(everything), f"NUMBER's digits shown{shown}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_fuzz")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    for name in FOLDERS:
        (root / name).mkdir()
    return root


def test_every_command_is_fuzzed() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"check", "explain", "send", "optouts import", "optouts export", "optouts list"} <= names
    assert names >= LONG_RUNNING  # a rename would put a server among the fuzzed commands


def run_and_check(tree: Path, argv: list[Token]) -> None:
    before = snapshot(tree)
    args = resolve(argv, tree)
    with contextlib.chdir(tree / "work"), logging_as_in_a_new_process():
        result = runner().invoke(main, args, input="", prog_name="smsroute")
    assert_contract(args, result, tree)
    event(f"{' '.join(reached(args)[0]) or '(no command)'}: exit {result.exit_code}")
    assert snapshot(tree) == before, f"files changed by {args!r}"


# Regressions: an unknown --log-level was "unexpected ValueError ... a bug in smsroute", exit 1
# (now a usage error, exit 2); explain --connect with Redis down was the same, for
# StateBackendUnavailable (now "error: ... Redis ... cannot be reached", exit 1).
@example(["worker", At("unknown-key.yaml"), "--log-level", "nonsense"])
@example(["worker", At("unset.yaml"), "--log-level", ""])
@example(["explain", At("redis.yaml"), "+4915123456789", "--connect"])
@example(["optouts", "export", At("redis.yaml"), At("work/export.csv")])
@example(["optouts", "import", At("redis.yaml"), "-"])
@example(["check", At("yaml-error.yaml"), "--json"])
@example([])
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(argv=ARGV)
def test_any_arguments_end_with_a_documented_status_and_a_short_error_leaking_nothing(
    tree: Path, argv: list[Token]
) -> None:
    run_and_check(tree, argv)


@example(["send", At("valid.yaml"), "+4915123456789", "hi"])
@example(["send", At("env.yaml"), "0049 151 23456789", "hi"])
@example(["explain", At("valid.yaml"), "4915123456789"])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(argv=NUMBER_LINES)
def test_any_number_argument_shows_masked_whatever_else_is_given(
    tree: Path, argv: list[Token]
) -> None:
    run_and_check(tree, argv)
