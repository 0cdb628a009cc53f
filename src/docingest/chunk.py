"""Token-bounded, Markdown-aware chunking with the chat model's tokenizer.

``semantic-text-splitter`` finds the cut points (largest semantic units that fit: sections,
paragraphs, sentences); every chunk is then counted with docingest's own tiktoken counter, so
``raw_chunk_tokens`` is exact. Each chunk keeps the heading path in force where it starts.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence

from semantic_text_splitter import MarkdownSplitter, TextSplitter

from docingest.errors import ConfigError
from docingest.models import Chunk, Document
from docingest.tokens import TokenCounter

# semantic-text-splitter embeds tiktoken's vocabularies; name a model of each encoding.
_SPLITTER_MODEL = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}

_ATX = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")


def validate_chunking(chunk_tokens: int, overlap_tokens: int) -> None:
    if chunk_tokens < 16:
        raise ConfigError(f"--chunk-tokens must be at least 16 (got {chunk_tokens})")
    if overlap_tokens < 0:
        raise ConfigError(f"--overlap-tokens cannot be negative (got {overlap_tokens})")
    if overlap_tokens >= chunk_tokens:
        raise ConfigError(
            f"--overlap-tokens ({overlap_tokens}) must be smaller than --chunk-tokens ({chunk_tokens}): "
            "every chunk would repeat the previous one entirely. Lower the overlap (0 is the default) "
            "or raise the chunk size."
        )


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(character offset, level, title) of each ATX heading outside fenced code blocks."""
    out: list[tuple[int, int, str]] = []
    offset = 0
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        m = _FENCE.match(stripped)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif stripped.startswith(fence):
                fence = None
        elif fence is None:
            h = _ATX.match(line.rstrip("\r\n"))
            if h:
                out.append((offset, len(h.group(1)), h.group(2).strip()))
        offset += len(line)
    return out


def rst_headings(text: str) -> list[tuple[int, int, str]]:
    """Section titles of reStructuredText (title line + underline), levels in order of appearance."""
    lines = text.splitlines(keepends=True)
    levels: dict[str, int] = {}
    out: list[tuple[int, int, str]] = []
    offset = 0
    offsets = []
    for line in lines:
        offsets.append(offset)
        offset += len(line)
    for i in range(1, len(lines)):
        under = lines[i].rstrip("\r\n")
        title = lines[i - 1].strip()
        m = _RST_UNDERLINE.match(under)
        if m and title and not _RST_UNDERLINE.match(title) and len(under.strip()) >= len(title):
            overline = i >= 2 and lines[i - 2].rstrip("\r\n") == under
            key = ("o" if overline else "u") + m.group(1)
            level = levels.setdefault(key, len(levels) + 1)
            out.append((offsets[i - 2] if overline else offsets[i - 1], level, title))
    return out


def heading_paths(headings: Sequence[tuple[int, int, str]]) -> tuple[list[int], list[tuple[str, ...]]]:
    """For each heading offset, the heading path in force from there on."""
    offsets: list[int] = []
    paths: list[tuple[str, ...]] = []
    stack: list[tuple[int, str]] = []
    for offset, level, title in headings:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        offsets.append(offset)
        paths.append(tuple(t for _, t in stack))
    return offsets, paths


class Chunker:
    """Cuts documents into chunks of at most ``chunk_tokens`` tokens."""

    def __init__(self, counter: TokenCounter, *, chunk_tokens: int = 512, overlap_tokens: int = 0) -> None:
        validate_chunking(chunk_tokens, overlap_tokens)
        self.counter = counter
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        model = _SPLITTER_MODEL[counter.encoding_name]
        self._markdown = MarkdownSplitter.from_tiktoken_model(model, chunk_tokens, overlap_tokens)
        self._text = TextSplitter.from_tiktoken_model(model, chunk_tokens, overlap_tokens)

    def chunk(self, doc: Document) -> list[Chunk]:
        if not doc.text.strip():
            return []
        if doc.kind in ("markdown", "notebook"):
            pieces = self._markdown.chunk_indices(doc.text)
            headings = markdown_headings(doc.text)
        else:
            pieces = self._text.chunk_indices(doc.text)
            headings = rst_headings(doc.text) if doc.kind == "rst" else []
        offsets, paths = heading_paths(headings)
        counts = self.counter.count_many([text for _, text in pieces])
        chunks = []
        for index, ((start, text), tokens) in enumerate(zip(pieces, counts, strict=True)):
            at = bisect.bisect_right(offsets, start) - 1
            chunks.append(
                Chunk(
                    path=doc.path,
                    index=index,
                    text=text,
                    tokens=tokens,
                    sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                    heading_path=paths[at] if at >= 0 else (),
                    start=start,
                    end=start + len(text),
                )
            )
        return chunks
