"""StatsCollector: the seed plan's statistics, as a pure accumulator over ledger records.

Every record goes through :meth:`StatsCollector.record`, which appends it to the ledger (when
there is one) and folds it into the aggregates. Rebuilding a report from a ledger is the same
fold (:meth:`StatsCollector.from_ledger`), so a live report and a rebuilt one cannot differ.

Attribution: :meth:`StatsCollector.chunk` sets a context variable naming the chunk that the
calls made inside the ``with`` block belong to (threads and asyncio tasks each see their own).
"""

from __future__ import annotations

import contextvars
import hashlib
import statistics
import threading
import time
import uuid
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docingest.errors import LedgerError
from docingest.ledger import LedgerWriter, read_ledger

SCHEMA_VERSION = 1
CALL_TYPES = ("chat_summary", "create_embedding")
#: Past this many chunks a collector stops holding per-chunk call details (memory stays flat in
#: corpus size); the report's chunk section is then streamed from the ledger
#: (``docingest.report.write_run_report``).
DETAIL_LIMIT = 20_000
_ABSENT = -1  # a chunk index with no record
_UNKNOWN = -2  # a chunk that calls refer to, whose raw token count no record gave


def unsent_kind(reason: str | None) -> str:
    """What kept an ``unsent`` request back: ``budget`` (--max-tokens/--max-cost reached),
    ``over_limit`` (the API would refuse it, e.g. an embedding input over 8,192 tokens),
    ``identical_failed`` (it waited on an identical request that failed) or ``other``."""
    text = (reason or "").lower()
    if text.startswith("budget"):
        return "budget"
    if "over the api's limit" in text:
        return "over_limit"
    if text.startswith("an identical"):
        return "identical_failed"
    return "other"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ChunkShare:
    """One chunk's part of a call: for a batch, the tokens of that chunk's input."""

    path: str
    index: int
    tokens: int


@dataclass(slots=True)
class CallInfo:
    """What the caller knows about the request about to be sent (set in a context variable)."""

    call_type: str
    chunks: list[ChunkShare] = field(default_factory=list)
    prompt_tokens: int | None = None  # computed before the call; None: the transport counts
    input_tokens: list[int] | None = None  # embeddings: per input
    site: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    #: When a list, the transport appends the *successful* attempt's record here instead of
    #: writing it, and the caller writes it in the same step as it stores the result (so a run
    #: killed in between cannot leave a paid-for result that the knowledge base lacks).
    deferred: list[dict[str, Any]] | None = None
    last_attempt_end: float | None = None  # set by the transport: retries measure their wait from it


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("docingest_call", default=None)
current_chunk: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "docingest_chunk", default=None
)


@dataclass(slots=True)
class _ChunkStats:
    raw_chunk_tokens: int | None = None
    sha256: str | None = None
    preview: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    cache_hits: int = 0
    tokens_saved: int = 0
    unsent: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _FileStats:
    """A file's figures: numbers always, per-chunk details only while the collector is detailed."""

    info: dict[str, Any] = field(default_factory=dict)
    chunks: dict[int, _ChunkStats] = field(default_factory=dict)
    raw: array[int] = field(default_factory=lambda: array("q"))  # per chunk index: tokens or _ABSENT
    chunk_count: int = 0
    raw_total: int = 0
    calls: int = 0
    failed: int = 0
    tokens_sent: int = 0
    chat_tokens: int = 0
    cache_hits: int = 0
    tokens_saved: int = 0

    def mark(self, index: int, raw_tokens: int | None = None) -> None:
        """Note that chunk ``index`` exists (with its raw token count, when given)."""
        if index >= len(self.raw):
            self.raw.extend([_ABSENT] * (index + 1 - len(self.raw)))
        old = self.raw[index]
        if old == _ABSENT:
            self.chunk_count += 1
        if raw_tokens is None:
            if old == _ABSENT:
                self.raw[index] = _UNKNOWN
            return
        self.raw_total += raw_tokens - max(old, 0)
        self.raw[index] = raw_tokens

    def has(self, index: int) -> bool:
        return index < len(self.raw) and self.raw[index] != _ABSENT


@dataclass(slots=True)
class _TypeStats:
    calls: int = 0
    successful: int = 0
    failed: int = 0
    retries: int = 0
    retry_wait_s: float = 0.0
    rate_limit_wait_s: float = 0.0
    tokens_sent: int = 0
    failed_tokens_sent: int = 0
    #: attempts that failed before the request left (connection refused...): nothing sent
    calls_not_sent: int = 0
    tokens_not_sent: int = 0
    billed_prompt_tokens: int | None = None
    billed_completion_tokens: int | None = None
    billed_cached_tokens: int | None = None
    tokens_sent_with_usage: int = 0  # our count of the calls whose response carried ``usage``
    latencies: array[float] = field(default_factory=lambda: array("d"))
    #: attempts per model named in the call records (a traced run's run_start names no model)
    models: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "calls": self.calls,
            "successful_calls": self.successful,
            "failed_calls": self.failed,
            "retried_calls": self.retries,
            "retry_wait_s": round(self.retry_wait_s, 6),
            "rate_limit_wait_s": round(self.rate_limit_wait_s, 6),
            "tokens_sent": self.tokens_sent,
            "failed_tokens_sent": self.failed_tokens_sent,
            "calls_not_sent": self.calls_not_sent,
            "tokens_not_sent": self.tokens_not_sent,
            "billed_prompt_tokens": self.billed_prompt_tokens,
            "billed_completion_tokens": self.billed_completion_tokens,
            "billed_cached_tokens": self.billed_cached_tokens,
            "tokens_sent_with_usage": self.tokens_sent_with_usage,
            "models": dict(self.models.most_common()),
            "latency_s": {
                "p50": _quantile(lat, 0.5),
                "p95": _quantile(lat, 0.95),
                "max": lat[-1] if lat else None,
                "total": round(sum(lat), 6),
            },
        }


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return round(sorted_values[0], 6)
    return round(statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q * 100) - 1], 6)


def _add_optional(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return (a or 0) + b


class StatsCollector:
    """Collects one run's statistics. Thread-safe; every record is also appended to the ledger."""

    def __init__(
        self,
        ledger_path: Path | None = None,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        detail_limit: int | None = DETAIL_LIMIT,
    ) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.ledger_path = ledger_path
        #: The ledgers this collector's records are in (the report streams chunk details from them).
        self.ledger_paths: tuple[Path, ...] = (ledger_path,) if ledger_path is not None else ()
        #: Per-chunk call details are held while this is true (see ``DETAIL_LIMIT``).
        self.detailed = True
        self.detail_limit = detail_limit
        self._detail_chunks = 0
        self._writer = LedgerWriter(ledger_path) if ledger_path is not None else None
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.RLock()
        self._seq = 0
        self.run: dict[str, Any] = {"id": self.run_id}
        self.files: dict[str, _FileStats] = {}
        self.skipped: list[dict[str, Any]] = []
        self._skipped_at: dict[str, int] = {}  # path -> its entry in ``skipped`` (merged ledgers: the last)
        self.by_type: dict[str, _TypeStats] = defaultdict(_TypeStats)
        self.unattributed: dict[str, Any] = {
            "calls": 0,
            "tokens_sent": 0,
            "by_site": Counter(),
            "by_template": Counter(),
        }
        self._listeners: list[Callable[[Mapping[str, Any]], None]] = []
        self.total_calls = 0
        self.total_ok = 0
        self.total_failed = 0
        self.total_tokens_sent = 0
        self.billed_prompt: int | None = None
        self.billed_completion: int | None = None
        self.cache_hits = 0
        self.tokens_saved = 0
        self.unsent: list[dict[str, Any]] = []
        self.status: str | None = None
        self.wall_time_s: float | None = None
        self._rebuilt = False
        self._last_call_end: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._clock() - self._t0

    def start(self, **run: Any) -> None:
        """Write the ``run_start`` record (source, config, dry_run, models, tokenizer...)."""
        self.record({"type": "run_start", "run_id": self.run_id, "started_at": utc_now(), **run})

    def finish(self, status: str = "completed") -> None:
        """Write the ``run_end`` record and close the ledger."""
        self.record(
            {
                "type": "run_end",
                "run_id": self.run_id,
                "finished_at": utc_now(),
                "wall_time_s": round(self.elapsed(), 6),
                "status": status,
            }
        )
        if self._writer is not None:
            self._writer.close()

    # -- recording -----------------------------------------------------------------------------
    def record(self, record: dict[str, Any]) -> None:
        """Append one record to the ledger and fold it into the statistics."""
        with self._lock:
            if record.get("type") == "call" and "seq" not in record:
                self._seq += 1
                record["seq"] = self._seq
            if self._writer is not None:
                self._writer.write(record)
            self._fold(record)
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener(record)

    def subscribe(self, listener: Callable[[Mapping[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener`` with every record from now on (after it is written and folded);
        returns a function that unsubscribes it. Listeners run in the recording thread."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def record_skip(
        self,
        path: str,
        reason: str,
        detail: str = "",
        size: int | None = None,
        *,
        source_tokens: int | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "type": "skip",
            "path": path,
            "reason": reason,
            "detail": detail,
            "size": size,
        }
        if source_tokens is not None:
            record["source_tokens"] = source_tokens
        self.record(record)

    def record_chunk(
        self,
        path: str,
        index: int,
        raw_chunk_tokens: int,
        sha256: str | None = None,
        *,
        preview: str | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "type": "chunk",
            "path": path,
            "index": index,
            "raw_chunk_tokens": raw_chunk_tokens,
            "sha256": sha256,
        }
        if preview is not None:
            record["preview"] = preview
        self.record(record)

    @contextmanager
    def chunk(
        self, path: str, index: int, *, text: str | None = None, tokens: int | None = None
    ) -> Iterator[None]:
        """Attribute every API call made inside the block to chunk ``index`` of ``path``."""
        if tokens is None and text is not None:
            from docingest.tokens import TokenCounter

            tokens = TokenCounter().count(text)
        with self._lock:
            known = path in self.files and self.files[path].has(index)
        if not known or tokens is not None:
            sha = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
            self.record_chunk(path, index, tokens if tokens is not None else 0, sha)
        token = current_chunk.set((path, index))
        try:
            yield
        finally:
            current_chunk.reset(token)

    # -- folding -------------------------------------------------------------------------------
    def _file(self, path: str) -> _FileStats:
        fs = self.files.get(path)
        if fs is None:
            fs = self.files[path] = _FileStats()
        return fs

    def _chunk(self, path: str, index: int, raw_tokens: int | None = None) -> _ChunkStats | None:
        """Mark the chunk in its file's numbers; its details, while the collector keeps them."""
        fs = self._file(path)
        fs.mark(index, raw_tokens)
        if not self.detailed:
            return None
        cs = fs.chunks.get(index)
        if cs is None:
            cs = fs.chunks[index] = _ChunkStats()
            self._detail_chunks += 1
            if self.detail_limit is not None and self._detail_chunks > self.detail_limit:
                self.drop_details()
                return None
        return cs

    def drop_details(self) -> None:
        """Stop holding per-chunk details (numbers per file and the aggregates stay exact)."""
        with self._lock:
            self.detailed = False
            for fs in self.files.values():
                fs.chunks = {}

    def _fold(self, r: Mapping[str, Any]) -> None:
        kind = r["type"]
        if kind == "call":
            self._fold_call(r)
        elif kind == "chunk":
            raw_tokens = r["raw_chunk_tokens"]
            cs = self._chunk(r["path"], int(r["index"]), int(raw_tokens or 0))
            if cs is not None:
                cs.raw_chunk_tokens = raw_tokens
                cs.sha256 = r.get("sha256")
                cs.preview = r.get("preview")
        elif kind == "file":
            self._file(r["path"]).info.update({k: v for k, v in r.items() if k not in ("type", "path")})
        elif kind == "skip":
            entry = {k: v for k, v in r.items() if k != "type"}
            at = self._skipped_at.setdefault(str(r.get("path")), len(self.skipped))
            if at == len(self.skipped):
                self.skipped.append(entry)
            else:  # the same file skipped again (the ledgers of several runs of one source)
                self.skipped[at] = entry
        elif kind == "cache_hit":
            self.cache_hits += 1
            self.tokens_saved += int(r.get("tokens_saved", 0))
            if r.get("path") is not None:
                fs = self._file(r["path"])
                fs.cache_hits += 1
                fs.tokens_saved += int(r.get("tokens_saved", 0))
                cs = self._chunk(r["path"], int(r["index"]))
                if cs is not None:
                    cs.cache_hits += 1
                    cs.tokens_saved += int(r.get("tokens_saved", 0))
        elif kind == "unsent":
            entry = {k: v for k, v in r.items() if k != "type"}
            self.unsent.append(entry)
            if r.get("path") is not None:
                cs = self._chunk(r["path"], int(r["index"]))
                if cs is not None:
                    cs.unsent.append(entry)
        elif kind == "run_start":
            self.run_id = r.get("run_id", self.run_id)
            from docingest.config import redact_run

            run = {"id": self.run_id, **{k: v for k, v in r.items() if k not in ("type", "run_id")}}
            self.run = redact_run(run)
        elif kind == "run_end":
            self.run["finished_at"] = r.get("finished_at")
            self.status = r.get("status")
            self.wall_time_s = r.get("wall_time_s")

    def _fold_call(self, r: Mapping[str, Any]) -> None:
        ok = r["status"] == "Success"
        ct = r["call_type"]
        tokens = int(r["prompt_tokens"])
        billed = r.get("billed") or {}
        ts = self.by_type[ct]
        ts.calls += 1
        ts.successful += ok
        ts.failed += not ok
        ts.retries += int(r.get("attempt", 0) > 0)
        ts.retry_wait_s += float(r.get("retry_wait_s") or 0.0)
        ts.rate_limit_wait_s += float(r.get("rate_limit_wait_s") or 0.0)
        ts.tokens_sent += tokens
        if r.get("model"):
            ts.models[str(r["model"])] += 1
        if not ok:
            ts.failed_tokens_sent += tokens
        if r.get("sent") is False:  # its prompt_tokens (0) and chunk shares (0) say so already
            ts.calls_not_sent += 1
            ts.tokens_not_sent += int(r.get("tokens_not_sent") or 0)
        ts.billed_prompt_tokens = _add_optional(ts.billed_prompt_tokens, billed.get("prompt_tokens"))
        ts.billed_completion_tokens = _add_optional(
            ts.billed_completion_tokens, billed.get("completion_tokens")
        )
        ts.billed_cached_tokens = _add_optional(ts.billed_cached_tokens, billed.get("cached_tokens"))
        if billed.get("prompt_tokens") is not None:
            ts.tokens_sent_with_usage += tokens
        if r.get("latency_s") is not None:
            ts.latencies.append(float(r["latency_s"]))
            end = float(r.get("t_s") or 0.0) + float(r["latency_s"])
            self._last_call_end = max(self._last_call_end or 0.0, end)
        self.total_calls += 1
        self.total_ok += ok
        self.total_failed += not ok
        self.total_tokens_sent += tokens
        self.billed_prompt = _add_optional(self.billed_prompt, billed.get("prompt_tokens"))
        self.billed_completion = _add_optional(self.billed_completion, billed.get("completion_tokens"))
        attributed = 0
        for path, index, share in r.get("chunks") or ():
            attributed += share
            fs = self._file(path)
            fs.calls += 1
            fs.failed += not ok
            fs.tokens_sent += share
            if ct == "chat_summary":
                fs.chat_tokens += share
            cs = self._chunk(path, int(index))
            if cs is None:
                continue
            detail: dict[str, Any] = {
                "call_type": ct,
                "prompt_tokens": share,
                "status": r["status"],
                "seq": r.get("seq"),
                "attempt": r.get("attempt", 0),
                "http_status": r.get("http_status"),
            }
            if r.get("latency_s") is not None:
                detail["t_s"] = r.get("t_s")
                detail["latency_s"] = r["latency_s"]
            if r.get("error_details"):
                detail["error_details"] = r["error_details"]
            if r.get("sent") is False:
                detail["sent"] = False
            cs.calls.append(detail)
        rest = tokens - attributed
        if rest or not r.get("chunks"):
            self.unattributed["calls"] += 0 if r.get("chunks") else 1
            self.unattributed["tokens_sent"] += rest
            self.unattributed["by_site"][r.get("site") or "unknown"] += rest
            if r.get("template"):
                self.unattributed["by_template"][r["template"]] += rest

    # -- views ---------------------------------------------------------------------------------
    def chunk_view(self, cs: _ChunkStats) -> dict[str, Any]:
        ok = sum(1 for c in cs.calls if c["status"] == "Success")
        view: dict[str, Any] = {
            "raw_chunk_tokens": cs.raw_chunk_tokens,
            "total_api_calls": len(cs.calls),
            "successful_calls": ok,
            "failed_calls": len(cs.calls) - ok,
            "total_tokens_sent_to_apis": sum(c["prompt_tokens"] for c in cs.calls),
            "call_details": cs.calls,
        }
        if cs.sha256 is not None:
            view["sha256"] = cs.sha256
        if cs.preview is not None:
            view["preview"] = cs.preview
        if cs.cache_hits:
            view["cache_hits"] = cs.cache_hits
            view["tokens_saved"] = cs.tokens_saved
        if cs.unsent:
            view["unsent"] = cs.unsent
        return view

    def file_view(self, path: str, fs: _FileStats, *, with_chunks: bool = True) -> dict[str, Any]:
        """A file's figures; its ``chunks`` (with call details) only while the collector is detailed."""
        view: dict[str, Any] = dict(fs.info)
        view.update(
            {
                "chunk_count": fs.chunk_count,
                "raw_chunk_tokens": fs.raw_total,
                "total_api_calls": fs.calls,
                "failed_calls": fs.failed,
                "total_tokens_sent_to_apis": fs.tokens_sent,
                "tokens_sent_to_chat_model": fs.chat_tokens,
                "cache_hits": fs.cache_hits,
                "tokens_saved": fs.tokens_saved,
            }
        )
        if with_chunks:
            view["chunks"] = {str(i): self.chunk_view(cs) for i, cs in sorted(fs.chunks.items())}
        return view

    def aggregated(self) -> dict[str, Any]:
        with self._lock:
            raw = sum(fs.raw_total for fs in self.files.values())
            chat = self.by_type["chat_summary"].tokens_sent if "chat_summary" in self.by_type else 0

            def file_sum(key: str) -> int | None:
                values = [fs.info.get(key) for fs in self.files.values() if key in fs.info]
                return sum(v for v in values if v is not None) if values else None

            dropped: Counter[str] = Counter()
            for fs in self.files.values():
                dropped.update(fs.info.get("dropped_tokens") or {})
            embed = self.by_type.get("create_embedding")
            return {
                "total_api_calls_initiated": self.total_calls,
                "total_successful_calls": self.total_ok,
                "total_failed_calls": self.total_failed,
                "total_tokens_from_raw_docs": raw,
                "total_tokens_sent_to_chat_model": chat,
                "total_tokens_sent_to_apis": self.total_tokens_sent,
                "total_tokens_sent_to_embeddings": embed.tokens_sent if embed else 0,
                "amplification": round(chat / raw, 4) if raw else None,
                "by_call_type": {ct: self.by_type[ct].as_dict() for ct in sorted(self.by_type)},
                "source_tokens": file_sum("source_tokens"),
                "document_tokens": file_sum("document_tokens"),
                "dropped_tokens": dict(sorted(dropped.items())),
                "billed_prompt_tokens": self.billed_prompt,
                "billed_completion_tokens": self.billed_completion,
                "retried_calls": sum(t.retries for t in self.by_type.values()),
                # summed over requests (they overlap under concurrency), not wall time
                "retry_wait_s": round(sum(t.retry_wait_s for t in self.by_type.values()), 6),
                "rate_limit_wait_s": round(sum(t.rate_limit_wait_s for t in self.by_type.values()), 6),
                "files_unchanged": sum(1 for fs in self.files.values() if fs.info.get("unchanged")),
                "cache_hits": self.cache_hits,
                "tokens_saved_by_cache": self.tokens_saved,
                "unsent_requests": len(self.unsent),
                "unsent_by_reason": self._unsent_by_reason(),
                "files_loaded": len([fs for fs in self.files.values() if fs.info]),
                "files_skipped": len(self.skipped),
                "chunks": sum(fs.chunk_count for fs in self.files.values()),
                "unattributed": {
                    "calls": self.unattributed["calls"],
                    "tokens_sent": self.unattributed["tokens_sent"],
                    "by_site": dict(self.unattributed["by_site"]),
                    "by_template": dict(self.unattributed["by_template"]),
                },
                "wall_time_s": self._wall_time(),
            }

    def _unsent_by_reason(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for u in self.unsent:
            entry = out.setdefault(unsent_kind(u.get("reason")), {"requests": 0, "tokens": 0})
            entry["requests"] += 1
            entry["tokens"] += int(u.get("tokens") or 0)
        return dict(sorted(out.items()))

    def _wall_time(self) -> float | None:
        if self.wall_time_s is not None:
            return float(self.wall_time_s)
        if self._rebuilt:  # a killed run: the last call's end is the best we know
            return round(self._last_call_end, 6) if self._last_call_end is not None else None
        return round(self.elapsed(), 6)

    def report(self) -> dict[str, Any]:
        """The whole report as a dict (see ``docingest.report`` for streaming it to a file)."""
        with self._lock:
            return {
                "schema_version": SCHEMA_VERSION,
                "run": {**self.run, "status": self.status},
                "aggregated": self.aggregated(),
                "files": {p: self.file_view(p, fs) for p, fs in sorted(self.files.items())},
                "skipped_files": list(self.skipped),
                "findings": [],
            }

    @classmethod
    def from_ledger(cls, *paths: Path, detail_limit: int | None = DETAIL_LIMIT) -> StatsCollector:
        """Rebuild the statistics from one or more ledgers (e.g. a killed run and its resume)."""
        stats = cls(None, detail_limit=detail_limit)
        stats.ledger_paths = tuple(paths)
        stats._rebuilt = True
        for path in paths:
            records = 0
            for record in read_ledger(path):
                stats._fold(record)
                records += 1
            if not records:
                raise LedgerError(f"{path} holds no ledger record: is it the ledger of a docingest run?")
        if stats.status is None:
            stats.status = "incomplete"
        return stats
