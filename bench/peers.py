"""docingest beside LlamaIndex and LangChain, and beside the tokenizer floor, in one run.

    pip install -e '.[bench]'
    python bench/peers.py [CORPUS]            # default: ../shared/corpora/langgraph-docs

Every peer forecasts the same job: chunks of 512 tokens, one summary (gpt-4o-mini) and one
embedding (text-embedding-3-small) per chunk, with no network. Each runs in its own process, so
its wall time includes its imports and its peak RSS (``ru_maxrss`` of the waited-for child) is
its own. The table goes to stdout and ``bench/results/peers.json``; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "corpora" / "langgraph-docs"
CHUNK_TOKENS = 512
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
SUMMARY_TOKENS = 128


def _offline_tiktoken() -> None:
    """Point tiktoken (as the peers use it) at docingest's verified offline copy of its files."""
    from docingest.tokens import cache_dir, get_encoding

    get_encoding("o200k_base")
    get_encoding("cl100k_base")  # installs both files, named as tiktoken's cache expects
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir())


# --- the peers (each runs in a child process) -------------------------------------------------


def run_docingest(corpus: Path, work: Path) -> dict[str, Any]:
    import asyncio

    from docingest.pipeline import IngestConfig, aingest
    from docingest.report import write_run_report

    config = IngestConfig(source=corpus, dry_run=True, report=work / "docingest.json")
    t0 = time.perf_counter()
    result = asyncio.run(aingest(config))
    report = write_run_report(result.stats, result.report_path)
    agg = report["aggregated"]
    return {
        "run_s": round(time.perf_counter() - t0, 2),
        "llm_prompt_tokens": agg["total_tokens_sent_to_chat_model"],
        "embedding_tokens": agg["total_tokens_sent_to_embeddings"],
        "chunks": agg["chunks"],
        "note": "dry run through the OpenAI SDK and the dry-run transport, default settings",
    }


def run_llamaindex(corpus: Path, work: Path) -> dict[str, Any]:
    _offline_tiktoken()
    import tiktoken
    from llama_index.core import MockEmbedding, Settings, SimpleDirectoryReader
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
    from llama_index.core.extractors import SummaryExtractor
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.llms import MockLLM
    from llama_index.core.node_parser import SentenceSplitter

    counter = TokenCountingHandler(tokenizer=tiktoken.encoding_for_model(CHAT_MODEL).encode)
    Settings.callback_manager = CallbackManager([counter])
    Settings.llm = MockLLM(max_tokens=SUMMARY_TOKENS)
    Settings.embed_model = MockEmbedding(embed_dim=1536)
    documents = SimpleDirectoryReader(
        str(corpus), recursive=True, required_exts=[".md", ".ipynb"], raise_on_error=False
    ).load_data(show_progress=False)
    splitter = SentenceSplitter(
        chunk_size=CHUNK_TOKENS,
        chunk_overlap=0,
        tokenizer=tiktoken.encoding_for_model(CHAT_MODEL).encode,
    )
    pipeline = IngestionPipeline(
        transformations=[splitter, SummaryExtractor(summaries=["self"]), Settings.embed_model]
    )
    nodes = pipeline.run(documents=documents)
    readers = sorted({type(d).__name__ for d in documents})
    return {
        "llm_prompt_tokens": counter.prompt_llm_token_count,
        "embedding_tokens": counter.total_embedding_token_count,
        "chunks": len(nodes),
        "note": f"{len(documents)} documents ({', '.join(readers)}); .ipynb read as "
        + ("JSON text" if not _has_module("llama_index.readers.file") else "notebooks")
        + f"; TokenCountingHandler with the {CHAT_MODEL} tokenizer for both counts",
    }


def run_langchain(corpus: Path, work: Path) -> dict[str, Any]:
    _offline_tiktoken()
    import tiktoken
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    chat_enc = tiktoken.encoding_for_model(CHAT_MODEL)
    embed_enc = tiktoken.encoding_for_model(EMBEDDING_MODEL)

    class PromptTokens(BaseCallbackHandler):
        """OpenAI's chat formula over the messages each chat model call receives."""

        def __init__(self) -> None:
            self.tokens = 0

        def on_chat_model_start(
            self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
        ) -> None:
            for prompt in messages:
                self.tokens += 3 + sum(3 + len(chat_enc.encode(str(m.content))) for m in prompt)

    class CountingEmbeddings(DeterministicFakeEmbedding):
        tokens: int = 0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.tokens += sum(len(t) for t in embed_enc.encode_ordinary_batch(texts))
            return super().embed_documents(texts)

    documents = []
    for path in sorted(corpus.rglob("*")):  # what DirectoryLoader + TextLoader do, without the extra
        if path.is_file() and path.suffix in (".md", ".ipynb"):
            text = path.read_text("utf-8", errors="replace")
            documents.append(Document(page_content=text, metadata={"source": str(path)}))
    splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        model_name=CHAT_MODEL, chunk_size=CHUNK_TOKENS, chunk_overlap=0
    )
    chunks = splitter.split_documents(documents)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Summarize this chunk of technical documentation."), ("user", "{chunk}")]
    )
    counter = PromptTokens()
    chain = prompt | FakeListChatModel(responses=["A summary."])
    chain.batch([{"chunk": c.page_content} for c in chunks], config={"callbacks": [counter]})
    embeddings = CountingEmbeddings(size=1536)
    embeddings.embed_documents([c.page_content for c in chunks])
    return {
        "llm_prompt_tokens": counter.tokens,
        "embedding_tokens": embeddings.tokens,
        "chunks": len(chunks),
        "note": "files read as text (.ipynb as JSON text; langchain-community's loaders do the "
        "same for TextLoader); FakeListChatModel and DeterministicFakeEmbedding, counted with tiktoken",
    }


def run_floor(corpus: Path, work: Path) -> dict[str, Any]:
    """Tokenize, once, every distinct text the dry run sends (tiktoken's batch API, one process).

    The texts are rebuilt with docingest's own stages (load, chunk, plan); only the encoding
    is timed."""
    from docingest.chunk import Chunker
    from docingest.discover import discover
    from docingest.load import load
    from docingest.models import SourceFile
    from docingest.plan import Planner
    from docingest.tokens import TokenCounter, get_encoding

    chat, embed = TokenCounter.for_model(CHAT_MODEL), TokenCounter.for_model(EMBEDDING_MODEL)
    chunker = Chunker(chat, chunk_tokens=CHUNK_TOKENS)
    planner = Planner(chat, embed, chat_model=CHAT_MODEL, embedding_model=EMBEDDING_MODEL)
    chat_texts: dict[str, None] = {}
    embed_texts: dict[str, None] = {}
    for file in discover(corpus):
        if isinstance(file, SourceFile):
            doc = load(file)
            chunks = chunker.chunk(doc)
            for request in planner.summaries(doc, chunks):
                chat_texts.update((m["content"], None) for m in request.messages)
            embed_texts.update((planner.embedding_input(c), None) for c in chunks)
    o200k, cl100k = get_encoding(chat.encoding_name), get_encoding(embed.encoding_name)
    t0 = time.perf_counter()
    n_chat = sum(map(len, o200k.encode_ordinary_batch(list(chat_texts))))
    n_embed = sum(map(len, cl100k.encode_ordinary_batch(list(embed_texts))))
    seconds = time.perf_counter() - t0
    return {
        "floor_s": round(seconds, 3),
        "texts": len(chat_texts) + len(embed_texts),
        "tokens": n_chat + n_embed,
        "note": "distinct message contents and embedding inputs of the default dry run",
    }


def run_parts(corpus: Path, work: Path) -> dict[str, Any]:
    """docingest's dry run taken apart: each stage alone, one after the other.

    - ``plan_s``: discover, load, chunk and plan every file (every count the plan needs), of which
      ``splitter_s`` is semantic-text-splitter alone on the loaded documents;
    - ``account_s``: counting each file's source, document and dropped texts (tokens not sent);
    - ``api_s``: the planned requests through the OpenAI SDK, the dry-run transport and the
      recording (a ledger written), concurrency 16, no planning; ``sdk_s``: the SDK alone for the
      same requests over a transport that returns one canned answer;
    - ``counted_floor_s``: tiktoken's batch API over every distinct text docingest counts (the
      floor's texts plus sources, documents, dropped parts and the other --context modes' prompts).
    """
    import asyncio

    import httpx2

    from docingest.account import StatsCollector
    from docingest.chunk import Chunker
    from docingest.discover import discover
    from docingest.execute import ClientSettings, Executor, build_async_client
    from docingest.load import load
    from docingest.models import SourceFile
    from docingest.plan import CONTEXT_MODES, Planner, batches
    from docingest.tokens import TokenCounter, get_encoding

    chat, embed = TokenCounter.for_model(CHAT_MODEL), TokenCounter.for_model(EMBEDDING_MODEL)
    chunker = Chunker(chat, chunk_tokens=CHUNK_TOKENS)
    planners = {
        mode: Planner(chat, embed, chat_model=CHAT_MODEL, embedding_model=EMBEDDING_MODEL, context=mode)
        for mode in CONTEXT_MODES
    }
    planner = planners["section"]
    t0 = time.perf_counter()
    docs, requests, items = [], [], []
    for file in discover(corpus):
        if isinstance(file, SourceFile):
            doc = load(file)
            chunks = chunker.chunk(doc)
            requests += planner.summaries(doc, chunks)
            items += planner.embeddings(chunks)
            for other in planners.values():
                other.prompt_tokens(doc, chunks)
            docs.append(doc)
    plan_s = time.perf_counter() - t0

    splitter = chunker._markdown  # the splitter as the Chunker configures it
    t0 = time.perf_counter()
    for doc in docs:
        splitter.chunk_indices(doc.text)
    splitter_s = time.perf_counter() - t0

    fresh = TokenCounter.for_model(CHAT_MODEL)  # nothing cached
    t0 = time.perf_counter()
    for doc in docs:
        fresh.count_many([doc.source_text, doc.text, *(part.text for part in doc.dropped)])
    account_s = time.perf_counter() - t0

    class Canned(httpx2.AsyncBaseTransport):
        chat = json.dumps(
            {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "s"}}]}
        ).encode()

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            await request.aread()
            if request.url.path.endswith("/embeddings"):
                n = len(json.loads(request.content)["input"])
                data = [{"index": i, "embedding": [0.0]} for i in range(n)]
                return httpx2.Response(200, json={"object": "list", "data": data})
            return httpx2.Response(200, content=self.chat, headers={"content-type": "application/json"})

    embedding_batches = list(batches(items))

    async def send(transport: httpx2.AsyncBaseTransport | None, ledger: Path | None) -> float:
        settings = ClientSettings(dry_run=transport is None, concurrency=16, api_key="sk-bench")
        if ledger is not None:
            ledger.unlink(missing_ok=True)
        stats = StatsCollector(ledger)
        client = build_async_client(settings, stats, transport=transport)
        executor = Executor(client, settings, stats=stats)
        t0 = time.perf_counter()
        await asyncio.gather(
            *(executor.summarize(r) for r in requests), *(executor.embed(b) for b in embedding_batches)
        )
        seconds = time.perf_counter() - t0
        await executor.aclose()
        stats.finish()
        return seconds

    api_s = asyncio.run(send(None, work / "parts.ledger.jsonl"))
    sdk_s = asyncio.run(send(Canned(), None))

    texts: dict[str, dict[str, None]] = {"chat": {}, "embed": {}}
    for doc in docs:
        texts["chat"].update(dict.fromkeys([doc.source_text, doc.text, *(p.text for p in doc.dropped)]))
    for r in requests:
        texts["chat"].update((m["content"], None) for m in r.messages)
        texts["chat"][r.chunk.text] = None
    for doc in docs:
        texts["chat"][f"Full document {doc.path}:\n\n{doc.text}"] = None
    texts["embed"].update((i.input, None) for i in items)
    o200k, cl100k = get_encoding(chat.encoding_name), get_encoding(embed.encoding_name)
    t0 = time.perf_counter()
    counted = sum(map(len, o200k.encode_ordinary_batch(list(texts["chat"]))))
    counted += sum(map(len, cl100k.encode_ordinary_batch(list(texts["embed"]))))
    counted_floor_s = time.perf_counter() - t0
    return {
        "plan_s": round(plan_s, 3),
        "splitter_s": round(splitter_s, 3),
        "account_s": round(account_s, 3),
        "api_s": round(api_s, 3),
        "sdk_s": round(sdk_s, 3),
        "requests": len(requests) + len(embedding_batches),
        "counted_floor_s": round(counted_floor_s, 3),
        "counted_texts": len(texts["chat"]) + len(texts["embed"]),
        "counted_tokens": counted,
        "note": "each stage alone, one after another (see run_parts); the run overlaps them",
    }


PEERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "docingest": run_docingest,
    "llamaindex": run_llamaindex,
    "langchain": run_langchain,
    "floor": run_floor,
    "parts": run_parts,
}


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# --- the parent: one child per peer -----------------------------------------------------------


def measure(peer: str, corpus: Path, work: Path) -> dict[str, Any]:
    out = work / f"{peer}.result.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", peer, str(corpus), "--work", str(work)]
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    rss = round(usage.ru_maxrss / 1024)
    row: dict[str, Any] = {"peer": peer, "wall_s": round(wall, 2), "peak_rss_mb": rss}
    if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
        row["error"] = f"exit code {os.waitstatus_to_exitcode(status)}; see the output above"
        return row
    row.update(json.loads(out.read_text()))
    return row


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and b else "-"


def table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["peer"] == "docingest")
    cols = ("llm_prompt_tokens", "embedding_tokens", "wall_s", "peak_rss_mb")
    lines = [
        f"{'peer':<11} {'LLM prompt tok':>15} {'(ratio)':>8} {'embed tok':>12} {'(ratio)':>8} "
        f"{'wall s':>8} {'(ratio)':>8} {'peak RSS MB':>11} {'(ratio)':>8}"
    ]
    for r in rows:
        if r["peer"] in ("floor", "parts"):
            continue
        cells = [f"{r['peer']:<11}"]
        for col, width in zip(cols, (15, 12, 8, 11), strict=True):
            value = r.get(col)
            cells.append(f"{value:>{width},}" if isinstance(value, int) else f"{value!s:>{width}}")
            cells.append(f"{_ratio(value, base.get(col)):>8}")
        lines.append(" ".join(cells))
    floor = next((r for r in rows if r["peer"] == "floor"), None)
    if floor and "floor_s" in floor:
        lines.append(
            f"floor: tokenizing the {floor['texts']:,} distinct texts the dry run sends "
            f"({floor['tokens']:,} tokens) takes {floor['floor_s']} s; docingest's dry run is "
            f"{base['wall_s'] / floor['floor_s']:.1f}x that as a process (imports included), "
            f"{base.get('run_s', 0) / floor['floor_s']:.1f}x in process (run and report only)"
        )
    parts = next((r for r in rows if r["peer"] == "parts"), None)
    if parts and "plan_s" in parts:
        lines.append(
            f"docingest's stages alone, one after another: load+chunk+plan {parts['plan_s']} s "
            f"(of which the splitter {parts['splitter_s']} s), counting source/document/dropped "
            f"tokens {parts['account_s']} s, {parts['requests']:,} requests through the SDK, the "
            f"dry-run transport and the ledger {parts['api_s']} s (the SDK alone over a canned "
            f"answer {parts['sdk_s']} s); sum "
            f"{parts['plan_s'] + parts['account_s'] + parts['api_s']:.2f} s"
        )
        lines.append(
            f"counted floor: tokenizing once every distinct text docingest counts "
            f"({parts['counted_texts']:,} texts, {parts['counted_tokens']:,} tokens) takes "
            f"{parts['counted_floor_s']} s; the dry run in process is "
            f"{base.get('run_s', 0) / parts['counted_floor_s']:.1f}x that"
        )
    for r in rows:
        for key in ("note", "error"):
            if r.get(key):
                lines.append(f"  {r['peer']}: {key}: {r[key]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--peers", nargs="*", default=list(PEERS))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "docingest-peers"
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        result = PEERS[args.child](args.corpus.resolve(), args.work)
        (args.work / f"{args.child}.result.json").write_text(json.dumps(result))
        return 0
    rows = []
    for peer in args.peers:
        print(f"running {peer} ...", file=sys.stderr, flush=True)
        rows.append(measure(peer, args.corpus.resolve(), args.work))
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = {"corpus": str(args.corpus), "chunk_tokens": CHUNK_TOKENS, "rows": rows}
    (args.out / f"peers-{stamp}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / f"peers-{stamp}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
