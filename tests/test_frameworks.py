"""LangChain and LlamaIndex pipelines recorded through ``http_client``: totals equal the bill."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from docingest import StatsCollector, async_recording_http_client, recording_http_client
from docingest.testing.openai_server import OpenAIServer
from docingest.tokens import cache_dir, get_encoding

WORDS = "token ledger chunk embedding summary model prompt index vector cache retry batch".split()
DOCS = {
    f"doc{n}.md": ". ".join(
        " ".join(WORDS[(i * 5 + j + n) % len(WORDS)] for j in range(9)) for i in range(40 + 25 * n)
    )
    for n in range(3)
}
CHAT, EMBED = "gpt-4o-mini", "text-embedding-3-small"


@pytest.fixture(autouse=True)
def offline_tiktoken(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The frameworks' own tiktoken calls find docingest's verified encoding files."""
    for name in ("cl100k_base", "o200k_base"):
        get_encoding(name)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir()))
    monkeypatch.delenv("DRY_RUN", raising=False)
    yield


def _totals(stats: StatsCollector) -> tuple[int, int]:
    agg = stats.report()["aggregated"]
    return agg["total_api_calls_initiated"], agg["total_tokens_sent_to_apis"]


# -- LangChain ---------------------------------------------------------------------------------


def langchain_run(base_url: str, stats: StatsCollector, *, is_async: bool, dry_run: bool = False) -> None:
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=0)
    chunks = {path: splitter.split_text(text) for path, text in DOCS.items()}

    def prompt(text: str) -> str:
        return f"Summarize this documentation chunk in one sentence:\n\n{text}"

    if not is_async:
        http = recording_http_client(stats, dry_run=dry_run)
        llm = ChatOpenAI(model=CHAT, base_url=base_url, api_key="k", max_tokens=40, http_client=http)
        emb = OpenAIEmbeddings(model=EMBED, base_url=base_url, api_key="k", http_client=http)
        for path, parts in chunks.items():
            for index, text in enumerate(parts):
                with stats.chunk(path, index, text=text):
                    llm.invoke(prompt(text))
            emb.embed_documents(parts)  # one batch per file: no single chunk, unattributed
        http.close()
        return

    async def run() -> None:
        http = async_recording_http_client(stats, dry_run=dry_run)
        llm = ChatOpenAI(model=CHAT, base_url=base_url, api_key="k", max_tokens=40, http_async_client=http)
        emb = OpenAIEmbeddings(model=EMBED, base_url=base_url, api_key="k", http_async_client=http)

        async def one(path: str, index: int, text: str) -> None:
            with stats.chunk(path, index, text=text):
                await llm.ainvoke(prompt(text))

        await asyncio.gather(*(one(p, i, t) for p, parts in chunks.items() for i, t in enumerate(parts)))
        for parts in chunks.values():
            await emb.aembed_documents(parts)
        await http.aclose()

    asyncio.run(run())


def check_langchain(stats: StatsCollector) -> None:
    report = stats.report()
    for path, file in report["files"].items():
        for chunk in file["chunks"].values():
            assert chunk["raw_chunk_tokens"] > 0
            assert [c["call_type"] for c in chunk["call_details"]] == ["chat_summary"], path
    assert report["aggregated"]["unattributed"]["calls"] == len(DOCS)  # the embedding batches
    assert list(report["aggregated"]["unattributed"]["by_template"]) == [f"embeddings {EMBED}"]


def test_langchain_sync_and_async_equal_server_usage() -> None:
    runs: dict[bool, StatsCollector] = {}
    with OpenAIServer() as server:
        for is_async in (False, True):
            before = server.usage_totals()
            stats = runs[is_async] = StatsCollector(None)
            langchain_run(server.base_url, stats, is_async=is_async)
            usage = {k: v - before[k] for k, v in server.usage_totals().items()}
            agg = stats.report()["aggregated"]
            assert agg["total_api_calls_initiated"] == usage["requests"] > len(DOCS)
            assert agg["total_tokens_sent_to_apis"] == agg["billed_prompt_tokens"] == usage["prompt_tokens"]
            assert agg["billed_completion_tokens"] == usage["completion_tokens"]
            check_langchain(stats)
    assert _totals(runs[False]) == _totals(runs[True])
    dry = StatsCollector(None)
    langchain_run("http://127.0.0.1:9/v1", dry, is_async=False, dry_run=True)  # no server
    assert _totals(dry) == _totals(runs[False])
    check_langchain(dry)


# -- LlamaIndex --------------------------------------------------------------------------------


def llamaindex_run(base_url: str, stats: StatsCollector, *, is_async: bool, dry_run: bool = False) -> int:
    from llama_index.core import Document
    from llama_index.core.extractors import SummaryExtractor
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.openai import OpenAIEmbedding
    from llama_index.llms.openai import OpenAI

    documents = [Document(text=text, metadata={"path": path}) for path, text in DOCS.items()]

    def pipeline(sync_http: Any, async_http: Any) -> IngestionPipeline:
        llm = OpenAI(
            model=CHAT,
            api_base=base_url,
            api_key="k",
            max_tokens=40,
            http_client=sync_http,
            async_http_client=async_http,
        )
        embedding = OpenAIEmbedding(
            model=EMBED, api_base=base_url, api_key="k", http_client=sync_http, async_http_client=async_http
        )
        return IngestionPipeline(
            transformations=[
                SentenceSplitter(chunk_size=128, chunk_overlap=0),
                SummaryExtractor(llm=llm, summaries=["self"], show_progress=False),
                embedding,
            ]
        )

    if not is_async:
        # SummaryExtractor runs the LLM's async client on a loop of its own, even from run()
        sync_http = recording_http_client(stats, dry_run=dry_run)
        nodes = pipeline(sync_http, async_recording_http_client(stats, dry_run=dry_run)).run(
            documents=documents
        )
        sync_http.close()
        return len(nodes)

    async def run() -> int:
        async_http = async_recording_http_client(stats, dry_run=dry_run)
        nodes = await pipeline(None, async_http).arun(documents=documents)
        await async_http.aclose()
        return len(nodes)

    return asyncio.run(run())


# LlamaIndex runs async work on event loops of its own that it never closes (its sync run() too),
# so their sockets and the loops themselves are only found by the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_llamaindex_sync_and_async_equal_server_usage() -> None:
    runs: dict[bool, StatsCollector] = {}
    with OpenAIServer() as server:
        for is_async in (False, True):
            before = server.usage_totals()
            stats = runs[is_async] = StatsCollector(None)
            nodes = llamaindex_run(server.base_url, stats, is_async=is_async)
            usage = {k: v - before[k] for k, v in server.usage_totals().items()}
            agg = stats.report()["aggregated"]
            summaries = agg["by_call_type"]["chat_summary"]["calls"]
            assert summaries == nodes > len(DOCS)  # one summary per node
            assert agg["total_api_calls_initiated"] == usage["requests"]
            assert agg["total_tokens_sent_to_apis"] == agg["billed_prompt_tokens"] == usage["prompt_tokens"]
            assert agg["billed_completion_tokens"] == usage["completion_tokens"]
    assert _totals(runs[False]) == _totals(runs[True])
    dry = StatsCollector(None)
    llamaindex_run("http://127.0.0.1:9/v1", dry, is_async=False, dry_run=True)
    assert _totals(dry) == _totals(runs[False])
