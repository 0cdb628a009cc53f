"""The values that flow between the stages: discover -> load -> chunk -> plan -> execute.

Paths are always POSIX paths relative to the source root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FileKind = Literal["markdown", "rst", "text", "notebook"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file discovery selected for loading."""

    path: str
    abspath: Path
    size: int
    kind: FileKind


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file discovery (or loading) passed over, with a stable reason code.

    Reasons: ``binary``, ``too_large``, ``lockfile``, ``generated``, ``minified``,
    ``dot_directory``, ``symlink_outside``, ``symlink_loop``, ``symlink_broken``,
    ``symlink_directory``, ``excluded``, ``unreadable``, ``empty``.
    """

    path: str
    reason: str
    detail: str = ""
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """Content the loader kept out of the document text (its tokens are counted later)."""

    category: (
        str  # e.g. "image_output", "html_output", "rich_output", "text_output_truncated", "front_matter"
    )
    text: str


@dataclass(slots=True)
class Document:
    """A loaded file: the text that will be chunked, plus what was left out and why."""

    path: str
    kind: FileKind
    text: str
    source_text: str  # the file as it sits on disk, decoded (with replacement if needed)
    sha256: str  # of the file bytes
    metadata: dict[str, Any] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "invalid_utf8_replaced", "notebook_unparseable"


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    index: int
    text: str
    tokens: int
    sha256: str  # of the chunk text
    heading_path: tuple[str, ...] = ()
    start: int = 0  # character offsets in Document.text
    end: int = 0
