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
# A run of this many characters without whitespace (minified code, an inline blob) is cut by
# docingest itself: the splitter's time grows with the square of such a run's length (a 1.5 MB
# run took 86 s).
LONG_RUN_CHARS = 16_384
_LONG_RUN = re.compile(rf"\S{{{LONG_RUN_CHARS},}}")


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


def markdown_outline(text: str) -> tuple[list[tuple[int, int, str]], set[int]]:
    """One pass over the lines: (character offset, level, title) of each ATX heading outside
    fenced code blocks, and the offsets of the lines that open a fenced code block."""
    headings: list[tuple[int, int, str]] = []
    openers: set[int] = set()
    offset = 0
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        m = _FENCE.match(stripped)
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
                openers.add(offset + len(line) - len(line.lstrip()))
            elif stripped.startswith(fence):
                fence = None
        elif fence is None:
            h = _ATX.match(line.rstrip("\r\n"))
            if h:
                headings.append((offset, len(h.group(1)), h.group(2).strip()))
        offset += len(line)
    return headings, openers


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(character offset, level, title) of each ATX heading outside fenced code blocks."""
    return markdown_outline(text)[0]


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
        markdown = doc.kind in ("markdown", "notebook")
        openers: set[int] = set()  # where a stub belongs with what follows: fence openers, headings
        if markdown:
            pieces = self._split(self._markdown, doc.text)
            headings, openers = markdown_outline(doc.text)
            openers |= {at for at, _, _ in headings}
        else:
            pieces = self._split(self._text, doc.text)
            headings = rst_headings(doc.text) if doc.kind == "rst" else []
        offsets, paths = heading_paths(headings)
        spans = [(start, start + len(text)) for start, text in pieces]
        if len(spans) > 1:
            self.counter.count_many([text for _, text in pieces])  # warm the cache, on all cores
            spans = self._mend(doc.text, spans, openers, markdown=markdown)
        pieces = [(start, doc.text[start:end]) for start, end in spans]
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

    def _split(self, splitter: MarkdownSplitter | TextSplitter, text: str) -> list[tuple[int, str]]:
        """The splitter's (offset, text) pieces; runs of ``LONG_RUN_CHARS`` or more characters
        without whitespace are cut apart by :meth:`_cut_run` and the text around them split alone."""
        runs = [m.span() for m in _LONG_RUN.finditer(text)] if len(text) >= LONG_RUN_CHARS else []
        if not runs:
            return list(splitter.chunk_indices(text))
        out: list[tuple[int, str]] = []
        at = 0
        for start, end in [*runs, (len(text), len(text))]:
            out += [(at + i, piece) for i, piece in splitter.chunk_indices(text[at:start])]
            out += self._cut_run(text, start, end)
            at = end
        return out

    def _cut_run(self, text: str, start: int, end: int) -> list[tuple[int, str]]:
        """``text[start:end]`` in consecutive pieces of at most ``chunk_tokens`` tokens each (no
        overlap), each as full as the tokenizer allows, in time linear in the run's length."""
        out: list[tuple[int, str]] = []
        step = self.chunk_tokens * 4  # characters; resized from each piece's density
        a = start
        while a < end:
            b = min(end, a + step)
            n = self.counter.count(text[a:b])
            while n > self.chunk_tokens and b - a > 1:
                b = a + max(1, (b - a) * self.chunk_tokens // (n + 1))
                n = self.counter.count(text[a:b])
            out.append((a, text[a:b]))
            step = max(16, (b - a) * self.chunk_tokens * 15 // (16 * max(n, 1)))
            a = b
        return out

    # -- stubs: chunks with nothing to summarize or find ---------------------------------------------
    def _mend(
        self, text: str, spans: list[tuple[int, int]], openers: set[int], *, markdown: bool
    ) -> list[tuple[int, int]]:
        """Join each stub (a chunk of only fence lines, headings or punctuation, such as the
        ```` ```python ```` the splitter leaves before a code block too long for one chunk) to its
        neighbour: a fence opener or heading to the chunk after it, anything else to the one before.

        Every chunk stays a slice ``text[start:end]`` of at most ``chunk_tokens`` tokens, counted
        exactly. When the stub and its neighbour do not fit together, the neighbour is cut at a
        line break so that the stub and the neighbour's head make one chunk and the rest another.
        A stub that can be joined to nothing (a document of only a fence) stays as it is.
        """
        out: list[tuple[int, int]] = []
        todo = list(reversed(spans))  # a stack: the next span is todo[-1]
        while todo:
            start, end = todo.pop()
            kind = _stub_kind(text, start, end, openers, markdown=markdown)
            if kind is None:
                out.append((start, end))
                continue
            if kind == "back" and out and self._fits(text, out[-1][0], max(out[-1][1], end)):
                out[-1] = (out[-1][0], max(out[-1][1], end))
                continue
            if todo:
                nstart, nend = todo[-1]
                if self._fits(text, start, max(end, nend)):
                    todo[-1] = (start, max(end, nend))  # looked at again: it may still be a stub
                    continue
                cut = self._carry(text, start, end, nstart, nend, openers, markdown=markdown)
                if cut is not None:
                    todo[-1:] = [cut[1], cut[0]]
                    continue
            if kind == "forward" and out and self._fits(text, out[-1][0], max(out[-1][1], end)):
                out[-1] = (out[-1][0], max(out[-1][1], end))
                continue
            out.append((start, end))
        return out

    def _fits(self, text: str, start: int, end: int) -> bool:
        return self.counter.count(text[start:end]) <= self.chunk_tokens

    def _carry(
        self,
        text: str,
        start: int,
        end: int,
        nstart: int,
        nend: int,
        openers: set[int],
        *,
        markdown: bool,
    ) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Cut the next chunk ``[nstart, nend)`` at a line break (else a space) so that the stub
        ``[start, end)`` and its head fit in one chunk, its rest in another (neither a stub)."""
        lo = max(end, nstart)
        body = text[lo:nend]
        cuts = [lo + i for i, c in enumerate(body) if c == "\n"] or [
            lo + i for i, c in enumerate(body) if c == " "
        ]

        def split(cut: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
            head_end = start + len(text[start:cut].rstrip())
            rest = text[cut:nend]
            rest_start = cut + len(rest) - len(rest.lstrip())
            if head_end <= end or rest_start >= nend:
                return None
            return (start, head_end), (rest_start, nend)

        # The largest head that fits (binary search: a longer prefix never has fewer tokens, all
        # but always; each candidate is then checked exactly).
        lo_i, hi_i = 0, len(cuts) - 1
        best = -1
        while lo_i <= hi_i:
            mid = (lo_i + hi_i) // 2
            if self._fits(text, start, cuts[mid]):
                best, lo_i = mid, mid + 1
            else:
                hi_i = mid - 1
        for i in range(best, -1, -1):
            parts = split(cuts[i])
            if parts is None:
                continue
            (hs, he), (rs, re_) = parts
            if (
                self._fits(text, hs, he)
                and self._fits(text, rs, re_)
                and _stub_kind(text, hs, he, openers, markdown=markdown) is None
                and _stub_kind(text, rs, re_, openers, markdown=markdown) is None
            ):
                return parts
        return None


_PUNCT_ONLY = re.compile(r"[\W_]*")
_FENCE_LINE = re.compile(r"(`{3,}|~{3,})[ \t]*[\w+#.-]*")


def _stub_kind(text: str, start: int, end: int, openers: set[int], *, markdown: bool) -> str | None:
    """``None`` for a chunk with content; for a stub, where it belongs: ``"forward"`` (it holds a
    fence opener or a heading) or ``"back"`` (closing fences, punctuation, blank lines only).
    ``openers``: the offsets of the lines that open a code block or a section."""
    kind = "back"
    offset = start
    for line in text[start:end].splitlines(keepends=True):
        stripped = line.strip()
        at = offset + len(line) - len(line.lstrip())
        offset += len(line)
        if _PUNCT_ONLY.fullmatch(stripped):
            if at in openers:
                kind = "forward"
        elif markdown and (_FENCE_LINE.fullmatch(stripped) or at in openers):
            kind = "forward"
        else:
            return None
    return kind
