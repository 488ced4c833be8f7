"""Every code block written in the docs' pages runs as written, or says why it cannot.

README.md's commands are run by tests/test_readme.py and the files the pages include
from docs/snippets by tests/test_docs_snippets.py.  This file runs the rest: the
fenced blocks of ``docs/*.md``, ``docs/how-to/**/*.md`` and ``docs/reference/*.md``,
one test per block, with ids ``page:line`` (the line of the opening fence).

- ``yaml``: a block whose top-level keys are all smsroute config sections (the
  schema's ``properties``) is validated with :func:`smsroute.parse_config`.  A fragment
  (a ``categories:`` or ``state:`` section, one provider) is completed by
  :func:`complete`: each provider its rules name but it does not declare becomes a
  ``twilio`` provider on placeholder credentials, and a config without ``rules`` gets
  one catch-all rule over all its providers.  Nothing else is added: what the block
  writes is validated as written.  ``${VAR}`` placeholders take the values of
  :data:`ENVIRON` (a new one must be added there, with a value of its shape).  A block
  whose first key is not an smsroute section (Prometheus's ``global``, ...) is not an
  smsroute config and is skipped; one mixing both fails.  An include
  (``--8<-- "file"``) is resolved as mkdocs does (docs/snippets, then the repository).
- ``python``: each block is run after the page's earlier python blocks, in one
  namespace, as a reader who pastes the page's blocks in order has them.  The
  namespace starts with the prelude of :func:`python_namespace`: ``config``, the page's
  last smsroute ``yaml`` block above the block, completed as above, its providers on a
  :class:`~smsroute.testing.FakeTwilio` (``outbox.path`` moved to the test's folder);
  ``router``, a started :class:`~smsroute.Router` on it; ``app``, an aiohttp
  application; ``fake``, the FakeTwilio; nothing imported (a block that uses a name
  it does not import or define, nor an earlier block of its page, fails); and the working folder is a temporary one holding a copy of
  ``config/`` with the ``TWILIO_*`` variables pointing at the fake, so that
  ``Router.from_yaml("config/routing.yaml")`` sends to it.  Blocks are compiled with
  top-level ``await`` allowed (what an ``async def`` wrapper gives, names kept in the
  namespace) and awaited on the test's loop; blocks without ``await`` run in a thread
  without an event loop, as a script or a WSGI worker would (``SyncRouter`` refuses to
  block a running loop).  What a block takes from its surroundings (the number a
  service sends to, the user's Flask app) is in :data:`CONTEXT`; what is checked
  after it, in :data:`CHECKS`; a placeholder swapped for a test value, in
  :data:`SUBSTITUTIONS`.
- ``console``/``bash``/``sh``: each line runs in bash through tests/test_readme.py's
  :class:`Shell`, with the handler of :data:`COMMANDS` that matches it; a line no
  handler or skip matches fails the test.  ``smsroute`` and ``python -m smsroute...``
  commands that need no account or server run here (``.venv/bin/`` is this run's
  virtualenv); installs, ``curl`` to the tutorial's service and ``promtool`` are
  skipped with their reason.

Other blocks (``text``, ``json``, ``nginx``, ``toml``, unlabelled diagrams) are output
or foreign files, not run.  :data:`SKIPS` lists the blocks deliberately not run, each
with its reason; an entry that no longer matches exactly one block fails.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from aiohttp import web
from conftest import ROOT
from prometheus_client import CollectorRegistry
from test_readme import Shell, expect, free_port, run_worker

import smsroute
from smsroute import Router, SyncRouter, parse_config
from smsroute.testing import FakeTwilio

DOCS = ROOT / "docs"
PAGES = sorted({*DOCS.glob("*.md"), *DOCS.glob("how-to/**/*.md"), *DOCS.glob("reference/*.md")})
SNIPPETS = DOCS / "snippets"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)
INCLUDE = re.compile(r'^--8<-- "(?P<file>[^"]+)"\s*$')
RUN_LANGS = {
    "yaml": "yaml",
    "python": "python",
    "console": "console",
    "bash": "console",
    "sh": "console",
}

#: The top-level sections of an smsroute config (config/schema.json's properties).
SECTIONS = set(json.loads((ROOT / "config" / "schema.json").read_text())["properties"])


@attrs.frozen
class Block:
    page: str  # relative to docs/
    line: int  # of the opening fence
    lang: str  # yaml, python or console
    code: str  # dedented; includes resolved
    include: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def resolve_include(name: str) -> Path:
    for base in (SNIPPETS, ROOT):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"--8<-- {name!r}: in neither docs/snippets nor the repository")


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    page = path.relative_to(DOCS).as_posix()
    out = []
    for fence in FENCE.finditer(text):
        lang = RUN_LANGS.get(fence["lang"])
        if lang is None:
            continue
        line = text.count("\n", 0, fence.start("lang")) + 1
        code = textwrap.dedent(fence["body"])
        include = INCLUDE.match(code.strip())
        if include:
            code = resolve_include(include["file"]).read_text()
        out.append(Block(page, line, lang, code, include["file"] if include else None))
    return out


BLOCKS = [block for page in PAGES for block in blocks_of(page)]
BY_ID = {block.id: block for block in BLOCKS}


def find(page: str, marker: str) -> Block:
    """The one block of ``page`` whose code holds ``marker``."""
    found = [b for b in BLOCKS if b.page == page and marker in b.code]
    assert len(found) == 1, f"{page}: {len(found)} blocks hold {marker!r}"
    return found[0]


# -- what is not run, and why ------------------------------------------------------------

#: (page, a string only that block holds) -> why it is not run.
SKIPS: dict[tuple[str, str], str] = {
    ("how-to/testing.md", "async def test_"): "included from docs/snippets/testing: "
    "run with pytest by tests/test_docs_snippets.py",
    ("tutorial.md", "def make_app"): "included from docs/snippets/tutorial: "
    "served and sent through by tests/test_docs_snippets.py",
    ("how-to/sync.md", "# settings.py"): "an excerpt of three files of a Django project "
    "(settings.py, urls.py, a view), not one script; examples/django_service is the whole "
    "project, run by tests/test_sync_examples.py",
}

#: Console lines not run: (pattern of the line) -> why.
COMMAND_SKIPS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"mkdir my-service && cd my-service"),
        "the reader's own folder: the test works in a temporary one",
    ),
    (
        re.compile(r"python3 -m venv \.venv|(\.venv/bin/)?pip install .*"),
        "an install: "
        "tests/test_readme.py installs smsroute into a new virtualenv for real; the extras' "
        "packages are this run's own",
    ),
    (
        re.compile(r"curl .*"),
        "needs the tutorial's service.py listening on port 8080 with both fakes: "
        "tests/test_docs_snippets.py drives the same application (a send, a bad number, "
        "a failover, /metrics)",
    ),
    (
        re.compile(r"SMSROUTE_CONFIG=routing\.yaml \.venv/bin/python service\.py"),
        "serves on the fixed port 8080 until stopped: tests/test_docs_snippets.py serves "
        "service.py's application on a free port",
    ),
    (re.compile(r"for i in .*curl .*"), "needs the tutorial's service (see curl)"),
    (
        re.compile(r"promtool .*"),
        "not smsroute: tests/test_prometheus_integration.py runs promtool on these files",
    ),
]


def skip_reason(block: Block) -> str | None:
    for (page, marker), reason in SKIPS.items():
        if block.page == page and marker in block.code:
            return reason
    return None


def test_every_skip_entry_names_one_block() -> None:
    for page, marker in [*SKIPS, *CONTEXT, *CHECKS, *SUBSTITUTIONS]:
        find(page, marker)


def test_the_pages_have_blocks_of_each_kind() -> None:
    kinds = {lang: sum(b.lang == lang for b in BLOCKS) for lang in ("yaml", "python", "console")}
    assert kinds["yaml"] >= 20, kinds
    assert kinds["python"] >= 15, kinds
    assert kinds["console"] >= 10, kinds


# -- yaml --------------------------------------------------------------------------------

#: The value of every ``${VAR}`` a page's config names, in the shape it must have.
ENVIRON = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "0" * 32,
    "TWILIO_BASE_URL": "http://127.0.0.1:8081",
    "VONAGE_API_KEY": "abcd1234",
    "VONAGE_API_SECRET": "0" * 16,
    "VONAGE_BASE_URL": "http://127.0.0.1:8082",
    "PLIVO_AUTH_ID": "MA" + "A" * 18,
    "PLIVO_AUTH_TOKEN": "0" * 40,
    "TELNYX_API_KEY": "KEY" + "0" * 40,
    "TELNYX_PUBLIC_KEY": "A" * 43 + "=",  # base64 of 32 bytes
    "INFOBIP_API_KEY": "0" * 32,
    "SINCH_SERVICE_PLAN_ID": "0" * 32,
    "SINCH_API_TOKEN": "0" * 32,
    "BANDWIDTH_USERNAME": "api-user",
    "BANDWIDTH_PASSWORD": "api-password",
    "BANDWIDTH_CALLBACK_PASSWORD": "callback-password",
    "MESSAGEBIRD_ACCESS_KEY": "live_" + "0" * 20,
    "MESSAGEBIRD_SIGNING_KEY": "0" * 32,
    "SMPP_PASSWORD": "secret",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "SMSROUTE_HASH_KEY": "k" * 32,
}
#: The placeholder twilio account of :func:`complete`'s providers.
SCAFFOLD_PROVIDER = """\
  {name}:
    type: twilio
    base_url: ${{SCAFFOLD_BASE_URL}}
    account_sid: ${{SCAFFOLD_ACCOUNT_SID}}
    auth_token: ${{SCAFFOLD_AUTH_TOKEN}}
    from: "+15005550006"
"""
SCAFFOLD_ENVIRON = {
    "SCAFFOLD_BASE_URL": "http://127.0.0.1:8081",
    "SCAFFOLD_ACCOUNT_SID": "AC" + "0" * 32,
    "SCAFFOLD_AUTH_TOKEN": "0" * 32,
}


def sections(code: str) -> dict[str, Any]:
    loaded = yaml.safe_load(code)
    return loaded if isinstance(loaded, dict) else {}


def is_smsroute_config(code: str) -> bool:
    keys = list(sections(code))
    ours = [k for k in keys if k in SECTIONS]
    assert not ours or ours == keys, f"a block mixing smsroute sections and others: {keys}"
    return bool(ours)


def named_providers(config: dict[str, Any]) -> list[str]:
    """Providers the rules name (in order, once each)."""
    names: list[str] = []
    for rule in config.get("rules") or []:
        names += rule.get("providers") or []
        names += list(rule.get("weights") or {})
    return list(dict.fromkeys(names))


def complete(code: str) -> str:
    """A config fragment made whole: the providers its rules name, a catch-all rule.

    The fragment's own text comes first, unchanged, so a problem's line is the block's
    line; the scaffold follows.
    """
    config = sections(code)
    added = ""
    providers = list(config.get("providers") or {})
    if "providers" not in config:
        providers = named_providers(config) or ["twilio"]
        added += "providers:\n" + "".join(SCAFFOLD_PROVIDER.format(name=n) for n in providers)
    if "rules" not in config:
        added += f"rules:\n  - name: default\n    providers: [{', '.join(providers)}]\n"
    return code.rstrip("\n") + "\n" + added


YAML_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.id for b in YAML_BLOCKS])
def test_yaml_block(block: Block) -> None:
    if not is_smsroute_config(block.code):
        pytest.skip(
            f"not an smsroute config: its first key is {next(iter(sections(block.code)))!r}"
        )
    file = block.include or f"docs/{block.page} (block at line {block.line})"
    config = parse_config(
        complete(block.code), file=file, environ={**ENVIRON, **SCAFFOLD_ENVIRON}, warnings=[]
    )
    assert config.providers


# -- python ------------------------------------------------------------------------------

#: What a block takes from the service around it: (page, marker) -> code run just before.
CONTEXT: dict[tuple[str, str], str] = {
    ("how-to/guards.md", "ANOMALY_OVERRIDE"): 'number, text = "+4915123456789", "Code 123456"',
    ("how-to/outbox.md", "shutdown.wait()"): (
        "import asyncio\n"
        "shutdown = asyncio.Event()  # the service's stop signal: given 0.2 s after start\n"
        "asyncio.get_running_loop().call_later(0.2, shutdown.set)"
    ),
    ("how-to/sync.md", "webhook_blueprint"): "import flask\napp = flask.Flask(__name__)",
    ("how-to/sync.md", "@app.task"): (
        "import os\n"
        "import celery  # the module's imports and Celery app (examples/celery_tasks.py)\n"
        "app = celery.Celery('tasks')\n"
        "os.environ['SMSROUTE_CONFIG'] = 'config/routing.yaml'"
    ),
}

#: What must hold after a block: (page, marker) -> code run just after.
CHECKS: dict[tuple[str, str], str] = {
    ("index.md", "Router.from_yaml"): "assert result.status == 'accepted', result",
    ("how-to/sync.md", "print(result.ok"): "assert result.ok, result",
    ("how-to/sync.md", "webhook_blueprint"): (
        "answer = app.test_client().post('/sms/twilio-main/status', data={'MessageSid': 'x'})\n"
        "assert answer.status_code == 403, answer  # unsigned: refused\n"
        "router.close()"
    ),
    ("how-to/sync.md", "@app.task"): (
        "assert send_sms('+4915123456789', 'Code 123456') == 'accepted'\nrouter.close()"
    ),
    ("how-to/compliance.md", "import_csv"): (
        "assert added == 2\n"
        "assert '+14155550100' in router.optouts and router.is_opted_out('+16285550100')\n"
        "assert '+16285550100' in Path('optouts.csv').read_text()"
    ),
    ("how-to/outbox.md", "idempotency_key="): "assert state is not None",
    ("how-to/guards.md", "ANOMALY_OVERRIDE"): "assert result.status == 'accepted', result",
    ("how-to/grafana-alerts.md", "web.AppRunner(router"): (
        "import aiohttp\n"
        "port = runner.addresses[0][1]\n"
        "async with aiohttp.ClientSession() as http:\n"
        "    async with http.get(f'http://127.0.0.1:{port}/metrics') as r:\n"
        "        assert 'smsroute_info' in await r.text()\n"
        "await runner.cleanup()"
    ),
}

#: (page, marker) -> (as written, as run): a fixed port the test cannot take.
SUBSTITUTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("how-to/grafana-alerts.md", "web.AppRunner(router"): ('"0.0.0.0", 9464', '"127.0.0.1", 0'),
}


def entry(table: dict[tuple[str, str], Any], block: Block) -> Any:
    for (page, marker), value in table.items():
        if block.page == page and marker in block.code:
            return value
    return None


def page_config(block: Block) -> str | None:
    """The page's last smsroute config block above ``block``."""
    above = [
        b
        for b in YAML_BLOCKS
        if b.page == block.page and b.line < block.line and is_smsroute_config(b.code)
    ]
    return above[-1].code if above else None


def runnable_config(code: str | None, fake: FakeTwilio, folder: Path) -> smsroute.Config:
    """``code`` completed, its scaffold providers on ``fake``, its outbox in ``folder``."""
    loaded = sections(complete(code or ""))
    if "outbox" in loaded and "path" in (loaded["outbox"] or {}):
        loaded["outbox"]["path"] = str(folder / "outbox.db")
    environ = {
        **ENVIRON,
        "SCAFFOLD_BASE_URL": fake.url,
        "SCAFFOLD_ACCOUNT_SID": fake.account_sid,
        "SCAFFOLD_AUTH_TOKEN": fake.auth_token,
    }
    return parse_config(yaml.safe_dump(loaded), file=str(folder / "routing.yaml"), environ=environ)


def run_in_thread_without_loop(code: Any, namespace: dict[str, Any]) -> None:
    exec(code, namespace)


async def run_python(
    source: str, block: Block, namespace: dict[str, Any], *, loop_only: bool = False
) -> None:
    """Run ``source`` as the code of ``block`` (tracebacks name the page and its line).

    Without ``await`` it runs in a thread, with no event loop, unless ``loop_only`` (the
    context :data:`CONTEXT` gives, which may need the test's loop)."""
    padded = "\n" * block.line + source  # the block's first line is the fence's next
    code = compile(padded, str(DOCS / block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)
    elif loop_only:
        exec(code, namespace)
    else:
        await asyncio.to_thread(run_in_thread_without_loop, code, namespace)


@contextlib.asynccontextmanager
async def python_namespace(
    block: Block, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Any]]:
    """The prelude of a page's python blocks (see the module's docstring)."""
    shutil.copytree(ROOT / "config", folder / "config")
    if block.page == "how-to/compliance.md":  # the CSV the page shows, as suppressed.csv
        page = (DOCS / block.page).read_text()
        shown = [textwrap.dedent(f["body"]) for f in FENCE.finditer(page) if f["lang"] == "text"]
        (folder / "suppressed.csv").write_text(next(t for t in shown if t.startswith("number,")))
    monkeypatch.chdir(folder)
    async with FakeTwilio() as fake:
        for name, value in {
            "TWILIO_BASE_URL": fake.url,
            "TWILIO_ACCOUNT_SID": fake.account_sid,
            "TWILIO_AUTH_TOKEN": fake.auth_token,
            "TWILIO_BACKUP_ACCOUNT_SID": fake.account_sid,
            "TWILIO_BACKUP_AUTH_TOKEN": fake.auth_token,
            "TWILIO_BACKUP_MESSAGING_SERVICE_SID": "MG" + "0" * 32,
        }.items():
            monkeypatch.setenv(name, value)
        config = runnable_config(page_config(block), fake, folder)
        router = Router(config, registry=CollectorRegistry())
        namespace: dict[str, Any] = {
            "__name__": "__docs__",
            "config": config,
            "router": router,
            "app": web.Application(),
            "fake": fake,
        }
        try:
            async with router:
                yield namespace
        finally:
            for value in namespace.values():
                if isinstance(value, SyncRouter):
                    await asyncio.to_thread(value.close)
                elif isinstance(value, Router) and value is not router:
                    await value.aclose()


PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
async def test_python_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    earlier = [
        b
        for b in PYTHON_BLOCKS
        if b.page == block.page and b.line < block.line and not skip_reason(b)
    ]
    async with python_namespace(block, tmp_path, monkeypatch) as namespace:
        for each in [*earlier, block]:
            source = each.code
            if entry(SUBSTITUTIONS, each):
                written, run = entry(SUBSTITUTIONS, each)
                assert written in source
                source = source.replace(written, run)
            for before in filter(None, [entry(CONTEXT, each)]):
                await run_python(before, each, namespace, loop_only=True)
            async with asyncio.timeout(30):
                await run_python(source, each, namespace)
            if each is block and entry(CHECKS, each):
                await run_python(entry(CHECKS, each), each, namespace)


# -- console -----------------------------------------------------------------------------

BIN = Path(sys.executable).parent


@attrs.define
class Console:
    """The reader's terminal for one page: its folder and what it exported."""

    shell: Shell
    page: str


def run_smsroute(console: Console, command: str) -> str:
    return expect(console.shell.run(command.replace(".venv/bin/", f"{BIN}/")))


def version(console: Console, command: str) -> None:
    assert run_smsroute(console, command).split()[-1] == smsroute.__version__


def check(console: Console, command: str) -> None:
    assert ": ok: " in run_smsroute(console, command)


def explain(console: Console, command: str) -> None:
    assert "tried first" in run_smsroute(console, command)


def export(console: Console, command: str) -> None:
    expect(console.shell.run(command))  # valid bash as written; the values are the page's
    for assignment in command.split()[1:]:
        name = assignment.partition("=")[0]
        assert name in ENVIRON, f"no value for {name}: add it to ENVIRON"


def fake_provider(console: Console, command: str) -> None:
    """``python -m smsroute.testing PROVIDER --port N``: one JSON line, on a free port, of
    the keys the page's example line shows for that port; Ctrl-C (SIGINT) stops it."""
    port = free_port()
    written = re.search(r"--port (\d+)", command)
    assert written is not None
    proc = console.shell.start(
        command.replace(written.group(0), f"--port {port}").replace(".venv/bin/", f"{BIN}/")
    )
    assert proc.stdout is not None
    try:
        printed = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert printed["url"] == f"http://127.0.0.1:{port}", printed
    page = (DOCS / console.page).read_text()
    for shown in FENCE.finditer(page):
        if shown["lang"] == "json" and f'"http://127.0.0.1:{written.group(1)}"' in shown["body"]:
            assert set(json.loads(shown["body"])) == set(printed), shown["body"]


def worker(console: Console, command: str) -> None:
    run_worker(console.shell, command.replace("smsroute ", f"{BIN}/smsroute ", 1))


COMMANDS: list[tuple[re.Pattern[str], Callable[[Console, str], None]]] = [
    (re.compile(r"(\.venv/bin/)?smsroute --version"), version),
    (re.compile(r"(\.venv/bin/)?smsroute check \S+"), check),
    (re.compile(r"(\.venv/bin/)?smsroute explain \S+ .+"), explain),
    (re.compile(r"export( [A-Z_]+=\S+)+"), export),
    (re.compile(r"(\.venv/bin/)?python -m smsroute\.testing \w+ --port \d+"), fake_provider),
    (re.compile(r"smsroute worker \S+( --concurrency \d+)?"), worker),
]


def console_lines(block: Block) -> list[str]:
    comment = re.compile(r"\s{2,}#\s.*$")
    return [c for c in (comment.sub("", line).strip() for line in block.code.splitlines()) if c]


CONSOLE_BLOCKS = [b for b in BLOCKS if b.lang == "console"]


@pytest.fixture
def console_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VONAGE_"))}
    return (
        env
        | ENVIRON
        | {
            "TWILIO_BACKUP_ACCOUNT_SID": ENVIRON["TWILIO_ACCOUNT_SID"],
            "TWILIO_BACKUP_AUTH_TOKEN": ENVIRON["TWILIO_AUTH_TOKEN"],
            "TWILIO_BACKUP_MESSAGING_SERVICE_SID": "MG" + "0" * 32,
        }
    )


@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=[b.id for b in CONSOLE_BLOCKS])
def test_console_block(block: Block, tmp_path: Path, console_env: dict[str, str]) -> None:
    # The folder the page's commands run in: the tutorial's (routing.yaml, service.py),
    # else a copy of the repository's config/ (the paths the pages name).
    if block.page == "tutorial.md":
        shutil.copytree(SNIPPETS / "tutorial", tmp_path, dirs_exist_ok=True)
    else:
        shutil.copytree(ROOT / "config", tmp_path / "config")
    console = Console(Shell(cwd=tmp_path, env=console_env, fake={}), block.page)
    ran, skipped = [], []
    for command in console_lines(block):
        handler = next((h for p, h in COMMANDS if p.fullmatch(command)), None)
        reason = next((r for p, r in COMMAND_SKIPS if p.fullmatch(command)), None)
        assert handler or reason, f"no way to run {command!r}: add a handler or a skip"
        if handler:
            handler(console, command)
            ran.append(command)
        else:
            skipped.append(f"{command}: {reason}")
    if not ran:
        pytest.skip("; ".join(skipped))
