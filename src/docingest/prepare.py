"""One file's work before any API call: load, chunk and plan its requests, with exact counts.

Nothing here touches the knowledge base or the network, so files are prepared in a worker
thread ahead of the one whose requests are being sent: the splitter and tiktoken run outside the
GIL while the event loop drives the SDK.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from docingest.account import StatsCollector
from docingest.chunk import Chunker
from docingest.config import IngestConfig
from docingest.load import load
from docingest.models import Chunk, Document, SourceFile
from docingest.plan import CONTEXT_MODES, EmbeddingItem, Planner, SummaryRequest
from docingest.tokens import TokenCounter

#: Files prepared ahead of the one being sent (each holds its text and its plan in memory).
PLAN_AHEAD = 2


@dataclass(slots=True)
class FilePlan:
    file: SourceFile
    doc: Document
    chunks: list[Chunk]
    requests: list[SummaryRequest]
    items: list[EmbeddingItem]
    plan_tokens: dict[str, int]  # the summaries' prompt tokens under each --context mode
    extra: dict[str, Any] = field(default_factory=dict)  # more figures for the file's record
    unchanged: bool = False  # the knowledge base holds it as it is: nothing to send (set by the run)


class Preparer:
    """Loads, chunks and plans files as ``config`` says; a file that cannot be read is recorded
    as skipped in ``stats`` and gives no plan."""

    def __init__(
        self,
        config: IngestConfig,
        stats: StatsCollector,
        chat_counter: TokenCounter,
        embedding_counter: TokenCounter,
    ) -> None:
        self.config = config
        self.stats = stats
        self.chat_counter = chat_counter
        self.chunker = Chunker(
            chat_counter, chunk_tokens=config.chunk_tokens, overlap_tokens=config.overlap_tokens
        )
        # The same plan under each --context mode: the report can say what another mode costs.
        self.planners = {
            mode: Planner(
                chat_counter,
                embedding_counter,
                chat_model=config.chat_model,
                embedding_model=config.embedding_model,
                context=mode,
                summary_tokens=config.summary_tokens,
            )
            for mode in CONTEXT_MODES
        }
        self.planner = self.planners[config.context]
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="docingest-plan")

    def prepare(self, file: SourceFile) -> FilePlan | None:
        doc = self._load(file)
        if doc is None:
            return None
        chunks = self.chunker.chunk(doc)
        plan = FilePlan(
            file,
            doc,
            chunks,
            self.planner.summaries(doc, chunks),
            self.planner.embeddings(chunks),
            {mode: planner.prompt_tokens(doc, chunks) for mode, planner in self.planners.items()},
        )
        if self.config.loader == "raw" and file.kind in ("markdown", "notebook"):
            # What the smart loader would have kept out: the non-text payload this run sends.
            smart = load(file, mode="smart")
            payload: Counter[str] = Counter()
            for part in smart.dropped:
                payload[part.category] += self.chat_counter.count(part.text)
            plan.extra["payload_tokens"] = dict(payload)
            plan.extra["smart_document_tokens"] = self.chat_counter.count(smart.text)
        return plan

    async def ahead(self, files: Sequence[SourceFile]) -> AsyncGenerator[FilePlan, None]:
        """:meth:`prepare` of each file in turn, up to ``PLAN_AHEAD`` files ahead, in the worker thread."""
        loop = asyncio.get_running_loop()
        pending: deque[asyncio.Future[FilePlan | None]] = deque()
        todo = iter(files)
        try:
            while True:
                while len(pending) < PLAN_AHEAD and (file := next(todo, None)) is not None:
                    pending.append(loop.run_in_executor(self._thread, self.prepare, file))
                if not pending:
                    return
                plan = await pending.popleft()
                if plan is not None:
                    yield plan
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _load(self, file: SourceFile) -> Document | None:
        try:
            return load(file, mode="raw" if self.config.loader == "raw" else "smart")
        except OSError as exc:
            self.stats.record_skip(file.path, "unreadable", exc.strerror or str(exc), file.size)
            return None
