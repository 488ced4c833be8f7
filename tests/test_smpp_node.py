"""The independent proof: the smpp adapter against an SMSC built on the npm package
``smpp`` (node), a codebase that shares nothing with aiosmpplib.

The package is installed once with npm into ``~/.cache/smsroute-npm-smpp``.  When
node or npm cannot be had, the tests are skipped with that reason (say so in CI logs).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smsroute import InboundMessage, Message, Outcome, Router, parse_config

pytestmark = pytest.mark.timeout(60)
HERE = Path(__file__).parent / "smpp_node"
CACHE = Path.home() / ".cache" / "smsroute-npm-smpp"
SMPP_VERSION = "0.5.1"


@pytest.fixture(scope="module")
def node_smpp() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("NO INDEPENDENT SMPP PROOF: node/npm not installed")
    if not (CACHE / "node_modules" / "smpp" / "package.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", f"smpp@{SMPP_VERSION}"],
            cwd=CACHE,
            capture_output=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(
                f"NO INDEPENDENT SMPP PROOF: npm install smpp failed: {done.stderr[-300:]!r}"
            )
    shutil.copy(HERE / "smsc.js", CACHE / "smsc.js")
    return CACHE / "smsc.js"


class NodeSMSC:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self.submits: list[dict[str, Any]] = []
        self.bound = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            if "submit" in event:
                self.submits.append(event["submit"])
            elif "bound" in event:
                self.bound += 1

    async def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()


@pytest.fixture
async def node(node_smpp: Path) -> AsyncIterator[NodeSMSC]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(node_smpp),
        "esme",
        "pw",
        cwd=node_smpp.parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    smsc = NodeSMSC(proc, int(first["port"]))
    try:
        yield smsc
    finally:
        smsc.reader.cancel()
        proc.kill()
        await proc.wait()


def config(port: int, **extra: Any) -> Any:
    lines = "".join(f"            {k}: {v}\n" for k, v in extra.items())
    return parse_config(
        textwrap.dedent(f"""
        providers:
          smsc:
            type: smpp
            host: 127.0.0.1
            port: {port}
            system_id: esme
            password: pw
            from: ACME
            timeout: 2s
        """)
        + lines
        + textwrap.dedent("""
        rules:
          - name: all
            providers: [smsc]
        """)
    )


async def until(check: Any, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - state moved by another peer's socket
            await asyncio.sleep(0.02)


async def test_send_and_receipt_with_hex_answer_and_decimal_receipt(node: NodeSMSC) -> None:
    async with Router(config(node.port), metrics=False) as router:
        reports = []
        router.on_delivery_report(reports.append)
        result = await router.send(Message(to="+4915123456789", text="Code 123456", category="otp"))
        assert result.ok, result.attempts
        await until(lambda: bool(reports))
        state = await router.status(result.message_id)
    submit = node.submits[0]
    assert (submit["to"], submit["from"], submit["text"], submit["source_ton"]) == (
        "4915123456789",
        "ACME",
        "Code 123456",
        5,
    )
    assert result.attempts[0].provider_message_id == submit["id"].lower()
    assert state is not None
    assert state.status == "delivered"


async def test_concatenated_send_reassembles_on_the_other_side(node: NodeSMSC) -> None:
    text = "part " * 70  # 350 GSM-7 characters: 3 segments
    async with Router(config(node.port), metrics=False) as router:
        delivered = asyncio.Event()
        router.on_delivery_report(lambda r: delivered.set() if r.status == "delivered" else None)
        result = await router.send(Message(to="+4915123456789", text=text, category="otp"))
        await asyncio.wait_for(delivered.wait(), 10)  # once every part's receipt is in
        state = await router.status(result.message_id)
    assert result.ok
    assert result.segments == 3
    parts = node.submits
    assert len(parts) == 3
    ref = parts[0]["udh"][0][2]  # node reads each UDH element as [IEI, length, ref, total, seq]
    assert [p["udh"][0] for p in parts] == [[0, 3, ref, 3, n] for n in (1, 2, 3)]
    assert "".join(p["text"] for p in parts) == text
    assert state is not None
    assert state.status == "delivered"


async def test_refusals_map_to_outcomes(node: NodeSMSC) -> None:
    async with Router(config(node.port), metrics=False) as router:
        rejected = await router.send(Message(to="+4915123456999", text="x", category="otp"))
        throttled = await router.send(Message(to="+4915123456888", text="x", category="otp"))
    assert rejected.attempts[0].outcome is Outcome.REJECTED
    assert throttled.attempts[0].outcome is Outcome.THROTTLED


async def test_bad_credentials_are_auth(node: NodeSMSC) -> None:
    bad = parse_config(
        textwrap.dedent(f"""
        providers:
          smsc:
            type: smpp
            host: 127.0.0.1
            port: {node.port}
            system_id: esme
            password: wrong
            from: ACME
            reconnect_delay: 5s
        rules:
          - name: all
            providers: [smsc]
        """)
    )
    async with Router(bad, metrics=False) as router:
        result = await router.send(Message(to="+4915123456789", text="x", category="otp"))
    assert result.attempts[0].outcome is Outcome.AUTH


async def test_inbound_single_and_concatenated(node: NodeSMSC) -> None:
    async with Router(config(node.port), metrics=False) as router:
        got: list[InboundMessage] = []
        router.on_inbound(got.append)
        await until(lambda: node.bound == 1)
        await node.command(inbound=["4915123456789", "STOP"])
        await node.command(inbound_parts=["4915123456789", ["Hello ", "from ", "node"], 42])
        await until(lambda: len(got) == 2)
    assert (got[0].sender, got[0].text, got[0].keyword) == ("+4915123456789", "STOP", "STOP")
    assert got[1].text == "Hello from node"
