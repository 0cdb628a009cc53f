"""Sending planned requests through the official OpenAI SDK (async; one code path).

The SDK's client gets an httpx2 client whose transport records every attempt
(:class:`~docingest.transport.AsyncRecordingTransport`) over either the network or, for a dry
run, :class:`~docingest.transport.DryRunTransport`. The SDK does its own retrying (429, 408, 409,
5xx, timeouts, dropped connections; exponential backoff with jitter; ``retry-after`` honoured;
``max_retries`` bounds the attempts; never 400/401/403/404), and each of its attempts is its own
ledger record, with the time waited before it (``retry_wait_s``, ``rate_limit_wait_s``). In
front of the recording sits :class:`~docingest.ratelimit.GateTransport`: the budget and the
client-side rate limits, applied to every attempt.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import numpy as np
import openai
from openai import RequestOptions

from docingest.account import CallInfo, ChunkShare, StatsCollector, current_call
from docingest.budget import TokenBudget
from docingest.errors import BudgetExceeded, ConfigError
from docingest.plan import EmbeddingItem, SummaryRequest
from docingest.ratelimit import GateTransport, RateLimiter
from docingest.simulate import SimOptions
from docingest.transport import AsyncRecordingTransport, Counters, DryRunTransport

Vector = np.ndarray


@dataclass(frozen=True, slots=True)
class ClientSettings:
    chat_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    base_url: str | None = None
    api_key: str | None = None
    dry_run: bool = False
    concurrency: int = 8
    max_retries: int = 4
    timeout: float = 60.0


def resolve_credentials(settings: ClientSettings) -> tuple[str, str | None]:
    """The API key to hand the SDK; refuses a real run that has neither a key nor a base URL."""
    if settings.dry_run:
        return "dry-run", settings.base_url
    if settings.api_key:
        return settings.api_key, settings.base_url
    if settings.base_url:
        return "no-key", settings.base_url  # local OpenAI-compatible servers usually want none
    raise ConfigError(
        "no API key: set OPENAI_API_KEY, pass --base-url (or OPENAI_BASE_URL) for a local "
        "OpenAI-compatible server, or add --dry-run to forecast the run without any API call"
    )


def build_async_client(
    settings: ClientSettings,
    stats: StatsCollector,
    *,
    counters: Counters | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    sim_options: SimOptions | None = None,
    limiter: RateLimiter | None = None,
    budget: TokenBudget | None = None,
) -> openai.AsyncOpenAI:
    """The SDK's async client over ``gate(recording(network or dry-run answers))``: the gate
    (budget, then rate limits) runs before each attempt, retries included, and the recording
    transport writes one ledger record per attempt."""
    api_key, base_url = resolve_credentials(settings)
    inner: httpx2.AsyncBaseTransport
    if transport is not None:
        inner = transport
    elif settings.dry_run:
        inner = DryRunTransport(sim_options)
    else:
        inner = httpx2.AsyncHTTPTransport(
            limits=httpx2.Limits(max_connections=max(settings.concurrency, 1) * 2),
        )
    recording: httpx2.AsyncBaseTransport = AsyncRecordingTransport(inner, stats, counters=counters)
    if limiter is not None or budget is not None:
        recording = GateTransport(recording, limiter=limiter, budget=budget)
    http_client = httpx2.AsyncClient(transport=recording, timeout=settings.timeout)
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=settings.max_retries,
        timeout=settings.timeout,
        http_client=http_client,
    )


@dataclass(slots=True)
class Outcome:
    """One summary request's result: ``value`` or ``error`` (exactly one is None), and the
    ledger records of its successful attempt, to be written with the stored result (:meth:`Executor.write`).
    ``refused``: the budget stopped it before it was sent."""

    value: str | None
    error: str | None
    records: list[dict[str, Any]] = field(default_factory=list)
    refused: bool = False
    held: bool = False  # not sent: the executor was halted (see Executor.halted)


@dataclass(slots=True)
class EmbedOutcome:
    """One (vector, error) per input, and the deferred records of the successful attempts.
    ``failed``: the error of each request that failed for good (one per request, not per input;
    a batch split after a 400 is several requests)."""

    results: list[tuple[Vector | None, str | None]]
    records: list[dict[str, Any]] = field(default_factory=list)
    refused: bool = False
    failed: list[str] = field(default_factory=list)
    held: bool = False  # not sent: the executor was halted (see Executor.halted)

    @classmethod
    def failure(cls, count: int, error: str, records: list[dict[str, Any]]) -> EmbedOutcome:
        """One request of ``count`` inputs that failed for good with ``error``."""
        return cls([(None, error)] * count, records, failed=[error])


class Executor:
    """Runs summary and embedding requests concurrently, at most ``concurrency`` at a time.

    Never raises for one request's failure (an API error, a malformed answer, a dropped
    connection after the retries): the outcome carries the message and the run goes on.
    With ``defer=True`` the ledger record of a successful attempt is handed back in the outcome
    instead of written, so the caller can write it in the same step as the result it paid for.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        settings: ClientSettings,
        *,
        stats: StatsCollector | None = None,
        defer: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings
        self.stats = stats
        self.defer = defer and stats is not None
        self._slots = asyncio.Semaphore(max(settings.concurrency, 1))
        #: why nothing more may be sent (e.g. the API refused the key): requests waiting for a
        #: slot are then held back, not sent
        self.halted: str | None = None

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Write deferred ledger records (see :class:`Outcome`)."""
        if self.stats is not None:
            for record in records:
                self.stats.record(record)
        if isinstance(records, list):
            records.clear()

    async def summarize(self, request: SummaryRequest) -> Outcome:
        chunk = request.chunk
        info = CallInfo(
            "chat_summary",
            [ChunkShare(chunk.path, chunk.index, request.prompt_tokens)],
            prompt_tokens=request.prompt_tokens,
            model=self.settings.chat_model,
            max_tokens=request.max_tokens,
            deferred=[] if self.defer else None,
        )
        records = info.deferred if info.deferred is not None else []
        async with self._slots:
            if self.halted is not None:
                return Outcome(None, self.halted, records, held=True)
            token = current_call.set(info)
            try:
                response = await self.client.post(
                    "/chat/completions",
                    body={
                        "model": self.settings.chat_model,
                        "messages": request.messages,
                        "max_tokens": request.max_tokens,
                    },
                    options=_BEARER,
                    cast_to=httpx2.Response,
                )
                text = _completion_text(response.json())
            except BudgetExceeded as exc:
                return Outcome(None, str(exc), records, refused=True)
            except openai.APIError as exc:
                return Outcome(None, _describe(exc), records)
            except Exception as exc:  # a malformed answer: this chunk fails, the run goes on
                return Outcome(None, f"{type(exc).__name__}: {exc}", records)
            finally:
                current_call.reset(token)
        return Outcome(text, None, records)

    async def embed(self, items: Sequence[EmbeddingItem]) -> EmbedOutcome:
        """One vector (or error) per item. A batch refused as a whole (400) is split in halves,
        so that only the inputs the API rejects fail."""
        info = CallInfo(
            "create_embedding",
            [ChunkShare(i.chunk.path, i.chunk.index, i.tokens) for i in items],
            prompt_tokens=sum(i.tokens for i in items),
            input_tokens=[i.tokens for i in items],
            model=self.settings.embedding_model,
            deferred=[] if self.defer else None,
        )
        records = info.deferred if info.deferred is not None else []
        error: str | None = None
        async with self._slots:
            if self.halted is not None:
                return EmbedOutcome([(None, self.halted)] * len(items), records, held=True)
            token = current_call.set(info)
            try:
                response = await self.client.embeddings.create(
                    model=self.settings.embedding_model,
                    input=[i.input for i in items],
                    encoding_format="base64",
                )
                vectors = _vectors(response, len(items))
            except BudgetExceeded as exc:
                return EmbedOutcome([(None, str(exc))] * len(items), records, refused=True)
            except openai.BadRequestError as exc:
                error = _describe(exc)
            except openai.APIError as exc:
                return EmbedOutcome.failure(len(items), _describe(exc), records)
            except Exception as exc:  # a malformed answer
                return EmbedOutcome.failure(len(items), f"{type(exc).__name__}: {exc}", records)
            finally:
                current_call.reset(token)
        if error is not None:
            if len(items) == 1:
                return EmbedOutcome.failure(1, error, records)
            half = len(items) // 2
            halves = [asyncio.ensure_future(self.embed(part)) for part in (items[:half], items[half:])]
            try:
                left, right = await asyncio.gather(*halves)
            except BaseException:  # interrupted: a half already answered was sent, and is billed
                for task in halves:
                    if task.done() and not task.cancelled() and task.exception() is None:
                        self.write(task.result().records)
                    else:
                        task.cancel()
                raise
            return EmbedOutcome(
                left.results + right.results,
                records + left.records + right.records,
                refused=left.refused or right.refused,
                failed=left.failed + right.failed,
            )
        return EmbedOutcome(vectors, records)

    async def aclose(self) -> None:
        await self.client.close()


# The SDK's ``chat.completions.create`` only adds, per call, a walk of every parameter through
# its type-driven transform and a pydantic model of the answer: about 0.5 ms of the 0.8 ms the
# SDK costs per call, more than the dry run's tokenization of the same request. The body here is
# already plain JSON, so the request goes through the SDK's documented generic ``post`` with the
# same path, headers, auth, timeouts, retries and typed errors, and the answer is read as JSON.
_BEARER: RequestOptions = {"security": {"bearer_auth": True}}


def _completion_text(body: Any) -> str:
    """The text of a chat completion's first choice; ``ValueError`` when the answer has none."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("malformed chat completion: no choices[0].message") from None
    if content is not None and not isinstance(content, str):
        raise ValueError(f"malformed chat completion: content is {type(content).__name__}")
    return content or ""


def _vectors(response: Any, count: int) -> list[tuple[Vector | None, str | None]]:
    vectors: list[tuple[Vector | None, str | None]] = [(None, "missing from response")] * count
    for datum in response.data:
        raw = datum.embedding
        vec = (
            np.frombuffer(base64.b64decode(raw), dtype="<f4")
            if isinstance(raw, str)
            else np.asarray(raw, dtype=np.float32)
        )
        vectors[datum.index] = (vec, None)
    return vectors


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code} {exc.code or type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc.message}"
