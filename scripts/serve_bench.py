"""Measures `palimpsest serve` through HTTP with agent-memory-client 0.14.0's patterns, at 100 /
1,000 / 5,000 / 20,000 messages per session (300-byte messages), the figures of issue 13:

- GET `recent_messages_limit=50`: p50 / p95 (raw httpx, as the client has no such parameter);
- the client's append (`append_messages_to_working_memory`: GET the whole session, PUT it back
  with one more message): p50 / p95, with the bytes it moves (request + response bodies);
- the extension append (`POST /v1/working-memory/{id}/messages`, one message): p50 / p95, bytes;
- 10 sessions x 10 threads, each thread appending round-robin to the 10 sessions with the
  client's pattern for a fixed time: appends/s over all threads (and the same with the extension).

Run it with the test venv's python against a server started with summarization off (so each
session really holds N live messages: the worst case), e.g.:

    printf '[server]\\nsummarization = false\\n' > /tmp/serve-bench.toml
    target/release/palimpsest serve --db /tmp/serve-bench --config /tmp/serve-bench.toml --listen 127.0.0.1:8765 &
    .venv/bin/python scripts/serve_bench.py http://127.0.0.1:8765

Prints a Markdown table. Sessions are created fresh under a random prefix.
"""

import asyncio
import json
import statistics
import sys
import threading
import time
import uuid

import httpx
from agent_memory_client import MemoryAPIClient, MemoryClientConfig

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8765"
SIZES = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [100, 1_000, 5_000, 20_000]
RUN = uuid.uuid4().hex[:8]
CONTENT = "x" * 300
SETUP_BATCH = 1_000
THROUGHPUT_SECONDS = 8.0


def message(i: int) -> dict:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": CONTENT, "id": f"{RUN}-{uuid.uuid4().hex}",
            "created_at": "2024-05-01T10:00:00Z"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


async def fill(raw: httpx.AsyncClient, session: str, n: int) -> None:
    r = await raw.put(f"/v1/working-memory/{session}", json={"messages": []})
    r.raise_for_status()
    done = 0
    while done < n:
        batch = [message(done + i) for i in range(min(SETUP_BATCH, n - done))]
        r = await raw.post(f"/v1/working-memory/{session}/messages", json={"messages": batch})
        r.raise_for_status()
        done += len(batch)


class Counting(httpx.AsyncBaseTransport):
    """Counts request and response body bytes on the wire (requests are not compressed)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent = 0
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += len(request.content)
        response = await self.inner.handle_async_request(request)
        # The bytes on the wire (gzip when the server compressed them); httpx decodes them later.
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        self.received += len(raw)
        return httpx.Response(response.status_code, headers=response.headers, content=raw, request=request)


async def measure(sizes: list[int]) -> dict[int, dict]:
    """Fills one session per size, then measures the sizes in interleaved rounds, so that the disk's
    background work (memtable flushes after the fills, fjall compactions) weighs on every size alike."""
    sessions = {n: f"b{RUN}-{n}" for n in sizes}
    get_ms = {n: [] for n in sizes}
    ext_ms = {n: [] for n in sizes}
    ext_bytes = {n: 0 for n in sizes}
    app_ms = {n: [] for n in sizes}
    app_bytes = {n: 0 for n in sizes}
    reps, app_reps = 40, 8
    async with httpx.AsyncClient(base_url=BASE, timeout=300.0) as raw:
        for n in sizes:
            await fill(raw, sessions[n], n)
        for _ in range(reps):
            for n in sizes:
                t = time.perf_counter()
                r = await raw.get(f"/v1/working-memory/{sessions[n]}", params={"recent_messages_limit": 50})
                r.raise_for_status()
                get_ms[n].append((time.perf_counter() - t) * 1000)
                assert len(r.json()["messages"]) == 50
        for i in range(reps):
            for n in sizes:
                body = json.dumps({"messages": [message(i)]})
                t = time.perf_counter()
                r = await raw.post(f"/v1/working-memory/{sessions[n]}/messages", content=body, headers={"content-type": "application/json"})
                r.raise_for_status()
                ext_ms[n].append((time.perf_counter() - t) * 1000)
                ext_bytes[n] += len(body) + len(r.content)
    for i in range(app_reps):
        for n in sizes:
            counting = Counting()
            client = MemoryAPIClient(MemoryClientConfig(base_url=BASE, timeout=300.0))
            client._client = httpx.AsyncClient(base_url=BASE, timeout=300.0, transport=counting)
            async with client:
                t = time.perf_counter()
                await client.append_messages_to_working_memory(sessions[n], [message(i)])
                app_ms[n].append((time.perf_counter() - t) * 1000)
            app_bytes[n] += counting.sent + counting.received
    return {
        n: {
            "n": n,
            "get50": (statistics.median(get_ms[n]), pct(get_ms[n], 95)),
            "client": (statistics.median(app_ms[n]), pct(app_ms[n], 95), app_bytes[n] / app_reps),
            "ext": (statistics.median(ext_ms[n]), pct(ext_ms[n], 95), ext_bytes[n] / reps),
        }
        for n in sizes
    }


def throughput(n: int, use_extension: bool) -> float:
    sessions = [f"t{RUN}-{n}-{s}" for s in range(10)]

    async def setup() -> None:
        async with httpx.AsyncClient(base_url=BASE, timeout=300.0) as raw:
            for s in sessions:
                await fill(raw, s, n)

    # The extension's run uses the sessions the client's run filled (and grew a little).
    if not use_extension:
        asyncio.run(setup())
    deadline = time.perf_counter() + THROUGHPUT_SECONDS
    counts = [0] * 10

    def worker(t: int) -> None:
        async def run() -> None:
            async with MemoryAPIClient(MemoryClientConfig(base_url=BASE, timeout=300.0)) as c, \
                    httpx.AsyncClient(base_url=BASE, timeout=300.0) as raw:
                i = 0
                while time.perf_counter() < deadline:
                    s = sessions[(t + i) % len(sessions)]
                    if use_extension:
                        r = await raw.post(f"/v1/working-memory/{s}/messages", json={"messages": [message(i)]})
                        r.raise_for_status()
                    else:
                        await c.append_messages_to_working_memory(s, [message(i)])
                    counts[t] += 1
                    i += 1

        asyncio.run(run())

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    measured = asyncio.run(measure(SIZES))
    rows = []
    for n in SIZES:
        m = measured[n]
        m["tp_client"] = throughput(n, use_extension=False)
        m["tp_ext"] = throughput(n, use_extension=True)
        rows.append(m)
        print(f"done {n}", file=sys.stderr, flush=True)
    print("| messages in the session | " + " | ".join(f"{r['n']:,}" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| GET `recent_messages_limit=50`, p50 / p95 ms | " + " | ".join(f"{r['get50'][0]:.1f} / {r['get50'][1]:.1f}" for r in rows) + " |")
    print("| client append (GET whole + PUT whole), p50 / p95 ms | " + " | ".join(f"{r['client'][0]:.1f} / {r['client'][1]:.1f}" for r in rows) + " |")
    print("| client append, bytes moved per append | " + " | ".join(f"{r['client'][2] / 1e6:.2f} MB" if r['client'][2] >= 1e6 else f"{r['client'][2] / 1e3:.1f} kB" for r in rows) + " |")
    print("| extension append, p50 / p95 ms | " + " | ".join(f"{r['ext'][0]:.1f} / {r['ext'][1]:.1f}" for r in rows) + " |")
    print("| extension append, bytes moved per append | " + " | ".join(f"{r['ext'][2]:.0f} B" for r in rows) + " |")
    print("| 10 sessions x 10 threads, client appends/s | " + " | ".join(f"{r['tp_client']:.1f}" for r in rows) + " |")
    print("| 10 sessions x 10 threads, extension appends/s | " + " | ".join(f"{r['tp_ext']:.0f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
