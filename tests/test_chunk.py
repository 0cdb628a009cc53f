"""Chunks hold something to summarize: no chunk of only a fence line, a heading or punctuation."""

from __future__ import annotations

from semantic_text_splitter import MarkdownSplitter

from docingest.chunk import Chunker
from docingest.models import Document
from docingest.tokens import TokenCounter

PROSE = " ".join(f"Sentence number {i} explains the checkpointer." for i in range(60))
CODE = "\n".join(f"    value_{i} = compute(state, {i})  # step {i}" for i in range(150))
TEXT = (
    f"# Persistence\n\n{PROSE}\n\n## Custom strategies\n\n"
    f"```python\ndef run(state):\n{CODE}\n```\n\nAfter the code.\n"
)


def test_a_code_block_too_long_for_one_chunk_keeps_its_fence_and_heading():
    # what the splitter alone returns: a heading and a fence opener as chunks of their own
    alone = [t for _, t in MarkdownSplitter.from_tiktoken_model("gpt-4o", 128, 0).chunk_indices(TEXT)]
    assert "```python" in alone and "## Custom strategies" in alone
    counter = TokenCounter("o200k_base")
    doc = Document(path="x.md", kind="markdown", text=TEXT, source_text=TEXT, sha256="0")
    chunks = Chunker(counter, chunk_tokens=128).chunk(doc)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == TEXT[c.start : c.end]
        assert c.tokens == counter.count(c.text) <= 128
        assert c.text.strip() not in ("```python", "```", "## Custom strategies", "# Persistence")
    head = next(c for c in chunks if "```python" in c.text)
    assert head.text.startswith("## Custom strategies\n\n```python\ndef run(state):\n    value_0")
    assert head.heading_path == ("Persistence", "Custom strategies")
    # nothing lost: every character of the code block is in a chunk
    code_chunks = "".join(c.text for c in chunks if "value_" in c.text)
    assert all(f"value_{i} = compute(state, {i})" in code_chunks for i in range(150))


def test_a_fence_that_fits_with_the_next_chunk_joins_it():
    code = "\n".join(f"x{i} = {i}" for i in range(30))
    text = "Intro.\n\n```python\n" + code + "\n```\n"
    counter = TokenCounter("o200k_base")
    doc = Document(path="y.md", kind="markdown", text=text, source_text=text, sha256="0")
    chunks = Chunker(counter, chunk_tokens=200).chunk(doc)
    assert all(c.text.strip() != "```python" for c in chunks)
    assert sum("```python" in c.text for c in chunks) == 1


def test_a_long_run_without_whitespace_is_cut_into_full_exact_chunks_in_order():
    import random

    from docingest.chunk import LONG_RUN_CHARS

    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/é日"
    blob = "".join(rng.choice(alphabet) for _ in range(3 * LONG_RUN_CHARS + 123))
    text = f"# Data\n\n{PROSE}\n\nsrc={blob}\n\n## After\n\n{PROSE}\n"
    counter = TokenCounter("o200k_base")
    doc = Document(path="d.md", kind="markdown", text=text, source_text=text, sha256="0")
    chunks = Chunker(counter, chunk_tokens=256).chunk(doc)
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.tokens == counter.count(c.text) <= 256
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    run = [c for c in chunks if blob[100:140] in c.text or c.text in blob]
    # the run is covered without a gap or an overlap, in chunks that fill most of their budget
    joined = "".join(
        c.text for c in chunks if c.start >= text.index("src=") and c.end <= text.index("\n\n## After")
    )
    assert joined == "src=" + blob
    inner = [c for c in run if c.text in blob][:-1]  # the run's own pieces but its last
    assert inner and all(c.tokens >= 200 for c in inner)
    assert chunks[-1].heading_path == ("Data", "After")
