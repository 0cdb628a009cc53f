"""What the ledger costs: the same requests through the bare SDK and through docingest's executor.

Both variants send the same N chat requests to the local server (``--latency-ms``, default 50)
with the same concurrency through ``openai.AsyncOpenAI``. The accounted variant goes through
``docingest.execute.Executor``: the gate, the recording transport, one ledger record per attempt
written and flushed to a JSONL file, the StatsCollector fold. The variants alternate for
``--rounds`` rounds; the medians are compared. Prints JSON with ``overhead_pct``.

    python bench/ledger_overhead.py --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from docingest.account import StatsCollector
from docingest.execute import ClientSettings, Executor, build_async_client
from docingest.models import Chunk
from docingest.plan import SummaryRequest, content_key
from docingest.ratelimit import RateLimiter
from docingest.testing.openai_server import OpenAIServer
from docingest.tokens import TokenCounter


def make_requests(n: int) -> list[SummaryRequest]:
    counter = TokenCounter("o200k_base")
    out = []
    for i in range(n):
        text = f"Chunk {i}. " + "The graph API compiles nodes and edges into a runnable. " * 8
        messages = [{"role": "system", "content": "Summarize."}, {"role": "user", "content": text}]
        chunk = Chunk(path=f"doc{i // 10}.md", index=i % 10, text=text, tokens=0, sha256=str(i))
        out.append(
            SummaryRequest(
                chunk, messages, counter.count_messages(messages), 32, content_key("m", [messages, i])
            )
        )
    return out


async def bare(base_url: str, requests: list[SummaryRequest], concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def one(r: SummaryRequest) -> None:
        async with slots:
            response = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=r.messages,  # type: ignore[arg-type]
                max_tokens=r.max_tokens,
            )
            assert response.choices[0].message.content is not None

    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    wall = time.perf_counter() - start
    await client.close()
    return wall


async def accounted(base_url: str, requests: list[SummaryRequest], concurrency: int, ledger: Path) -> float:
    stats = StatsCollector(ledger)
    settings = ClientSettings(base_url=base_url, api_key="bench", concurrency=concurrency, max_retries=0)
    client = build_async_client(settings, stats, limiter=RateLimiter())  # the gate as a real run has it
    executor = Executor(client, settings, stats=stats)
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(executor.summarize(r) for r in requests))
    wall = time.perf_counter() - start
    assert all(o.error is None for o in outcomes)
    await executor.aclose()
    stats.finish()
    assert stats.total_calls == len(requests)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    requests = make_requests(args.requests)
    walls: dict[str, list[float]] = {"bare": [], "accounted": []}
    with OpenAIServer(latency=args.latency_ms / 1000) as server, tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            walls["bare"].append(asyncio.run(bare(server.base_url, requests, args.concurrency)))
            ledger = Path(tmp) / f"{i}.ledger.jsonl"
            walls["accounted"].append(
                asyncio.run(accounted(server.base_url, requests, args.concurrency, ledger))
            )
    medians = {k: statistics.median(v) for k, v in walls.items()}
    out = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "wall_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "overhead_pct": round((medians["accounted"] / medians["bare"] - 1) * 100, 2),
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
