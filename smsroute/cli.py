"""The ``smsroute`` command: check, explain, send, serve, worker and demo.

Every command has ``--help`` with an example.  Output is plain text with
colour only on a terminal (``NO_COLOR`` is honoured); errors go to stderr, one
line each, never a traceback.  The exit status means the same for every
command (and for ``python -m smsroute.outbox``, which ``worker`` runs):

    0    success
    1    the command ran and reports a failure: a send failed, the outbox's store
         or Redis cannot be used, the port is in use
    2    bad usage or input: an unknown option, a missing argument, a NUMBER or
         TEXT that cannot be sent
    3    config error: the file cannot be read or is invalid, or an environment
         variable it names is not set (``check --strict``, ``send``, ``serve``,
         ``worker``; ``check`` and ``explain`` only warn)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from smsroute import __version__
from smsroute.config import Config
from smsroute.configload import load_config
from smsroute.errors import ConfigError, ConfigProblem, InvalidMessage, InvalidNumber, SmsrouteError
from smsroute.loglevel import log_level_problem
from smsroute.message import Message
from smsroute.numbers import scrub

if TYPE_CHECKING:
    from smsroute.explain import RoutePlan
    from smsroute.router import Router

#: Exit statuses, the same for every command (see the module docstring).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\b
Exit status, the same for every command:
  0    success
  1    the command ran and reports a failure (a send failed, the outbox's
       store or Redis cannot be used, the port is in use)
  2    bad usage or input (an unknown option, a number that cannot be sent)
  3    config error (unreadable, invalid, or an unset ${VAR} where it is
       needed: check --strict, send, serve, worker)
  130  interrupted (Ctrl-C)"""


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(code: int, message: str) -> NoReturn:
    """One line on stderr, ``error: ...``, then exit with ``code``."""
    _console(stderr=True).print(f"error: {message}", markup=False)
    sys.exit(code)


def _print_problems(problems: Sequence[ConfigProblem], prefix: str = "") -> None:
    err = _console(stderr=True)
    for problem in problems:
        err.print(
            f"{prefix}{problem}",
            markup=False,
            style=("yellow" if prefix else "bold red") if err.is_terminal else None,
        )


def _config_failed(exc: ConfigError) -> NoReturn:
    _print_problems(exc.problems)
    sys.exit(EXIT_CONFIG)


def _load(path: str) -> Config:
    """The config with every ${VAR} set (for commands that send): else exit 3."""
    try:
        return load_config(path)
    except ConfigError as exc:
        _config_failed(exc)


def _load_unset_ok(path: str) -> tuple[Config, list[ConfigProblem]]:
    """The config, unset ${VARS} standing in as placeholders, and their problems."""
    unset: list[ConfigProblem] = []
    try:
        return load_config(path, unset=unset), unset
    except ConfigError as exc:
        _config_failed(exc)


class _Group(click.Group):
    """Whatever goes wrong, one line on stderr and a documented exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except ConfigError as exc:
            _config_failed(exc)
        except Exception as exc:
            if os.environ.get("SMSROUTE_TRACEBACK"):
                raise
            _fail(
                EXIT_FAILED,
                f"unexpected {type(exc).__name__}: {scrub(str(exc))[:300]}: this is a bug in "
                "smsroute, please report it (SMSROUTE_TRACEBACK=1 shows where it happened)",
            )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smsroute")
def main() -> None:
    """Route SMS through several providers with YAML rules, circuit breakers and failover.

    \b
    Start with:  smsroute demo
    Then:        smsroute check config/routing.yaml
    """


main.help = f"{main.help}\n\n{EXIT_STATUS_HELP}"


_CONFIG = click.argument("config", type=click.Path())
_ENV_PLACEHOLDERS = click.option(
    "--env-placeholders",
    is_flag=True,
    hidden=True,  # the default since unset variables are warnings; kept for old scripts
    help="Accepted for compatibility: unset ${VARS} always stand in as placeholders.",
)


_UNSET = re.compile(r"environment variable (\S+) is not set")


def _unset_note(unset: Sequence[ConfigProblem]) -> str:
    names = sorted({m[1] for p in unset if (m := _UNSET.match(p.message))})
    return (
        f"{len(names)} environment variable{'s' if len(names) != 1 else ''} not set "
        f"({', '.join(names)}): send, serve and worker need them"
    )


@main.command()
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--strict",
    is_flag=True,
    help="An unset ${VAR} is an error, not a warning (a deployment's check).",
)
@_ENV_PLACEHOLDERS
def check(config: str, as_json: bool, strict: bool, env_placeholders: bool) -> None:
    """Validate CONFIG; print each problem as file:line:column: message.

    An environment variable the config names (${TWILIO_AUTH_TOKEN}) that is not
    set is a warning, so a config can be checked without its secrets (in CI, on
    a laptop); with --strict it is an error, as it is for send, serve and worker.
    A provider that takes webhooks (defaults.webhook_url, status_callback) but
    would accept them unverified (no secret for a provider that signs only when
    asked) is a warning too, naming what to set; serve prints it as it starts.

    \b
    Example:
      smsroute check config/routing.yaml
      smsroute check config/routing.yaml --strict    # where the secrets are set
    Exit status: 0 valid, 3 problems found (see smsroute --help).
    """
    unset: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    try:
        loaded = load_config(config, unset=unset, warnings=warnings)
    except ConfigError as exc:
        problems = [*exc.problems, *(unset if strict else ())]
        if as_json:  # one shape whatever failed: problems (unset among them with --strict)
            doc = {
                "ok": False,
                "problems": [p.as_dict() for p in problems],
                "unset": [p.as_dict() for p in unset],
                "warnings": [p.as_dict() for p in warnings],
            }
            click.echo(json.dumps(doc, indent=2))
        else:
            _print_problems(problems)
            _print_problems([] if strict else unset, prefix="warning: ")
        sys.exit(EXIT_CONFIG)
    providers = {name: p.type for name, p in loaded.providers.items()}
    if as_json:
        summary: dict[str, Any] = {
            "ok": not (strict and unset),
            "problems": [p.as_dict() for p in unset] if strict else [],
            "providers": providers,
            "rules": [r.name for r in loaded.rules],
            "unset": [p.as_dict() for p in unset],
            "warnings": [p.as_dict() for p in warnings],
        }
        click.echo(json.dumps(summary, indent=2))
        if strict and unset:
            sys.exit(EXIT_CONFIG)
        return
    if strict and unset:
        _print_problems(unset)
        sys.exit(EXIT_CONFIG)
    _print_problems([*unset, *warnings], prefix="warning: ")
    note = f"; {_unset_note(unset)} (--strict makes that an error)" if unset else ""
    click.echo(
        f"{config}: ok: {len(providers)} providers "
        f"({', '.join(f'{n} ({t})' for n, t in providers.items())}), {len(loaded.rules)} rules"
        f"{note}"
    )


def _message(
    number: str, text: str, category: str, sender: str | None, tags: tuple[str, ...]
) -> Message:
    return Message(to=number, text=text, category=category, sender=sender, tags=tags)


@main.command()
@_CONFIG
@click.argument("number")
@click.option(
    "--text", default="Hello", show_default=True, help="The text (sets encoding and segments)."
)
@click.option("--category", default="transactional", show_default=True)
@click.option("--sender", default=None, help="Sender ID or number, for rules that match on it.")
@click.option("--tag", "tags", multiple=True, help="A message tag (repeatable).")
@click.option(
    "--connect",
    is_flag=True,
    help="Open the SMPP binds first (network and credentials needed) to show their state.",
)
@_ENV_PLACEHOLDERS
def explain(
    config: str,
    number: str,
    text: str,
    category: str,
    sender: str | None,
    tags: tuple[str, ...],
    connect: bool,
    env_placeholders: bool,
) -> None:
    """Show which rule matches NUMBER and in what order providers would be tried.

    Nothing is sent; no network is used; no credentials are needed (an unset
    ${VAR} in CONFIG is a warning).  With --connect, SMPP providers bind first
    (and unbind after), so their bind state is the SMSC's answer.

    \b
    Example:
      smsroute explain config/routing.yaml +4915123456789 --category otp
    Exit status: 0 explained, 2 a bad NUMBER or text, 3 a config error.
    """
    from smsroute.router import Router

    loaded, unset = _load_unset_ok(config)
    if unset:
        _console(stderr=True).print(f"warning: {_unset_note(unset)}", markup=False)
    try:
        plan = _explain(
            Router(loaded, metrics=False), connect, number, text, category, sender, tags
        )
    except (InvalidNumber, InvalidMessage) as exc:
        _fail(EXIT_USAGE, str(exc))
    except ConfigError as exc:
        _config_failed(exc)
    except SmsrouteError as exc:  # --connect: Redis (or its package) cannot be used
        _fail(EXIT_FAILED, str(exc))
    out = _console()
    out.print(f"number   {plan.to}  ({plan.country}, {plan.number_type.value})")
    out.print(
        f"text     {plan.segments} segment(s), {plan.encoding}"
        + ("  (after transliteration)" if plan.transliterated else ""),
        markup=False,
    )
    if plan.culprits:
        out.print(f"ucs-2    because of {'; '.join(map(str, plan.culprits))}", markup=False)
    out.print(f"rule     {plan.rule}  (strategy: {plan.strategy})")
    if plan.opted_out:
        out.print(f"opt-out  the number opted out of {category} messages: send refuses it")
    for g in plan.guards:  # each guard's limit and count now (every replica's, with Redis)
        verdict = "  <- refuses: send calls no provider" if g.refuses else ""
        now = f", {g.count:g} now" if g.count is not None and g.guard != "budget" else ""
        out.print(f"guard    {g.guard}: {g.limit}{now}{verdict}", markup=False)
    if plan.quiet_until is not None or plan.quiet_never:
        when = "never" if plan.quiet_never else plan.quiet_until.isoformat()  # type: ignore[union-attr]
        out.print(f"quiet    inside {category}'s quiet hours now: it could go from {when}")
    if plan.last_resort:
        out.print("note     every breaker is open: the soonest to reopen is tried as a last resort")
    table = Table(box=None, pad_edge=False)
    for column in ("#", "provider", "price", "breaker", "score", "why"):
        table.add_column(column)
    for i, c in enumerate(plan.candidates, 1):
        table.add_row(
            str(i) if c.skipped is None else "-",
            c.provider,
            "unknown" if c.price is None else f"{c.price:.4f}",
            c.breaker,
            f"{c.score:.3f}",
            c.skipped or ("tried in this order" if i > 1 else "tried first"),
        )
    out.print(table)
    for c in plan.candidates:  # the sender each provider would be given, and why
        out.print(f"sender   {c.provider}: {c.sender or '(account default)'}  ({c.sender_why})")
    for c in plan.candidates:  # SMPP binds: up, down, window in use
        if c.links is not None:
            note = "" if connect else "  (not connected: --connect binds first)"
            out.print(f"binds    {c.provider}: {c.links}{note}", markup=False)


def _explain(
    router: Router,
    connect: bool,
    number: str,
    text: str,
    category: str,
    sender: str | None,
    tags: tuple[str, ...],
) -> RoutePlan:
    """The router's plan for the message; with ``connect``, inside ``async with router``."""
    message = _message(number, text, category, sender, tags)
    if not connect:
        return router.explain(message)

    async def connected() -> RoutePlan:
        async with router:
            return router.explain(message)

    return asyncio.run(connected())


@main.command()
@_CONFIG
@click.argument("number")
@click.argument("text")
@click.option("--category", default="transactional", show_default=True)
@click.option("--sender", default=None)
def send(config: str, number: str, text: str, category: str, sender: str | None) -> None:
    """Send TEXT to NUMBER for real, with credentials from the environment.

    \b
    Example:
      export TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=...
      smsroute send config/routing.yaml +4915123456789 "Your code is 123456" --category otp
    Exit status: 0 accepted, 1 failed, 2 bad number or text, 3 a config error
    (an unset ${VAR} included).
    """
    from smsroute.router import Router

    loaded = _load(config)

    async def run() -> Any:
        async with Router(loaded, metrics=False) as router:
            return await router.send(_message(number, text, category, sender, ()))

    try:
        result = asyncio.run(run())
    except (InvalidNumber, InvalidMessage) as exc:
        _fail(EXIT_USAGE, str(exc))
    except ConfigError as exc:
        _config_failed(exc)
    except SmsrouteError as exc:  # Redis (or its package) missing: what to do
        _fail(EXIT_FAILED, str(exc))
    out = _console()
    for i, a in enumerate(result.attempts, 1):
        code = f" {a.error_code}" if a.error_code else ""
        status = f" HTTP {a.status_code}" if a.status_code else ""
        out.print(
            f"attempt {i}: {a.provider:<16} {a.outcome.value:<10} {a.latency * 1000:7.1f} ms"
            f"{status}{code}{'  ' + a.detail if a.detail else ''}",
            markup=False,
        )
    if result.ok:
        cost = f", cost {result.cost:.4f} {result.currency}" if result.cost is not None else ""
        out.print(
            f"accepted by {result.provider} as {result.provider_message_id} "
            f"(message {result.message_id}, {result.segments} segment(s){cost})",
            markup=False,
        )
        return
    out.print(f"failed: {result.reason}", markup=False)
    sys.exit(EXIT_FAILED)


@main.command()
@_CONFIG
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def serve(config: str, host: str, port: int) -> None:
    """Serve webhooks, /metrics and /healthz for CONFIG in one aiohttp server.

    \b
    Example:
      smsroute serve config/routing.yaml --host 0.0.0.0 --port 8080
    On start it prints each URL it serves: /healthz, /metrics, and each
    provider's delivery-receipt (status) and inbound URL, under the path of
    defaults.webhook_url (e.g. /sms/twilio/status).
    SIGTERM or Ctrl-C shuts down gracefully.
    Exit status: 0 after a shutdown, 1 the port or Redis cannot be used, 3 a
    config error (an unset ${VAR} included).
    """
    from aiohttp import web

    from smsroute.server import make_server_app, served_routes

    warnings: list[ConfigProblem] = []
    try:
        loaded = load_config(config, warnings=warnings)
    except ConfigError as exc:
        _config_failed(exc)
    _print_problems(warnings, prefix="warning: ")  # webhooks it would accept unverified
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def started(*_: object) -> None:
        lines = [f"smsroute serving on {base}"]
        lines += [f"  {url}  {what}" for url, what in served_routes(loaded, base)]
        if loaded.defaults.webhook_url is not None:
            public = loaded.defaults.webhook_url.rstrip("/")
            lines.append(f"  providers call them as {public}/<provider>/... (defaults.webhook_url)")
        click.echo("\n".join(lines))

    try:
        web.run_app(
            make_server_app(loaded),
            host=host,
            port=port,
            access_log=None,
            print=started,
        )
    except ConfigError as exc:
        _config_failed(exc)
    except SmsrouteError as exc:  # Redis (or its package) missing at start: what to do
        _fail(EXIT_FAILED, str(exc))
    except OSError as exc:  # the address: in use, not ours, not allowed
        _fail(EXIT_FAILED, _listen_error(host, port, exc))


def _listen_error(host: str, port: int, exc: OSError, option: str = "--port") -> str:
    """One line on why ``smsroute serve`` cannot listen on host:port, and what to do."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use (another process, "
            f"or another smsroute, listens there): stop it or choose another {option}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            f"privileges): choose another {option}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no interface of this host has that address: fix --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A level name logging knows (any case), or a usage error (exit 2)."""
    problem = log_level_problem(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


@main.command()
@_CONFIG
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Messages sent at once (default: the config's outbox.concurrency).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    callback=_log_level,
    help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
)
def worker(config: str, concurrency: int | None, log_level: str) -> None:
    """Send the messages queued in CONFIG's outbox until SIGTERM.

    \b
    Example:
      smsroute worker config/routing.yaml --concurrency 32
    Producers call router.enqueue(); any number of workers drain the queue.
    The first SIGTERM stops gracefully (sends under way finish, the rest is
    returned to the queue); a second cancels the sends under way.
    Without an outbox: section the queue is the SQLite file smsroute-outbox.db
    in the current directory (outbox.path is relative to CONFIG's folder).
    Exit status: 0 after a stop, 1 the outbox's store or Redis cannot be used,
    3 a config error (an unset ${VAR} included).
    """
    from smsroute.outbox.__main__ import main as worker_main

    args = [config, "--log-level", log_level]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    sys.exit(worker_main(args))


@main.group()
def optouts() -> None:
    """Import, export and list the numbers that opted out (CSV).

    \b
    The list is the state backend's: it needs state: {backend: redis} in CONFIG
    (a memory list lives and dies with one process).  CSV: a header row whose
    first column is "number", then one number a row (other columns ignored);
    see smsroute.optout_io.
    """


def _optout_run(config: str, job: Any) -> Any:
    """Run ``job(router)`` on a router of CONFIG whose opt-outs are in Redis."""
    from smsroute.router import Router

    loaded = _load(config)
    if loaded.state.backend != "redis":
        _fail(
            EXIT_CONFIG,
            f"{config}: opt-outs are kept in this process's memory (state backend memory), "
            "so a command cannot change or read a running router's: add state: "
            "{backend: redis, url: ...} to share them, or use router.optouts in your program",
        )

    async def run() -> Any:
        async with Router(loaded, metrics=False) as router:
            out = job(router)
            await router.optouts.flush()
            return out

    try:
        return asyncio.run(run())
    except SmsrouteError as exc:  # Redis down, a bad row (OptOutFileError: exit 2 below)
        from smsroute.optout_io import OptOutFileError

        _fail(EXIT_USAGE if isinstance(exc, OptOutFileError) else EXIT_FAILED, str(exc))


@optouts.command("import")
@_CONFIG
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def optouts_import(config: str, file: str) -> None:
    """Opt out every number of the CSV FILE ("-": standard input).

    \b
    Example:
      printf 'number\\n+14155550100\\n' > stop.csv
      smsroute optouts import config/routing.yaml stop.csv
    All or nothing: a bad row is one error naming the row, and nothing is
    imported.  Exit status: 0 imported, 1 Redis cannot be used, 2 a bad FILE,
    3 a config error (or state backend memory).
    """
    try:
        data = _read_input(file)
    except OSError as exc:
        _fail(EXIT_USAGE, f"cannot read {file}: {exc.strerror or exc}")
    added = _optout_run(config, lambda router: router.optouts.import_csv(data, source=file))
    _console().print(f"imported: {added} number(s) newly opted out", markup=False)


def _read_input(path: str) -> bytes:
    """The bytes of ``path`` ("-": standard input)."""
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


@optouts.command("export")
@_CONFIG
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
def optouts_export(config: str, file: str) -> None:
    """Write every opted-out number to FILE as CSV (default "-": standard output).

    \b
    Example:
      smsroute optouts export config/routing.yaml optouts.csv
    Exit status: 0 written, 1 Redis cannot be used, 2 FILE cannot be written,
    3 a config error (or state backend memory).
    """
    text = _optout_run(config, lambda router: router.optouts.export_csv())
    if file == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(file, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        _fail(EXIT_USAGE, f"cannot write {file}: {exc.strerror or exc}")


@optouts.command("list")
@_CONFIG
def optouts_list(config: str) -> None:
    """Show how many numbers opted out, and each one masked (export shows them whole).

    \b
    Example:
      smsroute optouts list config/routing.yaml
    Exit status: 0 listed, 1 Redis cannot be used, 3 a config error (or state
    backend memory).
    """
    from smsroute.numbers import mask

    numbers = _optout_run(config, lambda router: router.optouts.list())
    out = _console()
    for number in numbers:
        out.print(mask(number), markup=False)
    out.print(f"{len(numbers)} number(s) opted out", markup=False)


@main.command()
@click.option("--duration", default=30.0, show_default=True, help="Seconds of traffic.")
@click.option("--rate", default=40.0, show_default=True, help="Messages per second.")
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(),
    help="A config in the shape of the shipped config/demo.yaml.",
)
@click.option("--seed", default=None, type=int, help="Random seed, for a repeatable run.")
@click.option(
    "--metrics-port",
    default=0,
    type=click.IntRange(0, 65535),
    help="Port of /metrics on 127.0.0.1  [default: any free port]",
)
def demo(
    duration: float, rate: float, config_path: str | None, seed: int | None, metrics_port: int
) -> None:
    """Watch smsroute route live traffic through three fake providers.

    \b
    Example:
      smsroute demo                  # 30 seconds, 40 messages/s
      smsroute demo --duration 10 --metrics-port 9464
    No credentials, network or servers needed: the providers are fakes on
    127.0.0.1 speaking each provider's real wire format.  Part way through,
    Twilio goes down for Germany and comes back, and Vonage throttles.
    /metrics is served while it runs: its URL is the first line printed.
    Exit status: 0 done, 1 the metrics port cannot be used, 3 a config error.
    """

    from smsroute.demo import run_demo

    # The live view shows breakers and failovers; the log lines would only garble it.
    logging.getLogger("smsroute").setLevel(logging.ERROR)

    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # the summary is read from logs and pipes
    try:
        asyncio.run(
            run_demo(
                duration=duration,
                rate=rate,
                config_path=config_path,
                console=console,
                seed=seed,
                metrics_port=metrics_port,
            )
        )
    except ConfigError as exc:
        _config_failed(exc)
    except OSError as exc:  # the metrics port: in use, not allowed
        _fail(EXIT_FAILED, _listen_error("127.0.0.1", metrics_port, exc, "--metrics-port"))


if __name__ == "__main__":
    main()
