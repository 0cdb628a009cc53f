"""The library API: StatsCollector on its own, recording http clients, attribution, dry run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import httpx2
import openai
import pytest

from docingest import (
    StatsCollector,
    async_recording_http_client,
    record_client,
    record_openai_clients,
    recording_http_client,
)
from docingest.testing.openai_server import OpenAIServer

DOCS = {
    "guide.md": ["Install the CLI with pip and run it.", "Configure the ledger path and the model."],
    "api.md": ["The StatsCollector folds ledger records.", "Embeddings are batched by 256 inputs."],
}


def summarize(client: openai.OpenAI, text: str) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize:\n{text}"}], max_tokens=20
    )


def pipeline(client: openai.OpenAI, stats: StatsCollector) -> None:
    """A user's pipeline: summaries and an embedding per chunk, attributed; one title call not."""
    for path, chunks in DOCS.items():
        for index, text in enumerate(chunks):
            with stats.chunk(path, index, text=text):
                summarize(client, text)
                client.embeddings.create(model="text-embedding-3-small", input=[text])
    client.chat.completions.create(  # outside any chunk: unattributed, grouped by this line
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Title for 4 documents, please"}]
    )


async def apipeline(client: openai.AsyncOpenAI, stats: StatsCollector) -> None:
    async def one(path: str, index: int, text: str) -> None:
        with stats.chunk(path, index, text=text):
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize:\n{text}"}],
                max_tokens=20,
            )
            await client.embeddings.create(model="text-embedding-3-small", input=[text])

    # concurrent tasks, each in its own chunk: the context variable keeps them apart
    await asyncio.gather(*(one(p, i, t) for p, chunks in DOCS.items() for i, t in enumerate(chunks)))
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Title for 4 documents, please"}]
    )


def _unattributed_line() -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "outside any chunk: unattributed" in line)


def check_report(stats: StatsCollector, usage: dict[str, int] | None) -> dict[str, object]:
    report = stats.report()
    agg = report["aggregated"]
    assert agg["total_api_calls_initiated"] == 9
    assert agg["total_failed_calls"] == 0
    if usage is not None:  # the server's bill, to the token
        assert usage["requests"] == 9
        assert agg["total_tokens_sent_to_apis"] == usage["prompt_tokens"]
        assert agg["billed_prompt_tokens"] == usage["prompt_tokens"]
        assert agg["billed_completion_tokens"] == usage["completion_tokens"]
    files = report["files"]
    assert sorted(files) == ["api.md", "guide.md"]
    for path, chunks in DOCS.items():
        for index in range(len(chunks)):
            chunk = files[path]["chunks"][str(index)]
            assert chunk["raw_chunk_tokens"] > 0
            assert [c["call_type"] for c in chunk["call_details"]] == ["chat_summary", "create_embedding"]
    un = agg["unattributed"]
    assert un["calls"] == 1
    per_chunk = sum(c["total_tokens_sent_to_apis"] for f in files.values() for c in f["chunks"].values())
    assert per_chunk + un["tokens_sent"] == agg["total_tokens_sent_to_apis"]  # conservation
    assert list(un["by_template"]) == ["user: Title for <n> documents, please"]
    return report


def test_sync_client_records_and_attributes(tmp_path: Path) -> None:
    ledger = tmp_path / "run.ledger.jsonl"
    stats = StatsCollector(ledger)
    stats.start(dry_run=False, source="my pipeline")
    with OpenAIServer() as server:
        with openai.OpenAI(
            base_url=server.base_url, api_key="k", http_client=recording_http_client(stats, dry_run=False)
        ) as client:
            pipeline(client, stats)
        usage = server.usage_totals()
    stats.finish()
    report = check_report(stats, usage)
    sites = report["aggregated"]["unattributed"]["by_site"]
    assert list(sites) == [f"{Path(__file__).relative_to(Path.cwd())}:{_unattributed_line()}"]
    # the ledger alone gives the same report
    rebuilt = StatsCollector.from_ledger(ledger).report()
    assert rebuilt["aggregated"]["total_tokens_sent_to_apis"] == usage["prompt_tokens"]
    assert rebuilt["files"] == report["files"]


def test_async_client_gives_the_same_totals(tmp_path: Path) -> None:
    sync_stats, async_stats = StatsCollector(None), StatsCollector(None)
    with OpenAIServer() as server:
        with openai.OpenAI(
            base_url=server.base_url, api_key="k", http_client=recording_http_client(sync_stats)
        ) as client:
            pipeline(client, sync_stats)
        sync_usage = server.usage_totals()

        async def run() -> None:
            aclient = openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", http_client=async_recording_http_client(async_stats)
            )
            await apipeline(aclient, async_stats)
            await aclient.close()

        asyncio.run(run())
        both = server.usage_totals()
    async_usage = {k: both[k] - sync_usage[k] for k in both}
    sync_report = check_report(sync_stats, sync_usage)
    async_report = check_report(async_stats, async_usage)
    assert async_report["files"].keys() == sync_report["files"].keys()
    for path in DOCS:
        for index, chunk in sync_report["files"][path]["chunks"].items():
            other = async_report["files"][path]["chunks"][index]
            assert other["total_tokens_sent_to_apis"] == chunk["total_tokens_sent_to_apis"]


def test_dry_run_needs_no_server_and_counts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRY_RUN", "true")
    dry = StatsCollector(None)
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1", api_key="k", http_client=recording_http_client(dry)
    )
    with client:
        pipeline(client, dry)
    report = check_report(dry, None)
    assert report["aggregated"]["billed_prompt_tokens"] is None  # a dry run has no bill
    monkeypatch.delenv("DRY_RUN")
    real = StatsCollector(None)
    with OpenAIServer() as server:
        http_client = recording_http_client(real)
        with openai.OpenAI(base_url=server.base_url, api_key="k", http_client=http_client) as client:
            pipeline(client, real)
    assert dry.report()["aggregated"]["total_tokens_sent_to_apis"] == real.total_tokens_sent


@pytest.mark.parametrize("flavour", [httpx2, httpx], ids=["httpx2", "httpx"])
def test_record_client_wraps_an_existing_client_once(flavour: type, tmp_path: Path) -> None:
    stats = StatsCollector(None)
    with OpenAIServer() as server:
        with flavour.Client() as http_client:  # type: ignore[attr-defined]
            assert record_client(http_client, stats) is http_client
            record_client(http_client, stats)  # a second time: still one record per request
            client = openai.OpenAI(base_url=server.base_url, api_key="k", http_client=http_client)
            pipeline(client, stats)
        usage = server.usage_totals()
    check_report(stats, usage)
    with pytest.raises(TypeError, match="httpx or httpx2 client"):
        record_client(object(), stats)


def test_record_openai_clients_records_clients_built_inside(tmp_path: Path) -> None:
    stats = StatsCollector(None)
    with OpenAIServer() as server:
        with record_openai_clients(stats, dry_run=False):
            inside = openai.OpenAI(base_url=server.base_url, api_key="k")
        with inside, openai.OpenAI(base_url=server.base_url, api_key="k") as outside:
            pipeline(inside, stats)
            outside.embeddings.create(model="text-embedding-3-small", input="not recorded")
        usage = server.usage_totals()
    report = stats.report()
    assert report["aggregated"]["total_api_calls_initiated"] == 9 == usage["requests"] - 1


def test_failed_call_is_recorded_with_its_error(tmp_path: Path) -> None:
    stats = StatsCollector(tmp_path / "l.jsonl")
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1, http_client=recording_http_client(stats)
    )
    with client, stats.chunk("a.md", 0, text="hello"), pytest.raises(openai.APIConnectionError):
        summarize(client, "hello")
    stats.finish("failed")
    records = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    calls = [r for r in records if r["type"] == "call"]
    assert [(c["status"], c["attempt"]) for c in calls] == [("Fail", 0), ("Fail", 1)]
    assert all("ConnectError" in c["error_details"] for c in calls)
    assert stats.report()["files"]["a.md"]["chunks"]["0"]["failed_calls"] == 2
