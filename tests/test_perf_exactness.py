"""The fast paths count exactly what the plain ones do."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from docingest import tokens
from docingest.chunk import Chunker
from docingest.discover import discover
from docingest.load import _base64_bytes, load
from docingest.models import SourceFile
from docingest.plan import CONTEXT_MODES, Planner

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-docs"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=3000), min_size=2, max_size=12))
def test_threaded_count_many_equals_tiktoken(texts):
    enc = tokens.get_encoding("o200k_base")
    counter = tokens.TokenCounter("o200k_base", cache_chars=5000)
    padded = [t * 12 for t in texts]  # past PARALLEL_MIN_CHARS: the pool path
    expected = [len(enc.encode_ordinary(t)) for t in padded]
    assert counter.count_many(padded) == expected
    assert counter.count_many(padded) == expected  # again, partly from the bounded cache
    assert asyncio.run(counter.acount_many(padded)) == expected
    assert counter._chars <= 5000


@given(st.text(alphabet="ab+/=\n \t\u2003\u00e9\x1c\x85", max_size=60))
def test_base64_size_matches_the_per_character_rule(payload):
    assert _base64_bytes(payload) == sum(1 for c in payload if not c.isspace() and c != "=") * 3 // 4


def test_planner_prompt_tokens_equal_the_planned_requests():
    chat = tokens.TokenCounter("o200k_base")
    embed = tokens.TokenCounter("cl100k_base")
    chunker = Chunker(chat, chunk_tokens=64)
    for mode in CONTEXT_MODES:
        planner = Planner(chat, embed, chat_model="gpt-4o-mini", embedding_model="x", context=mode)
        for item in discover(SAMPLE):
            if isinstance(item, SourceFile):
                doc = load(item)
                chunks = chunker.chunk(doc)
                planned = sum(r.prompt_tokens for r in planner.summaries(doc, chunks))
                assert planner.prompt_tokens(doc, chunks) == planned


class _CountingCounter(tokens.TokenCounter):
    """Records the length of every text it encodes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoded: list[int] = []

    def encode(self, text):
        self.encoded.append(len(text))
        return super().encode(text)

    def length(self, text):
        self.encoded.append(len(text))
        return super().length(text)


def test_document_context_encodes_the_document_once_however_many_chunks():
    from docingest.models import Chunk, Document

    text = "# Big\n\n" + "word " * 400_000  # 2 MB, past the counter's cache (1 MB here)
    doc = Document(path="b.md", kind="markdown", text=text, source_text=text, sha256="0")
    step = len(text) // 200
    chunks = [
        Chunk(
            path="b.md",
            index=i,
            text=text[i * step : (i + 1) * step],
            tokens=0,
            sha256=str(i),
            start=i * step,
        )
        for i in range(200)
    ]
    chat = _CountingCounter("o200k_base", cache_chars=1_000_000)
    planner = Planner(
        chat,
        tokens.TokenCounter("cl100k_base"),
        chat_model="gpt-4o-mini",
        embedding_model="x",
        context="document",
    )
    total = planner.prompt_tokens(doc, chunks)
    assert sum(n >= len(text) for n in chat.encoded) == 1
    requests = planner.summaries(doc, chunks)
    assert sum(n >= len(text) for n in chat.encoded) == 1  # the same count again, not re-encoded
    assert sum(r.prompt_tokens for r in requests) == total
    whole = tokens.TokenCounter("o200k_base").count(f"Full document b.md:\n\n{text}")
    assert requests[0].prompt_tokens == tokens.TokenCounter("o200k_base").count_messages(requests[0].messages)
    assert requests[0].prompt_tokens > whole
    # the keys are the plain content keys, computed without hashing the document per chunk
    from docingest.plan import content_key

    for r in (requests[0], requests[-1]):
        assert r.key == content_key("gpt-4o-mini", [r.messages, planner.summary_tokens])
