"""The API requests a run will make, each with its exact token count, before anything is sent.

Summaries: one chat request per chunk. The chunk is its own user message and the context (none,
section, or the whole document) another one, so per OpenAI's counting formula the prompt's count
is a sum of counts of texts that repeat across chunks and are each tokenized once.

Embeddings: one input per chunk (heading path + chunk text), batched within the API's limits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from docingest.models import Chunk, Document
from docingest.tokens import TokenCounter

ContextMode = Literal["none", "section", "document"]
CONTEXT_MODES: tuple[ContextMode, ...] = ("none", "section", "document")

#: OpenAI's limits for one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_REQUEST_TOKENS = 300_000
MAX_EMBEDDING_INPUT_TOKENS = 8192

SYSTEM_PROMPT = (
    "You summarize one chunk of technical documentation for a search index. "
    "In two or three sentences, say what the chunk explains and name the APIs, options and "
    "concepts it covers. Use only what the chunk says."
)


def content_key(model: str, payload: object) -> str:
    """Hash of a model and the exact request content: the cache key of a result."""
    raw = json.dumps([model, payload], ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    chunk: Chunk
    messages: list[dict[str, str]]
    prompt_tokens: int
    max_tokens: int
    key: str


@dataclass(frozen=True, slots=True)
class EmbeddingItem:
    chunk: Chunk
    input: str
    tokens: int
    key: str


class Planner:
    def __init__(
        self,
        chat_counter: TokenCounter,
        embedding_counter: TokenCounter,
        *,
        chat_model: str,
        embedding_model: str,
        context: ContextMode = "section",
        summary_tokens: int = 128,
        neighbour_chars: int = 300,
    ) -> None:
        self.chat_counter = chat_counter
        self.embedding_counter = embedding_counter
        self.chat_model = chat_model
        self.embedding_model = embedding_model
        self.context = context
        self.summary_tokens = summary_tokens
        self.neighbour_chars = neighbour_chars

    def _context_message(self, doc: Document, chunk: Chunk, whole: str | None) -> str | None:
        if self.context == "none":
            return None
        if self.context == "document":
            return whole
        n = self.neighbour_chars
        before = doc.text[max(0, chunk.start - n) : chunk.start].strip()
        after = doc.text[chunk.end : chunk.end + n].strip()
        parts = [f"Document: {doc.path}"]
        if chunk.heading_path:
            parts.append("Section: " + " > ".join(chunk.heading_path))
        if before:
            parts.append("Text just before the chunk:\n" + before)
        if after:
            parts.append("Text just after the chunk:\n" + after)
        return "\n\n".join(parts)

    def _messages(self, doc: Document, chunk: Chunk, whole: str | None) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        context = self._context_message(doc, chunk, whole)
        if context:
            messages.append({"role": "user", "content": context})
        messages.append({"role": "user", "content": chunk.text})
        return messages

    def _whole(self, doc: Document) -> str | None:
        return f"Full document {doc.path}:\n\n{doc.text}" if self.context == "document" else None

    def prompt_tokens(self, doc: Document, chunks: Sequence[Chunk]) -> int:
        """The prompt tokens of all of :meth:`summaries` (without building their cache keys)."""
        whole = self._whole(doc)
        return sum(self.chat_counter.count_messages(self._messages(doc, c, whole)) for c in chunks)

    def summaries(self, doc: Document, chunks: Sequence[Chunk]) -> list[SummaryRequest]:
        whole = self._whole(doc)
        keys = _SharedPrefixKeys(self.chat_model, whole, self.summary_tokens) if whole else None
        out = []
        for chunk in chunks:
            messages = self._messages(doc, chunk, whole)
            payload = [messages, self.summary_tokens]
            out.append(
                SummaryRequest(
                    chunk=chunk,
                    messages=messages,
                    prompt_tokens=self.chat_counter.count_messages(messages),
                    max_tokens=self.summary_tokens,
                    key=keys.key(messages) if keys else content_key(self.chat_model, payload),
                )
            )
        return out

    def embedding_input(self, chunk: Chunk) -> str:
        if chunk.heading_path:
            return " > ".join(chunk.heading_path) + "\n\n" + chunk.text
        return chunk.text

    def embeddings(self, chunks: Sequence[Chunk]) -> list[EmbeddingItem]:
        inputs = [self.embedding_input(c) for c in chunks]
        counts = self.embedding_counter.count_many(inputs)
        return [
            EmbeddingItem(chunk=c, input=text, tokens=n, key=content_key(self.embedding_model, text))
            for c, text, n in zip(chunks, inputs, counts, strict=True)
        ]


class _SharedPrefixKeys:
    """:func:`content_key` of requests that all carry the same long text (the whole document)
    ahead of what differs: the hash of everything up to the end of that text is computed once and
    copied for each request, so a key costs the chunk, not the document."""

    _MARK = "\x00docingest-shared-text\x00"

    def __init__(self, model: str, shared: str, summary_tokens: int) -> None:
        self.model = model
        self.shared = shared
        self.summary_tokens = summary_tokens
        self._head: str | None = None
        self._state: Any = None
        self._mark = json.dumps(self._MARK, ensure_ascii=False)

    def key(self, messages: list[dict[str, str]]) -> str:
        marked = [{**m, "content": self._MARK} if m.get("content") is self.shared else m for m in messages]
        raw = json.dumps(
            [self.model, [marked, self.summary_tokens]],
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )
        at = raw.find(self._mark)
        if at < 0:  # the shared text is not in this request
            return content_key(self.model, [messages, self.summary_tokens])
        head, tail = raw[:at], raw[at + len(self._mark) :]
        if head != self._head:
            text = json.dumps(self.shared, ensure_ascii=False)
            self._state = hashlib.sha256((head + text).encode("utf-8", "surrogatepass"))
            self._head = head
        digest = self._state.copy()
        digest.update(tail.encode("utf-8", "surrogatepass"))
        return str(digest.hexdigest())


def batches(
    items: Sequence[EmbeddingItem],
    *,
    max_inputs: int = 256,
    max_tokens: int = MAX_EMBEDDING_REQUEST_TOKENS,
) -> Iterator[list[EmbeddingItem]]:
    """Consecutive batches within the per-request limits (inputs over the per-input limit excluded)."""
    batch: list[EmbeddingItem] = []
    tokens = 0
    for item in items:
        if batch and (len(batch) >= max_inputs or tokens + item.tokens > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(item)
        tokens += item.tokens
    if batch:
        yield batch
