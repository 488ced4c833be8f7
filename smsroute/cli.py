"""The ``smsroute`` command: check, explain, send, serve, worker and demo.

Every command has ``--help`` with an example.  Output is plain text with
colour only on a terminal (``NO_COLOR`` is honoured); errors go to stderr with
a non-zero exit status: 1 for a failure the command reports (a bad config, a
failed send), 2 for bad usage or input.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from smsroute import __version__
from smsroute.config import Config, load_config
from smsroute.errors import ConfigError, InvalidMessage, InvalidNumber, SmsrouteError
from smsroute.message import Message
from smsroute.yamlsource import Placeholder


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class _Placeholders(Mapping[str, str]):
    """The environment, with a stand-in for every variable that is not set."""

    def __init__(self, real: Mapping[str, str]) -> None:
        self.real = real

    def __getitem__(self, key: str) -> str:
        return self.real[key] if key in self.real else Placeholder(f"<{key}>")

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)


def _print_problems(exc: ConfigError) -> None:
    err = _console(stderr=True)
    for problem in exc.problems:
        err.print(f"[bold red]{problem}[/]" if err.is_terminal else str(problem))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smsroute")
def main() -> None:
    """Route SMS through several providers with YAML rules, circuit breakers and failover.

    \b
    Start with:  smsroute demo
    Then:        smsroute check config/routing.yaml
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--env-placeholders",
    is_flag=True,
    help="Stand in for unset ${VARS} (check a config in CI without its secrets).",
)
def check(config: str, as_json: bool, env_placeholders: bool) -> None:
    """Validate CONFIG; print each problem as file:line:column: message.

    \b
    Example:
      smsroute check config/routing.yaml --env-placeholders
    Exit status: 0 valid, 1 problems found.
    """
    environ = _Placeholders(os.environ) if env_placeholders else None
    try:
        loaded = load_config(config, environ=environ)
    except ConfigError as exc:
        if as_json:
            click.echo(
                json.dumps({"ok": False, "problems": [p.as_dict() for p in exc.problems]}, indent=2)
            )
        else:
            _print_problems(exc)
        sys.exit(1)
    providers = {name: p.type for name, p in loaded.providers.items()}
    if as_json:
        summary = {"ok": True, "providers": providers, "rules": [r.name for r in loaded.rules]}
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"{config}: ok: {len(providers)} providers "
        f"({', '.join(f'{n} ({t})' for n, t in providers.items())}), {len(loaded.rules)} rules"
    )


def _message(
    number: str, text: str, category: str, sender: str | None, tags: tuple[str, ...]
) -> Message:
    return Message(to=number, text=text, category=category, sender=sender, tags=tags)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("number")
@click.option(
    "--text", default="Hello", show_default=True, help="The text (sets encoding and segments)."
)
@click.option("--category", default="transactional", show_default=True)
@click.option("--sender", default=None, help="Sender ID or number, for rules that match on it.")
@click.option("--tag", "tags", multiple=True, help="A message tag (repeatable).")
@click.option("--env-placeholders", is_flag=True, help="Stand in for unset ${VARS}.")
def explain(
    config: str,
    number: str,
    text: str,
    category: str,
    sender: str | None,
    tags: tuple[str, ...],
    env_placeholders: bool,
) -> None:
    """Show which rule matches NUMBER and in what order providers would be tried.

    \b
    Example:
      smsroute explain config/routing.yaml +4915123456789 --category otp --env-placeholders
    Nothing is sent; no network is used.
    """
    from smsroute.router import Router

    environ = _Placeholders(os.environ) if env_placeholders else None
    try:
        router = Router(load_config(config, environ=environ), metrics=False)
        plan = router.explain(_message(number, text, category, sender, tags))
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
    except (InvalidNumber, InvalidMessage) as exc:
        _console(stderr=True).print(f"error: {exc}")
        sys.exit(2)
    out = _console()
    out.print(f"number   {plan.to}  ({plan.country}, {plan.number_type.value})")
    out.print(f"text     {plan.segments} segment(s), {plan.encoding}")
    out.print(f"rule     {plan.rule}  (strategy: {plan.strategy})")
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


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
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
    Exit status: 0 accepted, 1 failed, 2 bad number or text.
    """
    from smsroute.router import Router

    loaded = _load(config)

    async def run() -> Any:
        async with Router(loaded, metrics=False) as router:
            return await router.send(_message(number, text, category, sender, ()))

    try:
        result = asyncio.run(run())
    except (InvalidNumber, InvalidMessage) as exc:
        _console(stderr=True).print(f"error: {exc}")
        sys.exit(2)
    out = _console()
    for i, a in enumerate(result.attempts, 1):
        code = f" {a.error_code}" if a.error_code else ""
        status = f" HTTP {a.status_code}" if a.status_code else ""
        out.print(
            f"attempt {i}: {a.provider:<16} {a.outcome.value:<10} {a.latency * 1000:7.1f} ms"
            f"{status}{code}{'  ' + a.detail if a.detail else ''}"
        )
    if result.ok:
        cost = f", cost {result.cost:.4f} {result.currency}" if result.cost is not None else ""
        out.print(
            f"accepted by {result.provider} as {result.provider_message_id} "
            f"(message {result.message_id}, {result.segments} segment(s){cost})"
        )
        return
    out.print(f"failed: {result.reason}")
    sys.exit(1)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def serve(config: str, host: str, port: int) -> None:
    """Serve webhooks, /metrics and /healthz for CONFIG in one aiohttp server.

    \b
    Example:
      smsroute serve config/routing.yaml --host 0.0.0.0 --port 8080
    Webhooks are served under the path of defaults.webhook_url (e.g. /sms/twilio/status).
    SIGTERM or Ctrl-C shuts down gracefully.
    """
    from aiohttp import web

    from smsroute.server import make_server_app

    loaded = _load(config)
    try:
        web.run_app(
            make_server_app(loaded),
            host=host,
            port=port,
            access_log=None,
            print=lambda *_: click.echo(f"smsroute serving on http://{host}:{port}"),
        )
    except SmsrouteError as exc:  # Redis (or its package) missing at start: what to do
        _console(stderr=True).print(f"error: {exc}", markup=False)
        sys.exit(1)
    except OSError as exc:  # the address: in use, not ours, not allowed
        _console(stderr=True).print(f"error: {_listen_error(host, port, exc)}", markup=False)
        sys.exit(1)


def _listen_error(host: str, port: int, exc: OSError) -> str:
    """One line on why ``smsroute serve`` cannot listen on host:port, and what to do."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use (another process, "
            "or another smsroute serve, listens there): stop it or choose another --port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            "privileges): choose another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no interface of this host has that address: fix --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Messages sent at once (default: the config's outbox.concurrency).",
)
@click.option("--log-level", default="INFO", show_default=True)
def worker(config: str, concurrency: int | None, log_level: str) -> None:
    """Send the messages queued in CONFIG's outbox until SIGTERM.

    \b
    Example:
      smsroute worker config/routing.yaml --concurrency 32
    Producers call router.enqueue(); any number of workers drain the queue.
    The first SIGTERM stops gracefully (sends under way finish, the rest is
    returned to the queue); a second cancels the sends under way.
    """
    from smsroute.outbox.__main__ import main as worker_main

    args = [config, "--log-level", log_level]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    sys.exit(worker_main(args))


@main.command()
@click.option("--duration", default=30.0, show_default=True, help="Seconds of traffic.")
@click.option("--rate", default=40.0, show_default=True, help="Messages per second.")
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="A config in the shape of the shipped config/demo.yaml.",
)
@click.option("--seed", default=None, type=int, help="Random seed, for a repeatable run.")
def demo(duration: float, rate: float, config_path: str | None, seed: int | None) -> None:
    """Watch smsroute route live traffic through three fake providers.

    \b
    Example:
      smsroute demo                  # 30 seconds, 40 messages/s
      smsroute demo --duration 10
    No credentials, network or servers needed: the providers are fakes on
    127.0.0.1 speaking each provider's real wire format.  Part way through,
    Twilio goes down for Germany and comes back, and Vonage throttles.
    /metrics is served while it runs (the URL is shown).
    """
    import logging

    from smsroute.demo import run_demo

    # The live view shows breakers and failovers; the log lines would only garble it.
    logging.getLogger("smsroute").setLevel(logging.ERROR)

    try:
        console = _console()
        if not console.is_terminal:
            console.width = max(console.width, 120)  # the summary is read from logs and pipes
        asyncio.run(
            run_demo(
                duration=duration, rate=rate, config_path=config_path, console=console, seed=seed
            )
        )
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
