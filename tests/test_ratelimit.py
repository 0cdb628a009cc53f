"""Client-side pacing: the sliding window, what it learns from headers, and the budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2
import pytest

from docingest.account import StatsCollector
from docingest.budget import TokenBudget
from docingest.errors import BudgetExceeded
from docingest.execute import ClientSettings, Executor, build_async_client
from docingest.models import Chunk
from docingest.plan import SummaryRequest, content_key
from docingest.ratelimit import GateTransport, RateLimiter, parse_duration, retry_after_seconds
from docingest.testing.openai_server import OpenAIServer
from docingest.tokens import TokenCounter
from docingest.transport import DryRunTransport


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _limiter(t: FakeTime, **kw: object) -> RateLimiter:
    return RateLimiter(clock=t.clock, sleep=t.sleep, margin=0.0, **kw)  # type: ignore[arg-type]


def test_requests_per_minute_paced_over_a_sliding_window():
    t = FakeTime()
    limiter = _limiter(t, rpm=3)

    async def go() -> list[float]:
        return [await limiter.acquire(1) for _ in range(7)]

    waits = asyncio.run(go())
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(60.0)  # the 4th waits for the 1st to leave the window
    assert t.now == pytest.approx(1000.0 + 120.0)  # 7 requests at 3 per minute: two full waits


def test_tokens_per_minute_counts_the_weight_of_each_request():
    t = FakeTime()
    limiter = _limiter(t, tpm=1000)

    async def go() -> None:
        await limiter.acquire(600)
        await limiter.acquire(300)
        assert t.slept == []
        await limiter.acquire(200)  # 1,100 > 1,000: waits until the 600 leave

    asyncio.run(go())
    assert t.slept == [pytest.approx(60.0)]
    assert limiter.usage() == (1, 200)  # the first two left the window together


def test_a_request_heavier_than_the_limit_goes_alone():
    t = FakeTime()
    limiter = _limiter(t, tpm=100)

    async def go() -> None:
        await limiter.acquire(50)
        await limiter.acquire(500)

    asyncio.run(go())
    assert t.slept == [pytest.approx(60.0)]


def test_limits_learnt_from_headers_and_usage_that_is_not_ours():
    t = FakeTime()
    limiter = _limiter(t)
    assert not limiter.enabled
    limiter.observe(
        200,
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": "4000",  # 6,000 used, by someone else
        },
    )
    assert (limiter.rpm, limiter.tpm) == (100, 10_000)
    assert limiter.usage() == (1, 6000)
    assert limiter.delay(4000) == 0.0
    assert limiter.delay(4001) == pytest.approx(60.0)
    # a user's lower limit wins over the server's
    mine = _limiter(t, tpm=500)
    mine.observe(200, {"x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "10000"})
    assert mine.tpm == 500


def test_retry_after_of_a_429_pauses_everyone():
    t = FakeTime()
    limiter = _limiter(t)
    limiter.observe(429, {"retry-after-ms": "1500", "retry-after": "2"})
    assert limiter.delay(1) == pytest.approx(1.5)

    async def go() -> float:
        return await limiter.acquire(1)

    assert asyncio.run(go()) == pytest.approx(1.5)


def test_header_parsing():
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("1.5s") == pytest.approx(1.5)
    assert parse_duration("2m3s") == pytest.approx(123.0)
    assert parse_duration("7") == 7.0
    assert parse_duration("soon") is None
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({}) is None


def test_budget_refuses_the_attempt_that_would_cross_it_and_all_after():
    budget = TokenBudget(max_tokens=1000)
    first = budget.reserve(500, 100, "m")
    budget.settle(first, ok=True, completion_tokens=40)  # billed 40 of the 100 reserved
    assert budget.spent_tokens == 540
    failed = budget.reserve(300, 100, "m")
    budget.settle(failed, ok=False, completion_tokens=None)  # a failed attempt has no completion
    assert budget.spent_tokens == 840
    with pytest.raises(BudgetExceeded, match="over --max-tokens 1,000"):
        budget.reserve(100, 100, "m")
    with pytest.raises(BudgetExceeded):
        budget.reserve(1, 0, "m")  # once refused, the run stops: nothing more is sent
    assert budget.spent_tokens == 840


def _request(i: int, text: str) -> SummaryRequest:
    chunk = Chunk(path=f"f{i}.md", index=0, text=text, tokens=0, sha256=str(i), start=0, end=len(text))
    messages = [{"role": "user", "content": text}]
    return SummaryRequest(
        chunk, messages, prompt_tokens=0, max_tokens=16, key=content_key("m", [messages, i])
    )


def test_paced_client_meets_no_429_from_a_server_with_the_same_limit(tmp_path: Path):
    """Time runs 60x faster for both sides: a minute's window passes in a second."""
    fast = 60.0

    def clock() -> float:
        return time.monotonic() * fast

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / fast)

    tpm = 1200
    with OpenAIServer(tpm=tpm, clock=clock) as server:
        stats = StatsCollector(tmp_path / "l.jsonl")
        settings = ClientSettings(base_url=server.base_url, api_key="x", concurrency=8, max_retries=0)
        counter = __import__("docingest.tokens", fromlist=["TokenCounter"]).TokenCounter("o200k_base")
        limiter = RateLimiter(tpm=tpm, clock=clock, sleep=sleep, margin=3.0)  # 50 ms of real time
        client = build_async_client(settings, stats, limiter=limiter)
        executor = Executor(client, settings, stats=stats)
        requests = []
        for i in range(30):
            text = f"chunk {i}: " + "lorem ipsum " * 40
            r = _request(i, text)
            requests.append(
                SummaryRequest(r.chunk, r.messages, counter.count_messages(r.messages), r.max_tokens, r.key)
            )

        async def go() -> list[str | None]:
            try:
                outcomes = await asyncio.gather(*(executor.summarize(r) for r in requests))
            finally:
                await executor.aclose()
            return [o.error for o in outcomes]

        start = clock()
        errors = asyncio.run(go())
        elapsed_minutes = (clock() - start) / 60
        stats.finish()
        assert errors == [None] * len(requests)
        assert [r.status for r in server.requests].count(429) == 0
        weight = sum(r.prompt_tokens + r.max_tokens for r in requests)
        assert weight > 2 * tpm  # the limit had to be waited for
        # paced close to the limit: more than two windows' worth took a little over two windows
        assert elapsed_minutes < weight / tpm + 0.5
        agg = stats.aggregated()
        assert agg["rate_limit_wait_s"] > 0


def test_an_attempt_cancelled_while_waiting_for_its_turn_gives_its_budget_back():
    """Ctrl-C (or a cancelled task) while the rate limit holds an attempt back: it never left,
    so its reservation is returned (was: kept, as if sent)."""

    async def scenario() -> tuple[int, int]:
        waiting = asyncio.Event()

        async def held(seconds: float) -> None:  # the limiter's wait, until cancelled
            waiting.set()
            await asyncio.Event().wait()

        limiter = RateLimiter(rpm=10, sleep=held)
        limiter.pause(30)
        budget = TokenBudget(max_tokens=10_000)
        gate = GateTransport(DryRunTransport(), limiter=limiter, budget=budget)
        body = {"model": "text-embedding-3-small", "input": ["hello world", "again"]}
        request = httpx2.Request("POST", "http://127.0.0.1:9/v1/embeddings", json=body)
        task = asyncio.ensure_future(gate.handle_async_request(request))
        await waiting.wait()
        reserved = budget.spent_tokens
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return reserved, budget.spent_tokens

    reserved, after = asyncio.run(scenario())
    assert reserved == TokenCounter("cl100k_base").count("hello world") + TokenCounter("cl100k_base").count(
        "again"
    )
    assert after == 0
