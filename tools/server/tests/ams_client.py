"""Drives `palimpsest serve` with the real agent-memory-server Python client (agent-memory-client
0.14.0), as its users do: health, list, get-or-create, put, append (the client's GET+PUT and the
palimpsest extension through raw httpx), delete, memory prompt, 404 -> MemoryNotFoundError, and
concurrent appends from several threads to several sessions, checking that nothing is lost.

Usage: python ams_client.py BASE_URL
Exits non-zero (with a traceback) on the first failed check; prints one line per check passed.
"""

import asyncio
import sys
import threading

import httpx
from agent_memory_client import MemoryAPIClient, MemoryClientConfig
from agent_memory_client.exceptions import MemoryNotFoundError
from agent_memory_client.models import MemoryMessage, WorkingMemory

BASE = sys.argv[1]


def client() -> MemoryAPIClient:
    return MemoryAPIClient(MemoryClientConfig(base_url=BASE, timeout=60.0))


def check(name: str, condition: bool, detail: object = "") -> None:
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}", flush=True)


async def basics() -> None:
    async with client() as c:
        health = await c.health_check()
        check("health", health.now > 1_600_000_000_000, health)

        created, memory = await c.get_or_create_working_memory("py-1", namespace="py", user_id="alice")
        check("get_or_create creates", created and memory.messages == [], (created, memory))
        created, memory = await c.get_or_create_working_memory("py-1", namespace="py", user_id="alice")
        check("get_or_create finds", not created, created)

        wm = WorkingMemory(
            session_id="py-1",
            namespace="py",
            user_id="alice",
            messages=[
                MemoryMessage(role="user", content="I prefer window seats", id="m1"),
                MemoryMessage(role="assistant", content="Noted.", id="m2"),
            ],
            data={"trip": {"city": "Oslo"}},
            context="planning a trip",
            ttl_seconds=3600,
        )
        put = await c.put_working_memory("py-1", wm)
        check("put", [m.id for m in put.messages] == ["m1", "m2"] and put.data == {"trip": {"city": "Oslo"}}, put)

        got = await c.get_working_memory("py-1", namespace="py", user_id="alice")
        check(
            "get round-trips",
            [(m.role, m.content, m.id) for m in got.messages]
            == [("user", "I prefer window seats", "m1"), ("assistant", "Noted.", "m2")]
            and got.context == "planning a trip"
            and got.ttl_seconds == 3600
            and got.user_id == "alice"
            and got.namespace == "py",
            got,
        )

        # The client's append: GET the whole session, PUT it back with the new messages.
        after = await c.append_messages_to_working_memory(
            "py-1", [{"role": "user", "content": "Book the 9:40 flight", "id": "m3"}], namespace="py", user_id="alice"
        )
        check("client append", [m.id for m in after.messages] == ["m1", "m2", "m3"], after)

        # The extension: append without resending the session.
        async with httpx.AsyncClient(base_url=BASE) as raw:
            r = await raw.post(
                "/v1/working-memory/py-1/messages",
                params={"namespace": "py", "user_id": "alice"},
                json={"messages": [{"role": "assistant", "content": "Booked.", "id": "m4"}]},
            )
            check("extension append", r.status_code == 200 and r.json()["appended"] == 1, r.text)
        got = await c.get_working_memory("py-1", namespace="py", user_id="alice")
        check("both appends kept", [m.id for m in got.messages] == ["m1", "m2", "m3", "m4"], got)
        check("document kept by the extension", got.data == {"trip": {"city": "Oslo"}} and got.ttl_seconds == 3600, got)

        sessions = await c.list_sessions(namespace="py")
        check("list", sessions.sessions == ["py-1"] and sessions.total == 1, sessions)

        prompt = await c.memory_prompt(query="What did I book?", session_id="py-1", namespace="py", user_id="alice", context_window_max=4000)
        messages = prompt["messages"] if isinstance(prompt, dict) else prompt.messages
        texts = [(m["role"], m["content"]["text"]) for m in messages]
        check(
            "memory prompt",
            texts[0][0] == "system" and "planning a trip" in texts[0][1] and texts[-1] == ("user", "What did I book?")
            and ("assistant", "Booked.") in texts,
            texts,
        )

        try:
            await c.get_working_memory("no-such-session")
            check("404 raises MemoryNotFoundError", False, "no exception")
        except MemoryNotFoundError:
            check("404 raises MemoryNotFoundError", True)

        await c.delete_working_memory("py-1", namespace="py", user_id="alice")
        try:
            await c.get_working_memory("py-1", namespace="py", user_id="alice")
            check("delete", False, "still there")
        except MemoryNotFoundError:
            check("delete", True)


def concurrent_appends(n_threads: int, n_sessions: int, n_turns: int) -> None:
    """Every thread appends n_turns messages to every session with the client's GET+PUT pattern,
    and as many with the extension; afterwards every message is there exactly once."""

    async def setup() -> None:
        async with client() as c:
            for s in range(n_sessions):
                await c.get_or_create_working_memory(f"conc-{s}", namespace="py")

    asyncio.run(setup())
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        async def run() -> None:
            async with client() as c, httpx.AsyncClient(base_url=BASE, timeout=60.0) as raw:
                for turn in range(n_turns):
                    for s in range(n_sessions):
                        await c.append_messages_to_working_memory(
                            f"conc-{s}", [{"role": "user", "content": f"t{t} turn {turn}", "id": f"c-{t}-{turn}"}], namespace="py"
                        )
                        r = await raw.post(
                            f"/v1/working-memory/conc-{s}/messages",
                            params={"namespace": "py"},
                            json={"messages": [{"role": "assistant", "content": f"x{t} {turn}", "id": f"x-{t}-{turn}"}]},
                        )
                        r.raise_for_status()

        try:
            asyncio.run(run())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]

    async def verify() -> None:
        async with client() as c:
            for s in range(n_sessions):
                got = await c.get_working_memory(f"conc-{s}", namespace="py")
                ids = [m.id for m in got.messages]
                want = {f"{p}-{t}-{turn}" for p in ("c", "x") for t in range(n_threads) for turn in range(n_turns)}
                detail = {"stored": len(ids), "expected": len(want), "lost": sorted(want - set(ids)), "doubled": sorted({i for i in ids if ids.count(i) > 1})}
                check(f"concurrent appends to conc-{s}: none lost, none doubled", len(ids) == len(want) and set(ids) == want, detail)

    asyncio.run(verify())


if __name__ == "__main__":
    asyncio.run(basics())
    concurrent_appends(n_threads=4, n_sessions=3, n_turns=5)
    print("all checks passed", flush=True)
