"""The lean Redis client (budgets.resp) against a scripted RESP server.

The ledger contract tests run it against real Redis; these cover what a healthy server
never shows: a reply that never comes, errors, a script Redis has forgotten.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgets.resp import LeanRedis


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    header = await reader.readline()
    assert header.startswith(b"*")
    parts = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


class FakeRedis:
    """Answers PING with PONG, GET with the key's name, BLACKHOLE never (nor anything after it), EVALSHA with
    NOSCRIPT and EVAL with its last argument; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.commands: list[list[bytes]] = []

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                command = await read_command(reader)
                self.commands.append(command)
                name = command[0].upper()
                if name == b"PING":
                    writer.write(b"+PONG\r\n")
                elif name == b"GET":
                    writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
                elif name == b"EVALSHA":
                    writer.write(b"-NOSCRIPT No matching script.\r\n")
                elif name == b"EVAL":
                    writer.write(b":%d\r\n" % int(command[-1]))
                elif name == b"BLACKHOLE":
                    await asyncio.sleep(3600)  # a stalled server: nothing after it either
                else:
                    writer.write(b"-ERR unknown command\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def run(coro: Any) -> Any:
    def in_own_loop() -> Any:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)

    # A thread of its own: the browser tests' Playwright keeps a loop running in the main
    # thread for the whole session.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(in_own_loop).result()


def test_pipelined_commands_get_their_own_replies_in_order() -> None:
    async def main() -> None:
        async with FakeRedis() as server:
            client = LeanRedis(server.url)
            replies = await asyncio.gather(*(client.get(f"key-{i}") for i in range(50)))
            assert replies == [f"key-{i}".encode() for i in range(50)]
            assert await client.execute_many([("PING",), ("GET", "a")]) == ["PONG", b"a"]
            assert server.connections == 1
            await client.aclose()

    run(main())


def test_a_reply_that_never_comes_times_out_and_the_next_command_reconnects() -> None:
    async def main() -> None:
        async with FakeRedis() as server:
            client = LeanRedis(server.url, timeout=0.2)
            assert await client.ping() == "PONG"
            stuck = asyncio.ensure_future(client.execute("BLACKHOLE"))
            behind = asyncio.ensure_future(client.get("behind"))
            with pytest.raises(RedisTimeoutError):
                await stuck
            # The reply meant for "behind" could now be anyone's: it fails, never misroutes.
            with pytest.raises(RedisConnectionError):
                await behind
            assert await client.get("fresh") == b"fresh"
            assert server.connections == 2
            await client.aclose()

    run(main())


def test_a_quiet_connection_keeps_answering_long_after_the_timeout() -> None:
    async def main() -> None:
        async with FakeRedis() as server:
            client = LeanRedis(server.url, timeout=0.1)
            for _ in range(3):
                assert await client.ping() == "PONG"
                await asyncio.sleep(0.25)  # the watchdog fires with nothing pending
            assert server.connections == 1
            await client.aclose()

    run(main())


def test_errors_and_a_forgotten_script() -> None:
    async def main() -> None:
        async with FakeRedis() as server:
            client = LeanRedis(server.url)
            with pytest.raises(ResponseError, match="unknown command"):
                await client.execute("NOPE")
            script = client.register_script("return ARGV[1]")
            assert await script(keys=["k"], args=[42]) == 42
            names = [c[0] for c in server.commands]
            assert names[-2:] == [b"EVALSHA", b"EVAL"]  # NOSCRIPT, then the source
            await client.aclose()

    run(main())
