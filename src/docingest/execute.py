"""Sending planned requests through the official OpenAI SDK (async; one code path).

The SDK's client gets an httpx2 client whose transport records every attempt
(:class:`~docingest.transport.AsyncRecordingTransport`) over either the network or, for a dry
run, :class:`~docingest.transport.DryRunTransport`. The SDK does its own retrying (429, 408, 409,
5xx, timeouts, dropped connections; ``retry-after`` honoured; never 400/401/403/404), and each
of its attempts is its own ledger record.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2
import numpy as np
import openai

from docingest.account import CallInfo, ChunkShare, StatsCollector, current_call
from docingest.errors import ConfigError
from docingest.plan import EmbeddingItem, SummaryRequest
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
) -> openai.AsyncOpenAI:
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
    http_client = httpx2.AsyncClient(
        transport=AsyncRecordingTransport(inner, stats, counters=counters),
        timeout=settings.timeout,
    )
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=settings.max_retries,
        timeout=settings.timeout,
        http_client=http_client,
    )


class Executor:
    """Runs summary and embedding requests concurrently, at most ``concurrency`` at a time."""

    def __init__(self, client: openai.AsyncOpenAI, settings: ClientSettings) -> None:
        self.client = client
        self.settings = settings
        self._slots = asyncio.Semaphore(max(settings.concurrency, 1))

    async def summarize(self, request: SummaryRequest) -> tuple[str | None, str | None]:
        """(summary text, error message); exactly one of them is None."""
        chunk = request.chunk
        info = CallInfo(
            "chat_summary",
            [ChunkShare(chunk.path, chunk.index, request.prompt_tokens)],
            prompt_tokens=request.prompt_tokens,
            model=self.settings.chat_model,
            max_tokens=request.max_tokens,
        )
        async with self._slots:
            token = current_call.set(info)
            try:
                response = await self.client.chat.completions.create(
                    model=self.settings.chat_model,
                    messages=request.messages,  # type: ignore[arg-type]
                    max_tokens=request.max_tokens,
                )
            except openai.APIError as exc:
                return None, _describe(exc)
            finally:
                current_call.reset(token)
        return response.choices[0].message.content or "", None

    async def embed(self, items: Sequence[EmbeddingItem]) -> list[tuple[Vector | None, str | None]]:
        """One vector (or error) per item. A batch refused as a whole (400) is split in halves,
        so that only the inputs the API rejects fail."""
        info = CallInfo(
            "create_embedding",
            [ChunkShare(i.chunk.path, i.chunk.index, i.tokens) for i in items],
            prompt_tokens=sum(i.tokens for i in items),
            input_tokens=[i.tokens for i in items],
            model=self.settings.embedding_model,
        )
        error: str | None = None
        async with self._slots:
            token = current_call.set(info)
            try:
                response = await self.client.embeddings.create(
                    model=self.settings.embedding_model,
                    input=[i.input for i in items],
                    encoding_format="base64",
                )
            except openai.BadRequestError as exc:
                error = _describe(exc)
            except openai.APIError as exc:
                return [(None, _describe(exc))] * len(items)
            finally:
                current_call.reset(token)
        if error is not None:
            if len(items) == 1:
                return [(None, error)]
            half = len(items) // 2
            left, right = await asyncio.gather(self.embed(items[:half]), self.embed(items[half:]))
            return left + right
        vectors: list[tuple[Vector | None, str | None]] = [(None, "missing from response")] * len(items)
        for datum in response.data:
            raw = datum.embedding
            vec = (
                np.frombuffer(base64.b64decode(raw), dtype="<f4")
                if isinstance(raw, str)
                else np.asarray(raw, dtype=np.float32)
            )
            vectors[datum.index] = (vec, None)
        return vectors

    async def aclose(self) -> None:
        await self.client.close()


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code} {exc.code or type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc.message}"
