"""The main job: discover -> load -> chunk -> plan -> execute -> store, with every step accounted.

A dry run is the same flow with the transport answering instead of the network, and no writes
to the knowledge base.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from docingest.account import StatsCollector
from docingest.chunk import Chunker, validate_chunking
from docingest.discover import discover
from docingest.errors import ConfigError, SourceError
from docingest.execute import ClientSettings, Executor, build_async_client, resolve_credentials
from docingest.load import load
from docingest.models import Chunk, Document, Skipped, SourceFile
from docingest.plan import (
    CONTEXT_MODES,
    MAX_EMBEDDING_INPUT_TOKENS,
    ContextMode,
    EmbeddingItem,
    Planner,
    SummaryRequest,
    batches,
)
from docingest.simulate import SimOptions
from docingest.store import KnowledgeBase
from docingest.tokens import encoding_name_for_model
from docingest.transport import Counters

TRUE_VALUES = {"1", "true", "yes"}
#: Skip reasons whose files a naive pipeline would have sent: their tokens are counted as avoided.
AVOIDED_REASONS = frozenset({"lockfile", "minified", "generated"})


def chunk_preview(text: str, chars: int = 100) -> str:
    """The start of a chunk, whitespace collapsed: enough to recognise it in a report."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "\u2026"


def env_dry_run(environ: Any = os.environ) -> bool:
    """``DRY_RUN=true`` (also ``1``, ``yes``, any case); anything else is false."""
    return str(environ.get("DRY_RUN", "")).strip().lower() in TRUE_VALUES


@dataclass(slots=True)
class IngestConfig:
    source: Path
    dry_run: bool = False
    report: Path | None = None
    ledger: Path | None = None
    db: Path = Path(".docingest/kb.sqlite")
    chat_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    chunk_tokens: int = 512
    overlap_tokens: int = 0
    context: ContextMode = "section"
    loader: str = "smart"
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_file_bytes: int = 2_000_000
    summary_tokens: int = 128
    concurrency: int = 8
    max_retries: int = 4
    timeout: float = 60.0
    embedding_batch_size: int = 256

    def validate(self) -> None:
        validate_chunking(self.chunk_tokens, self.overlap_tokens)
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"--context must be one of {', '.join(CONTEXT_MODES)} (got {self.context!r})")
        if self.loader not in ("smart", "raw"):
            raise ConfigError(f"--loader must be smart or raw (got {self.loader!r})")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if not 1 <= self.embedding_batch_size <= 2048:
            raise ConfigError("--embedding-batch must be between 1 and 2048 (the API's limit)")
        if not self.source.exists():
            raise SourceError(f"source {self.source} does not exist")
        if not self.source.is_dir():
            raise SourceError(f"source {self.source} is not a directory")
        self.client_settings()  # refuses a real run with no key and no base URL

    def client_settings(self) -> ClientSettings:
        settings = ClientSettings(
            chat_model=self.chat_model,
            embedding_model=self.embedding_model,
            base_url=self.base_url,
            api_key=self.api_key,
            dry_run=self.dry_run,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        resolve_credentials(settings)
        return settings

    def public(self) -> dict[str, Any]:
        """The settings as they go into ledgers and reports: never the API key."""
        data = asdict(self)
        data.pop("api_key", None)
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in data.items()
        }


@dataclass(slots=True)
class Progress:
    """Counters the terminal shows while a run goes on."""

    files_total: int = 0
    files_done: int = 0
    chunks: int = 0
    calls_planned: int = 0
    calls_done: int = 0


ProgressHook = Callable[[Progress, StatsCollector], None]


@dataclass(slots=True)
class RunResult:
    stats: StatsCollector
    report_path: Path
    ledger_path: Path


def default_report_path(run_id: str) -> Path:
    return Path(".docingest") / "runs" / f"{run_id}.json"


def ledger_path_for(report_path: Path) -> Path:
    name = report_path.name[: -len(".json")] if report_path.name.endswith(".json") else report_path.name
    return report_path.with_name(name + ".ledger.jsonl")


class _Run:
    def __init__(
        self,
        config: IngestConfig,
        stats: StatsCollector,
        *,
        transport: httpx2.AsyncBaseTransport | None,
        sim_options: SimOptions | None,
        on_progress: ProgressHook | None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.counters = Counters()
        self.chat_counter = self.counters.for_model(config.chat_model)
        self.embedding_counter = self.counters.for_model(config.embedding_model)
        self.chunker = Chunker(
            self.chat_counter, chunk_tokens=config.chunk_tokens, overlap_tokens=config.overlap_tokens
        )
        self.planner = Planner(
            self.chat_counter,
            self.embedding_counter,
            chat_model=config.chat_model,
            embedding_model=config.embedding_model,
            context=config.context,
            summary_tokens=config.summary_tokens,
        )
        settings = config.client_settings()
        client = build_async_client(
            settings, stats, counters=self.counters, transport=transport, sim_options=sim_options
        )
        self.executor = Executor(client, settings)
        # The same plan under each --context mode: the report can say what another mode costs.
        self.alt_planners = {
            mode: Planner(
                self.chat_counter,
                self.embedding_counter,
                chat_model=config.chat_model,
                embedding_model=config.embedding_model,
                context=mode,
                summary_tokens=config.summary_tokens,
            )
            for mode in CONTEXT_MODES
        }
        self.kb: KnowledgeBase | None = None if config.dry_run else KnowledgeBase(config.db)
        self.progress = Progress()
        self.on_progress = on_progress
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_embeddings: list[EmbeddingItem] = []
        self._max_in_flight = max(config.concurrency, 1) * 4

    # -- the stages ----------------------------------------------------------------------------
    def _discover(self) -> list[SourceFile]:
        files: list[SourceFile] = []
        for item in discover(
            self.config.source,
            include=self.config.include,
            exclude=self.config.exclude,
            max_file_bytes=self.config.max_file_bytes,
        ):
            if isinstance(item, Skipped):
                self.stats.record_skip(
                    item.path, item.reason, item.detail, item.size, source_tokens=self._avoided_tokens(item)
                )
            else:
                files.append(item)
        return files

    def _avoided_tokens(self, item: Skipped) -> int | None:
        """Tokens of a generated file that was skipped (what a naive run would have sent), if cheap."""
        if item.reason not in AVOIDED_REASONS or item.size is None or item.size > self.config.max_file_bytes:
            return None
        try:
            data = (self.config.source / item.path).read_bytes()
        except OSError:
            return None
        return self.chat_counter.count(data.decode("utf-8", errors="replace"))

    def _load(self, file: SourceFile) -> Document | None:
        try:
            return load(file, mode="raw" if self.config.loader == "raw" else "smart")
        except OSError as exc:
            self.stats.record_skip(file.path, "unreadable", exc.strerror or str(exc), file.size)
            return None

    async def _account_file(self, file: SourceFile, doc: Document, chunks: list[Chunk]) -> tuple[int, int]:
        count = self.chat_counter.count
        # One batch, counted in worker threads while the event loop goes on with the API calls.
        texts = [doc.source_text, doc.text, *(part.text for part in doc.dropped)]
        source_tokens, document_tokens, *part_tokens = await self.chat_counter.acount_many(texts)
        dropped: Counter[str] = Counter()
        for part, n in zip(doc.dropped, part_tokens, strict=True):
            dropped[part.category] += n
        record: dict[str, Any] = {
            "type": "file",
            "path": doc.path,
            "kind": doc.kind,
            "size": file.size,
            "sha256": doc.sha256,
            "source_tokens": source_tokens,
            "document_tokens": document_tokens,
            "dropped_tokens": dict(dropped),
            "notes": list(doc.notes),
            # The summaries' prompt tokens under each --context mode (the run's own is one of them).
            "chat_plan_tokens": {
                mode: planner.prompt_tokens(doc, chunks)
                for mode, planner in self.alt_planners.items()
            },
            "metadata": doc.metadata,
        }
        if self.config.loader == "raw" and file.kind in ("markdown", "notebook"):
            # What the smart loader would have kept out: the non-text payload this run sends.
            smart = load(file, mode="smart")
            payload: Counter[str] = Counter()
            for part in smart.dropped:
                payload[part.category] += count(part.text)
            record["payload_tokens"] = dict(payload)
            record["smart_document_tokens"] = count(smart.text)
        self.stats.record(record)
        for c in chunks:
            self.stats.record_chunk(c.path, c.index, c.tokens, c.sha256, preview=chunk_preview(c.text))
        return source_tokens, document_tokens

    async def _spawn(self, work: Awaitable[None]) -> None:
        while len(self._tasks) >= self._max_in_flight:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _summarize(self, request: SummaryRequest) -> None:
        text, _error = await self.executor.summarize(request)
        if text is not None and self.kb is not None:
            self.kb.put_summary(
                request.key,
                model=self.config.chat_model,
                text=text,
                prompt_tokens=request.prompt_tokens,
                completion_tokens=None,
                run_id=self.stats.run_id,
            )
            self.kb.set_chunk_keys(request.chunk.path, request.chunk.index, summary_key=request.key)
        self._done_call()

    async def _embed(self, items: list[EmbeddingItem]) -> None:
        results = await self.executor.embed(items)
        if self.kb is not None:
            for item, (vector, _error) in zip(items, results, strict=True):
                if vector is not None:
                    self.kb.put_embedding(
                        item.key, model=self.config.embedding_model, vector=vector, run_id=self.stats.run_id
                    )
                    self.kb.set_chunk_keys(item.chunk.path, item.chunk.index, embedding_key=item.key)
        self._done_call()

    def _done_call(self) -> None:
        self.progress.calls_done += 1
        self._notify()

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress, self.stats)

    async def _queue_embeddings(self, items: list[EmbeddingItem], *, flush: bool = False) -> None:
        for item in items:
            if item.tokens > MAX_EMBEDDING_INPUT_TOKENS:
                self.stats.record(
                    {
                        "type": "unsent",
                        "call_type": "create_embedding",
                        "path": item.chunk.path,
                        "index": item.chunk.index,
                        "tokens": item.tokens,
                        "reason": f"input of {item.tokens} tokens is over the API's limit of "
                        f"{MAX_EMBEDDING_INPUT_TOKENS} tokens per embedding input; lower --chunk-tokens",
                    }
                )
            else:
                self._pending_embeddings.append(item)
        size = self.config.embedding_batch_size
        while self._pending_embeddings and (flush or len(self._pending_embeddings) >= size):
            batch = next(batches(self._pending_embeddings, max_inputs=size))
            del self._pending_embeddings[: len(batch)]
            self.progress.calls_planned += 1
            await self._spawn(self._embed(batch))

    async def run(self) -> None:
        files = self._discover()
        self.progress.files_total = len(files)
        self._notify()
        seen: list[str] = []
        for file in files:
            doc = self._load(file)
            if doc is None:
                continue
            seen.append(doc.path)
            chunks = self.chunker.chunk(doc)
            source_tokens, document_tokens = await self._account_file(file, doc, chunks)
            if self.kb is not None:
                self.kb.put_document(
                    doc,
                    chunks=chunks,
                    source_tokens=source_tokens,
                    document_tokens=document_tokens,
                    run_id=self.stats.run_id,
                )
            self.progress.chunks += len(chunks)
            requests = self.planner.summaries(doc, chunks)
            self.progress.calls_planned += len(requests)
            for request in requests:
                await self._spawn(self._summarize(request))
            await self._queue_embeddings(self.planner.embeddings(chunks))
            self.progress.files_done += 1
            self._notify()
        await self._queue_embeddings([], flush=True)
        while self._tasks:
            await asyncio.wait(self._tasks)
        if self.kb is not None:
            self.kb.remove_documents_except(seen)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.executor.aclose()
        if self.kb is not None:
            self.kb.close()


async def aingest(
    config: IngestConfig,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    sim_options: SimOptions | None = None,
    on_progress: ProgressHook | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Ingest ``config.source``; returns the statistics and where the report and ledger are."""
    config.validate()
    stats = StatsCollector(None, run_id=run_id)
    report_path = config.report or default_report_path(stats.run_id)
    ledger = config.ledger or ledger_path_for(report_path)
    stats = StatsCollector(ledger, run_id=stats.run_id)
    stats.start(
        dry_run=config.dry_run,
        source=str(config.source),
        config=config.public(),
        chat_model=config.chat_model,
        embedding_model=config.embedding_model,
        tokenizer={
            "chat": encoding_name_for_model(config.chat_model),
            "embedding": encoding_name_for_model(config.embedding_model),
            "library": "tiktoken",
        },
    )
    run = _Run(config, stats, transport=transport, sim_options=sim_options, on_progress=on_progress)
    status = "completed"
    if run.kb is not None:
        run.kb.begin_run(
            stats.run_id,
            started_at=str(stats.run.get("started_at")),
            source=str(config.source),
            config=config.public(),
            dry_run=config.dry_run,
        )
    try:
        await run.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        stats.finish(status)
        if run.kb is not None:
            run.kb.finish_run(
                stats.run_id,
                finished_at=str(stats.run.get("finished_at")),
                totals=stats.aggregated(),
                status=status,
            )
        await run.aclose()
    return RunResult(stats=stats, report_path=report_path, ledger_path=ledger)


def ingest(config: IngestConfig, **kwargs: Any) -> RunResult:
    """Synchronous entry point: a thin wrapper over :func:`aingest`."""
    return asyncio.run(aingest(config, **kwargs))
