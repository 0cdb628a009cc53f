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
