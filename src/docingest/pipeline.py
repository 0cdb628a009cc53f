"""The main job: discover -> load -> chunk -> plan -> execute -> store, with every step accounted.

A dry run is the same flow with the transport answering instead of the network, and no writes
to the knowledge base.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from docingest.account import StatsCollector
from docingest.budget import HOW_TO_LOWER, Forecast, TokenBudget, batch_sizes, pricer_for
from docingest.config import IngestConfig, default_report_path, ledger_path_for
from docingest.discover import discover
from docingest.errors import BudgetExceeded, ConfigError
from docingest.execute import Executor, build_async_client
from docingest.models import Chunk, Skipped, SourceFile
from docingest.plan import (
    MAX_EMBEDDING_INPUT_TOKENS,
    EmbeddingItem,
    SummaryRequest,
    batches,
)
from docingest.prepare import FilePlan, Preparer
from docingest.ratelimit import RateLimiter
from docingest.simulate import SimOptions
from docingest.store import KnowledgeBase
from docingest.tokens import encoding_name_for_model
from docingest.transport import Counters

#: Skip reasons whose files a naive pipeline would have sent: their tokens are counted as avoided.
__all__ = ["IngestConfig", "Progress", "RunResult", "aforecast", "aingest", "ingest"]

AVOIDED_REASONS = frozenset({"lockfile", "minified", "generated"})
# Characters of files whose tokens are still being counted while the run goes on; past this the
# run waits for the counting, so memory stays bounded when counting is the slowest stage.
COUNTING_BACKLOG_CHARS = 32 * 1024 * 1024


def chunk_preview(text: str, chars: int = 100) -> str:
    """The start of a chunk, whitespace collapsed: enough to recognise it in a report."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "\u2026"


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
    stopped: str | None = None  # why the run stopped before the end (the budget); None: it did not
    #: the API refused the key (401): the run stopped there, as every other request would be refused
    key_refused: bool = False
    forecast: Forecast | None = None  # the forecast checked against the budget, if there was one
    #: requests that failed for good (after any retries), by the first words of their error
    failures: dict[str, int] = field(default_factory=dict)


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
        self.preparer = Preparer(config, stats, self.chat_counter, self.embedding_counter)
        settings = config.client_settings()
        self.budget = TokenBudget(
            max_tokens=config.max_tokens,
            max_cost=config.max_cost,
            pricer=pricer_for(
                config.max_cost, [config.chat_model, config.embedding_model], config.price_file
            ),
        )
        # a dry run answers at once: pacing it would only slow the forecast down
        self.limiter = None if config.dry_run else RateLimiter(config.rpm, config.tpm)
        client = build_async_client(
            settings,
            stats,
            counters=self.counters,
            transport=transport,
            sim_options=sim_options,
            limiter=self.limiter,
            budget=self.budget if self.budget.enabled else None,
        )
        self.kb: KnowledgeBase | None = _open_kb(config)
        self.writable = self.kb is not None and not self.kb.readonly
        self.executor = Executor(client, settings, stats=stats, defer=self.writable)
        self.progress = Progress()
        self.on_progress = on_progress
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_embeddings: list[EmbeddingItem] = []
        self._max_in_flight = max(config.concurrency, 1) * 4
        self._counting_chars = 0  # characters in files whose accounting has not finished
        # A dry run writes no knowledge base, where the real run finds what this run already got
        # (a text repeated after its first request was answered): the dry run remembers the
        # answered keys instead (64 bits of each), so that its forecast is the real run's.
        self._answered: set[int] | None = None if self.writable else set()
        # requests in flight by content key, with the chunks waiting for the same result
        self._summary_waiters: dict[str, list[SummaryRequest]] = {}
        self._embedding_waiters: dict[str, list[EmbeddingItem]] = {}
        self.stopped: str | None = None  # why the run stopped early (the budget, a refused key)
        self.failures: dict[str, int] = {}  # requests that failed for good, by error
        self._error: BaseException | None = None

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

    async def _account_file(self, plan: FilePlan) -> None:
        """The file's record: its tokens at each level, also written to its knowledge-base row.
        A task beside the file's API calls: the texts (a notebook's source can be many times its
        document) are counted in worker threads while the event loop goes on."""
        file, doc = plan.file, plan.doc
        texts = [doc.source_text, doc.text, *(part.text for part in doc.dropped)]
        size = sum(map(len, texts))
        self._counting_chars += size
        try:
            source_tokens, document_tokens, *part_tokens = await self.chat_counter.acount_many(texts)
        finally:
            self._counting_chars -= size
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
            "chat_plan_tokens": plan.plan_tokens,
            "metadata": doc.metadata,
            # stored as it is, every chunk summarized and embedded by the same requests: nothing sent
            "unchanged": plan.unchanged,
            **plan.extra,
        }
        self.stats.record(record)
        if self.kb is not None and self.writable:
            self.kb.set_document_tokens(doc.path, source_tokens, document_tokens)

    async def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            while len(self._tasks) >= self._max_in_flight:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # interrupted while waiting: the work never starts
            work.close()
            raise
        task: asyncio.Task[None] = asyncio.ensure_future(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:  # a bug or a broken knowledge base: stop, and say so at the end
            self._error = self._error or exc
            self.stopped = self.stopped or f"{type(exc).__name__}: {exc}"

    @contextmanager
    def _storing(self) -> Iterator[None]:
        """One knowledge-base transaction (none in a dry run)."""
        if self.kb is not None and self.writable:
            with self.kb.transaction():
                yield
        else:
            yield

    # -- cache -----------------------------------------------------------------------------------
    def _unchanged(self, plan: FilePlan) -> bool:
        """The knowledge base holds this document as it is now, every chunk summarized and embedded
        by the same requests: nothing to send, nothing to write."""
        doc, chunks, requests, items = plan.doc, plan.chunks, plan.requests, plan.items
        if self.kb is None or self.kb.document_sha(doc.path) != doc.sha256:
            return False
        stored = self.kb.get_chunks(doc.path)
        if len(stored) != len(chunks):
            return False
        summary_keys = {r.chunk.index: r.key for r in requests}
        embedding_keys = {i.chunk.index: i.key for i in items}
        return all(
            s.index == c.index
            and s.sha256 == c.sha256
            and s.summary_key == summary_keys.get(c.index)
            and s.embedding_key == embedding_keys.get(c.index)
            for s, c in zip(stored, chunks, strict=True)
        )

    def _remember_answer(self, key: str) -> None:
        if self._answered is not None:
            self._answered.add(int(key[:16], 16))

    def _has_answer(self, key: str) -> bool:
        return self._answered is not None and int(key[:16], 16) in self._answered

    def _cache_hit(self, chunk: Chunk, call_type: str, tokens: int, source: str) -> None:
        self.stats.record(
            {
                "type": "cache_hit",
                "call_type": call_type,
                "path": chunk.path,
                "index": chunk.index,
                "tokens_saved": tokens,
                "source": source,  # "knowledge_base" or "this_run" (an identical request earlier)
            }
        )

    def _unsent(self, chunk: Chunk, call_type: str, tokens: int, reason: str) -> None:
        self.stats.record(
            {
                "type": "unsent",
                "call_type": call_type,
                "path": chunk.path,
                "index": chunk.index,
                "tokens": tokens,
                "reason": reason,
            }
        )

    def _link(
        self, chunk: Chunk, *, summary_key: str | None = None, embedding_key: str | None = None
    ) -> None:
        if self.kb is not None and self.writable:
            self.kb.set_chunk_keys(
                chunk.path, chunk.index, summary_key=summary_key, embedding_key=embedding_key
            )

    # -- summaries ---------------------------------------------------------------------------------
    async def _submit_summary(self, request: SummaryRequest) -> None:
        waiters = self._summary_waiters.get(request.key)
        if waiters is not None:  # the same request is in flight: wait for its answer
            waiters.append(request)
            return
        if self._has_answer(request.key) or (
            self.kb is not None and self.kb.get_summary(request.key) is not None
        ):
            self._link(request.chunk, summary_key=request.key)
            self._cache_hit(request.chunk, "chat_summary", request.prompt_tokens, "knowledge_base")
            return
        self._summary_waiters[request.key] = []
        self.progress.calls_planned += 1
        await self._spawn(self._summarize(request))

    async def _summarize(self, request: SummaryRequest) -> None:
        outcome = await self.executor.summarize(request)
        followers = self._summary_waiters.pop(request.key, [])
        try:
            with self._storing():
                if outcome.value is not None and self.kb is not None and self.writable:
                    self.kb.put_summary(
                        request.key,
                        model=self.config.chat_model,
                        text=outcome.value,
                        prompt_tokens=request.prompt_tokens,
                        completion_tokens=_billed_completion(outcome.records),
                        run_id=self.stats.run_id,
                    )
                    for r in (request, *followers):
                        self._link(r.chunk, summary_key=request.key)
                self.executor.write(outcome.records)  # the ledger's record, then the commit
        finally:
            self.executor.write(outcome.records)
        if outcome.refused:
            self._stop(outcome.error)
            self._unsent(request.chunk, "chat_summary", request.prompt_tokens, _budget_reason(outcome.error))
        elif outcome.held:
            self._unsent(request.chunk, "chat_summary", request.prompt_tokens, outcome.error or "held back")
        elif outcome.value is None:
            self._failed(outcome.error)
        else:
            self._remember_answer(request.key)
        for r in followers:
            if outcome.value is not None:
                self._cache_hit(r.chunk, "chat_summary", r.prompt_tokens, "this_run")
            else:
                self._unsent(
                    r.chunk, "chat_summary", r.prompt_tokens, f"an identical request failed: {outcome.error}"
                )
        self._done_call()

    def _failed(self, error: str | None) -> None:
        reason = (error or "unknown error").split(":", 1)[0]
        self.failures[reason] = self.failures.get(reason, 0) + 1
        if reason.startswith("401"):  # a wrong key: every other request would fail the same way
            self._stop(f"the API refused the key ({reason})")
            self.executor.halted = f"not sent: the API refused the key ({reason}) of an earlier request"

    def _stop(self, reason: str | None) -> None:
        self.stopped = self.stopped or reason or "stopped"

    # -- embeddings --------------------------------------------------------------------------------
    async def _embed(self, items: list[EmbeddingItem]) -> None:
        outcome = await self.executor.embed(items)
        followers = {item.key: self._embedding_waiters.pop(item.key, []) for item in items}
        try:
            with self._storing():
                for item, (vector, _error) in zip(items, outcome.results, strict=True):
                    if vector is not None and self.kb is not None and self.writable:
                        self.kb.put_embedding(
                            item.key,
                            model=self.config.embedding_model,
                            vector=vector,
                            run_id=self.stats.run_id,
                        )
                        for it in (item, *followers[item.key]):
                            self._link(it.chunk, embedding_key=item.key)
                self.executor.write(outcome.records)
        finally:
            self.executor.write(outcome.records)
        for failure in outcome.failed:  # per request, however many inputs it carried
            self._failed(failure)
        for item, (vector, _error) in zip(items, outcome.results, strict=True):
            if vector is not None:
                self._remember_answer(item.key)
        for item, (vector, error) in zip(items, outcome.results, strict=True):
            if vector is None and outcome.refused and error == self.budget.refused:
                self._stop(error)
                self._unsent(item.chunk, "create_embedding", item.tokens, _budget_reason(error))
            elif vector is None and outcome.held:
                self._unsent(item.chunk, "create_embedding", item.tokens, error or "held back")
            for it in followers[item.key]:
                if vector is not None:
                    self._cache_hit(it.chunk, "create_embedding", it.tokens, "this_run")
                else:
                    self._unsent(
                        it.chunk, "create_embedding", it.tokens, f"an identical input failed: {error}"
                    )
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
                self._unsent(
                    item.chunk,
                    "create_embedding",
                    item.tokens,
                    f"input of {item.tokens} tokens is over the API's limit of "
                    f"{MAX_EMBEDDING_INPUT_TOKENS} tokens per embedding input; lower --chunk-tokens",
                )
            elif (waiters := self._embedding_waiters.get(item.key)) is not None:
                waiters.append(item)
            elif self._has_answer(item.key) or (self.kb is not None and self.kb.has_embedding(item.key)):
                self._link(item.chunk, embedding_key=item.key)
                self._cache_hit(item.chunk, "create_embedding", item.tokens, "knowledge_base")
            else:
                self._embedding_waiters[item.key] = []
                self._pending_embeddings.append(item)
        size = self.config.embedding_batch_size
        while self._pending_embeddings and (flush or len(self._pending_embeddings) >= size):
            if self.stopped:
                return
            batch = next(batches(self._pending_embeddings, max_inputs=size))
            del self._pending_embeddings[: len(batch)]
            self.progress.calls_planned += 1
            await self._spawn(self._embed(batch))

    # -- the run -----------------------------------------------------------------------------------
    def _plan(self, file: SourceFile) -> FilePlan | None:
        plan = self.preparer.prepare(file)
        if plan is not None:
            plan.unchanged = self._unchanged(plan)
        return plan

    async def run(self) -> None:
        files = self._discover()
        self.progress.files_total = len(files)
        self._notify()
        seen: list[str] = []
        plans = self.preparer.ahead(files)
        async for plan in plans:
            if self.stopped:
                break
            plan.unchanged = self._unchanged(plan)
            doc, chunks = plan.doc, plan.chunks
            seen.append(doc.path)
            for c in chunks:
                self.stats.record_chunk(c.path, c.index, c.tokens, c.sha256, preview=chunk_preview(c.text))
            if not plan.unchanged and self.kb is not None and self.writable:
                # its token counts follow when the file's accounting is done
                self.kb.put_document(
                    doc, chunks=chunks, source_tokens=None, document_tokens=None, run_id=self.stats.run_id
                )
            while self._counting_chars > COUNTING_BACKLOG_CHARS and self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            await self._spawn(self._account_file(plan))
            self.progress.chunks += len(chunks)
            if plan.unchanged:
                for request in plan.requests:
                    self._cache_hit(request.chunk, "chat_summary", request.prompt_tokens, "knowledge_base")
                for item in plan.items:
                    self._cache_hit(item.chunk, "create_embedding", item.tokens, "knowledge_base")
            else:
                for request in plan.requests:
                    if self.stopped:
                        break
                    await self._submit_summary(request)
                await self._queue_embeddings(plan.items)
            self.progress.files_done += 1
            self._notify()
        await plans.aclose()
        await self._queue_embeddings([], flush=True)
        while self._tasks:
            await asyncio.wait(self._tasks)
        if self._error is not None:
            raise self._error
        if self.kb is not None and self.writable and not self.stopped:
            self.kb.remove_documents_except(seen)

    def forecast(self) -> Forecast:
        """What the run will send, request by request as :meth:`run` would (cache and identical
        requests included), without sending or writing anything."""
        fc = Forecast()
        summaries: set[str] = set()
        embeddings: set[str] = set()
        inputs: list[int] = []  # tokens of each input to embed, batched at the end as run() does
        for file in self._discover():
            plan = self._plan(file)
            if plan is None or plan.unchanged:
                continue
            for request in plan.requests:
                if request.key in summaries or (self.kb is not None and self.kb.get_summary(request.key)):
                    continue
                summaries.add(request.key)
                fc.add(self.config.chat_model, request.prompt_tokens, request.max_tokens, self.budget)
            for item in plan.items:
                if item.tokens > MAX_EMBEDDING_INPUT_TOKENS or item.key in embeddings:
                    continue
                if self.kb is not None and self.kb.has_embedding(item.key):
                    continue
                embeddings.add(item.key)
                inputs.append(item.tokens)
        for batch in batch_sizes(inputs, self.config.embedding_batch_size):
            fc.add(self.config.embedding_model, batch, 0, self.budget)
        return fc

    async def cancel(self) -> None:
        """Cancel the tasks still running and wait for them: a request in flight is recorded
        (as interrupted, see ``AsyncRecordingTransport``) while the ledger is still open."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.preparer.close()
        await self.executor.aclose()
        if self.kb is not None:
            self.kb.close()


def _budget_reason(refusal: str | None) -> str:
    """Why a request was held back: every request after the first refusal shares its message,
    which names that first request's figures."""
    return f"budget: not sent once the run reached its budget (the first refusal: {refusal})"


def _open_kb(config: IngestConfig) -> KnowledgeBase | None:
    """The knowledge base; in a dry run, the existing one read-only (the forecast counts its cache)."""
    if not config.dry_run:
        return KnowledgeBase(config.db)
    if not config.db.is_file():
        return None
    try:
        return KnowledgeBase(config.db, readonly=True)
    except ConfigError:
        return None


def _billed_completion(records: list[dict[str, Any]]) -> int | None:
    for record in records:
        billed = record.get("billed") or {}
        if isinstance(billed.get("completion_tokens"), int):
            return int(billed["completion_tokens"])
    return None


async def aforecast(
    config: IngestConfig,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    sim_options: SimOptions | None = None,
) -> Forecast:
    """What ``config``'s run would send (the knowledge base's cache counted), sending nothing."""
    config.validate()
    run = _Run(config, StatsCollector(None), transport=transport, sim_options=sim_options, on_progress=None)
    try:
        return run.forecast()
    finally:
        await run.aclose()


async def aingest(
    config: IngestConfig,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    sim_options: SimOptions | None = None,
    on_progress: ProgressHook | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Ingest ``config.source``; returns the statistics and where the report and ledger are.

    With a budget (``max_tokens``, ``max_cost``) the whole plan is forecast first and the run
    refuses to start (:class:`BudgetExceeded`) when the forecast is over it; during the run, a
    request that would cross it is not sent and the run stops (``RunResult.stopped``).
    A real run refuses to start (:class:`ConfigError`) while another one writes the same knowledge base.
    """
    config.validate()
    with nullcontext() if config.dry_run else _writer_lock(config.db):
        return await _aingest(
            config, transport=transport, sim_options=sim_options, on_progress=on_progress, run_id=run_id
        )


@contextmanager
def _writer_lock(db: Path) -> Iterator[None]:
    """One run at a time writes a knowledge base (two at once would both send everything): an
    advisory lock on ``DB.lock``, released when the run ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ConfigError(
                f"another docingest run ({holder}) is writing {db}: wait for it to end, or give this "
                "run another --db"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


async def _aingest(
    config: IngestConfig,
    *,
    transport: httpx2.AsyncBaseTransport | None,
    sim_options: SimOptions | None,
    on_progress: ProgressHook | None,
    run_id: str | None,
) -> RunResult:
    forecast: Forecast | None = None
    if config.max_tokens is not None or config.max_cost is not None:
        forecast = await aforecast(config, transport=transport, sim_options=sim_options)
        over = forecast.over(config.max_tokens, config.max_cost)
        if over is not None:
            raise BudgetExceeded(f"{over}: nothing was sent; {HOW_TO_LOWER}")
    stats = StatsCollector(None, run_id=run_id)
    report_path = config.report or default_report_path(stats.run_id)
    ledger = config.ledger or ledger_path_for(report_path)
    if ledger.exists():  # each run has its own ledger: never append to another run's
        stem = ledger.name[: -len(".ledger.jsonl")] if ledger.name.endswith(".ledger.jsonl") else ledger.stem
        ledger = ledger.with_name(f"{stem}.{stats.run_id}.ledger.jsonl")
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
    if forecast is not None:
        stats.record({"type": "forecast", **forecast.as_record()})
    try:
        run = _Run(config, stats, transport=transport, sim_options=sim_options, on_progress=on_progress)
    except BaseException:
        stats.finish("failed")
        raise
    status = "completed"
    if run.kb is not None and run.writable:
        run.kb.begin_run(
            stats.run_id,
            started_at=str(stats.run.get("started_at")),
            source=str(config.source),
            config=config.public(),
            dry_run=config.dry_run,
        )
    try:
        await run.run()
        if run.stopped is not None:
            status = "stopped"
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        await run.cancel()  # before the ledger closes
        stats.finish(status)
        if run.kb is not None and run.writable:
            run.kb.finish_run(
                stats.run_id,
                finished_at=str(stats.run.get("finished_at")),
                totals=stats.aggregated(),
                status=status,
            )
        await run.aclose()
    return RunResult(
        stats=stats,
        report_path=report_path,
        ledger_path=ledger,
        stopped=run.stopped,
        key_refused=run.executor.halted is not None,  # only a refused key halts it
        forecast=forecast,
        failures=dict(run.failures),
    )


def ingest(config: IngestConfig, **kwargs: Any) -> RunResult:
    """Synchronous entry point: a thin wrapper over :func:`aingest`."""
    return asyncio.run(aingest(config, **kwargs))
