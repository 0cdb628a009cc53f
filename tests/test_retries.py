"""Retries against the local server's faults: what can succeed is retried, what cannot fails at once."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from docingest.account import StatsCollector
from docingest.execute import ClientSettings, Executor, build_async_client
from docingest.models import Chunk
from docingest.pipeline import IngestConfig, RunResult, ingest
from docingest.plan import EmbeddingItem, SummaryRequest, content_key
from docingest.report import build_report
from docingest.simulate import DEFAULT_CONTEXT_WINDOWS, SimOptions
from docingest.testing.openai_server import OpenAIServer, parse_fault


def write_tree(root: Path, files: int, words: int = 60) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = " ".join(f"w{i}x{j}" for j in range(words))
        (src / f"doc{i:02d}.md").write_text(f"# Page {i}\n\n{body}\n")
    return src


def records(result: RunResult, kind: str = "call") -> list[dict[str, Any]]:
    lines = result.ledger_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def run(src: Path, tmp: Path, server: OpenAIServer, **kw: Any) -> RunResult:
    kw.setdefault("context", "none")
    config = IngestConfig(
        source=src,
        report=tmp / "report.json",
        db=tmp / "kb.sqlite",
        base_url=server.base_url,
        api_key="k",
        **kw,
    )
    return ingest(config)


def test_an_oversize_chunk_among_50_fails_once_without_retry(tmp_path):
    src = write_tree(tmp_path, 49)
    (src / "huge.md").write_text("# Huge\n\n" + " ".join(f"big{j}" for j in range(1500)) + "\n")
    windows = {**DEFAULT_CONTEXT_WINDOWS, "gpt-4o-mini": 2048}
    with OpenAIServer(options=SimOptions(context_windows=windows)) as server:
        result = run(src, tmp_path, server, chunk_tokens=8000)
        chats = [r for r in records(result) if r["call_type"] == "chat_summary"]
        assert len(chats) == 50
        by_path = {r["chunks"][0][0]: r for r in chats}
        failed = by_path.pop("huge.md")
        assert failed["status"] == "Fail" and failed["http_status"] == 400 and failed["attempt"] == 0
        assert "context_length_exceeded" in failed["error_details"]
        assert "maximum context length" in failed["error_details"]
        assert all(r["status"] == "Success" and r["attempt"] == 0 for r in by_path.values())
        assert len(by_path) == 49
        served = Counter(r.path for r in server.requests)
        assert served["/v1/chat/completions"] == 50  # nothing retried
    report = build_report(result.stats)
    chunk = report["files"]["huge.md"]["chunks"]["0"]
    summary_calls = [d for d in chunk["call_details"] if d["call_type"] == "chat_summary"]
    assert [d["status"] for d in summary_calls] == ["Fail"]
    assert "context_length_exceeded" in summary_calls[0]["error_details"]
    assert report["aggregated"]["total_failed_calls"] == 1
    assert result.stats.status == "completed"


def test_429_with_retry_after_on_every_third_request(tmp_path):
    src = write_tree(tmp_path, 9)
    fault = parse_fault("429:every=3,retry_after=0.3")
    with OpenAIServer(latency=0.02, faults=[fault]) as server:
        result = run(src, tmp_path, server, concurrency=4)
        served = server.requests
    calls = records(result)
    failed = [r for r in calls if r["status"] == "Fail"]
    ok = [r for r in calls if r["status"] == "Success"]
    assert failed and all(r["http_status"] == 429 for r in failed)
    assert len(calls) == len(served)
    assert len(failed) == sum(1 for r in served if r.status == 429)
    # every chunk succeeded once per call type
    done = Counter((c[0], c[1], r["call_type"]) for r in ok for c in r["chunks"])
    assert set(done.values()) == {1}
    assert len(done) == 2 * 9
    # the tokens sent exceed the tokens needed by exactly the retried requests
    sent = sum(r["prompt_tokens"] for r in calls)
    needed = sum(r["prompt_tokens"] for r in ok)
    assert sent - needed == sum(r["prompt_tokens"] for r in failed) > 0
    agg = build_report(result.stats)["aggregated"]
    assert agg["retried_calls"] == len(failed)
    assert agg["total_failed_calls"] == len(failed)
    # the SDK honoured retry-after-ms (300 ms) before each retry, and the report says so
    retries = [r for r in calls if r["attempt"] > 0]
    assert len(retries) == len(failed)
    assert all(r["retry_wait_s"] >= 0.29 for r in retries)
    assert agg["retry_wait_s"] >= 0.29 * len(retries)


def test_5xx_dropped_connections_and_timeouts_are_retried(tmp_path):
    src = write_tree(tmp_path, 6)
    faults = [
        parse_fault("500:on=1"),
        parse_fault("503:on=2"),
        parse_fault("drop:on=3"),
        parse_fault("timeout:on=4,delay=3"),
    ]
    with OpenAIServer(faults=faults) as server:
        result = run(src, tmp_path, server, concurrency=2, timeout=0.5)
    calls = records(result)
    failed = [r for r in calls if r["status"] == "Fail"]
    assert sorted(str(r["http_status"]) for r in failed) == ["500", "503", "None", "None"]
    assert all("retry_wait_s" in r for r in calls if r["attempt"] > 0)
    agg = result.stats.aggregated()
    assert agg["total_successful_calls"] == 6 + 1
    assert agg["retried_calls"] == 4


def test_a_malformed_json_answer_fails_its_chunk_and_the_run_goes_on(tmp_path):
    src = write_tree(tmp_path, 5)
    with OpenAIServer(faults=[parse_fault("malformed:on=2")]) as server:
        result = run(src, tmp_path, server, concurrency=1)
    calls = records(result)
    bad = [r for r in calls if r["status"] == "Fail"]
    assert len(bad) == 1 and "malformed JSON" in bad[0]["error_details"]
    assert result.stats.status == "completed"
    agg = result.stats.aggregated()
    assert agg["total_successful_calls"] == len(calls) - 1 == 5  # 4 summaries and the embeddings
    with __import__("sqlite3").connect(tmp_path / "kb.sqlite") as db:
        assert db.execute("SELECT count(summary_key), count(embedding_key) FROM chunks").fetchone() == (4, 5)


def test_a_batch_with_one_bad_input_is_split_until_only_that_input_fails(tmp_path):
    """The pipeline never sends an input over the limit; the executor copes if one gets through."""

    def item(i: int, text: str, tokens: int) -> EmbeddingItem:
        chunk = Chunk(path=f"f{i}.md", index=0, text=text, tokens=tokens, sha256=str(i))
        return EmbeddingItem(chunk, text, tokens, content_key("text-embedding-3-small", text))

    items = [item(i, f"short text number {i}", 4) for i in range(8)]
    items[5] = item(5, "word " * 9000, 9000)
    with OpenAIServer() as server:
        stats = StatsCollector(tmp_path / "l.jsonl")
        settings = ClientSettings(base_url=server.base_url, api_key="k")
        executor = Executor(build_async_client(settings, stats), settings, stats=stats)

        async def go() -> Any:
            try:
                return await executor.embed(items)
            finally:
                await executor.aclose()

        outcome = asyncio.run(go())
        stats.finish()
    errors = [error for _vector, error in outcome.results]
    assert [e is None for e in errors] == [True] * 5 + [False] + [True] * 2
    assert "maximum" in (errors[5] or "") or "8192" in (errors[5] or "")
    statuses = [r.status for r in server.requests]
    assert statuses.count(400) == 4  # [0-7], [4-7], [4, 5], [5]: never retried
    assert statuses.count(200) == 3  # [0-3], [6, 7], [4]


class _Answers(httpx2.AsyncBaseTransport):
    """Answers every chat request with one fixed JSON body (status 200)."""

    def __init__(self, body: object) -> None:
        self.body = body
        self.requests: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(await request.aread()))
        return httpx2.Response(200, json=self.body)


def _summarize(body: object) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    chunk = Chunk(path="a.md", index=0, text="hello", tokens=1, sha256="0" * 64)
    messages = [{"role": "user", "content": "hello"}]
    request = SummaryRequest(chunk, messages, 8, 16, content_key("m", messages))
    transport = _Answers(body)
    settings = ClientSettings(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)

    async def go() -> tuple[str | None, str | None]:
        client = build_async_client(settings, StatsCollector(), transport=transport)
        try:
            outcome = await Executor(client, settings).summarize(request)
        finally:
            await client.close()
        return outcome.value, outcome.error

    value, error = asyncio.run(go())
    return value, error, transport.requests


def test_a_chat_answer_is_read_from_its_first_choice_and_the_request_carries_the_plan():
    answer = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "S"}}],
    }
    value, error, sent = _summarize(answer)
    assert (value, error) == ("S", None)
    assert sent == [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    ]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"object": "chat.completion", "choices": []}, "no choices[0].message"),
        ({"object": "chat.completion"}, "no choices[0].message"),
        ([1, 2], "no choices[0].message"),
        ({"choices": [{"message": {"content": 3}}]}, "content is int"),
    ],
)
def test_a_chat_answer_without_text_fails_its_chunk_with_the_reason(body, why):
    value, error, _ = _summarize(body)
    assert value is None
    assert error is not None and "malformed chat completion" in error and why in error


class _SplitThenHang(httpx2.AsyncBaseTransport):
    """A batch of two is refused (400); the "left" input alone is answered, the "right" one never."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        inputs = json.loads(await request.aread())["input"]
        self.seen.append(inputs)
        if len(inputs) > 1:
            error = {"message": "bad input", "type": "invalid_request_error", "param": "input", "code": None}
            return httpx2.Response(400, json={"error": error})
        if inputs == ["left"]:
            vector = base64.b64encode(np.zeros(4, dtype="<f4").tobytes()).decode()
            data = [{"object": "embedding", "index": 0, "embedding": vector}]
            usage = {"prompt_tokens": 1, "total_tokens": 1}
            return httpx2.Response(200, json={"object": "list", "data": data, "model": "m", "usage": usage})
        await asyncio.Event().wait()  # never answered
        raise AssertionError("unreachable")


def test_a_split_batch_interrupted_keeps_the_record_of_the_half_that_was_answered():
    def item(text: str) -> EmbeddingItem:
        chunk = Chunk(path=f"{text}.md", index=0, text=text, tokens=1, sha256=text)
        return EmbeddingItem(chunk, text, 1, content_key("m", text))

    stats = StatsCollector()
    written: list[Any] = []
    stats.subscribe(written.append)
    transport = _SplitThenHang()
    settings = ClientSettings(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)

    async def go() -> None:
        client = build_async_client(settings, stats, transport=transport)
        executor = Executor(client, settings, stats=stats, defer=True)  # successes written with results
        task = asyncio.ensure_future(executor.embed([item("left"), item("right")]))
        while len(transport.seen) < 3:  # the batch, then both halves sent
            await asyncio.sleep(0)
        for _ in range(500):  # let the answered half finish (no clock involved: turns of the loop)
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()

    asyncio.run(go())
    calls = [(r["status"], r["chunks"][0][0]) for r in written if r["type"] == "call"]
    assert ("Success", "left.md") in calls  # sent and answered: in the ledger, though never stored
