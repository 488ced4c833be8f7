"""Helpers of the Redis tests: a Redis to talk to, a key prefix per test, throwaway servers.

The tests use the Redis on 127.0.0.1:6379 (``SMSROUTE_TEST_REDIS`` overrides the
URL).  When nothing answers there, a ``redis-server`` is started for the session
(installed with apt-get when the binary is missing).  Each test gets its own
``key_prefix`` and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server binary, installed from the distribution if missing."""
    found = shutil.which("redis-server")
    if found is None:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("redis-server")
    assert found is not None, "redis-server is needed by the Redis tests"
    return found


class RedisServer:
    """A throwaway ``redis-server`` on its own port, nothing persisted.

    >>> server = RedisServer(); server.start(); ...; server.kill(); server.start()
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
            time.sleep(0.02)  # polling for the server to listen, not for a state change
        client.close()

    def kill(self) -> None:
        """SIGKILL: connections drop at once, as when a host dies."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("SMSROUTE_TEST_REDIS", DEFAULT_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        if "SMSROUTE_TEST_REDIS" in os.environ:
            raise
        server = RedisServer()
        server.start()
        yield server.url
        server.kill()
        return
    yield url


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
    yield name
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def throwaway_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


async def until(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0, what: str = ""
) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took.  Fails after ``within``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return loop.time() - start
        if loop.time() - start > within:
            pytest.fail(f"not within {within}s: {what or condition}")
        await asyncio.sleep(0.005)


def state_block(url: str, prefix: str, **extra: object) -> str:
    """The YAML ``state:`` section for a test."""
    lines = ["state:", "  backend: redis", f"  url: {url}", f'  key_prefix: "{prefix}"']
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


class PausableProxy:
    """A TCP proxy on 127.0.0.1 in front of Redis; :meth:`pause` makes that Redis hang.

    While paused, connections stay open and requests are read but not passed
    on: every call waits for an answer that does not come.
    """

    def __init__(self, target_url: str) -> None:
        parts = urllib.parse.urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers += [writer, up_writer]
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[PausableProxy]:
    p = PausableProxy(redis_url)
    await p.start()
    yield p
    p.resume()
    await p.close()
