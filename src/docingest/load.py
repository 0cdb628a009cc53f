"""Loading: one ``SourceFile`` in, one ``Document`` out, with everything left out recorded.

``load(file)`` reads the file's bytes, hashes them and decodes them as UTF-8 (a BOM is stripped;
invalid bytes are replaced and noted ``invalid_utf8_replaced``). ``Document.source_text`` is
always that decoded file. ``Document.text``, the part that will be chunked, depends on the mode:

- ``mode="raw"``: the decoded file, as a naive pipeline would send it. Nothing is dropped.
- ``mode="smart"`` (default):
  - Markdown/MDX: YAML front matter becomes ``metadata`` and is dropped as ``front_matter``;
    inline ``data:...;base64,`` URIs are replaced by a placeholder and dropped as ``image_output``.
  - reStructuredText and plain text: as is.
  - Notebooks (nbformat 4): rendered as Markdown. Markdown and raw cells as written, code cells
    as fenced blocks in the kernel's language, and outputs as fenced ``text`` blocks:
    ``stream`` text, ``text/markdown`` or else ``text/plain`` results, and error tracebacks
    (ANSI escapes stripped) keep at most ``max_output_chars`` each, the rest being dropped as
    ``text_output_truncated``. Images and cell attachments are dropped as ``image_output``
    (with a placeholder naming the type and size), ``text/html`` as ``html_output`` (with a
    placeholder only when no plain-text form exists), any other representation
    (JSON, widgets, JavaScript, ``vnd.*``) as ``rich_output``. A file that is not a JSON
    notebook is loaded as its raw text, with a note ``notebook_unparseable: <reason>``.

Every ``Dropped`` carries the dropped text itself (the base64 string, the HTML, the truncated
tail) so that its tokens can be counted. Loading never fails on content; only an ``OSError``
from reading the file escapes (the caller reports it as ``unreadable``).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from docingest.models import Document, Dropped, SourceFile

__all__ = ["load"]

_BOM = b"\xef\xbb\xbf"
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_FRONT_MATTER = re.compile(
    r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE
)
_KEY_LINE = re.compile(r"^([A-Za-z_][\w.-]*)[ \t]*:(?:[ \t]+(.*?))?[ \t]*$")
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,([A-Za-z0-9+/]{16,}={0,2})")
_IMAGE_MIME = re.compile(r"^image/")
_TEXT_MIMES = ("text/markdown", "text/plain")


def load(
    file: SourceFile, *, mode: Literal["smart", "raw"] = "smart", max_output_chars: int = 2000
) -> Document:
    """Load ``file`` into a ``Document``. Raises only ``OSError`` (the file cannot be read)."""
    data = file.abspath.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        source_text = body.decode("utf-8")
    except UnicodeDecodeError:
        source_text = body.decode("utf-8", errors="replace")
        notes.append("invalid_utf8_replaced")
    doc = Document(
        path=file.path, kind=file.kind, text=source_text, source_text=source_text, sha256=digest, notes=notes
    )
    if mode == "raw":
        return doc
    if file.kind == "markdown":
        _load_markdown(doc)
    elif file.kind == "notebook":
        _load_notebook(doc, max_output_chars)
    return doc


# ---------------------------------------------------------------------------------------------
# Markdown


def _load_markdown(doc: Document) -> None:
    text = doc.source_text
    match = _FRONT_MATTER.match(text)
    if match is not None and _looks_like_yaml(match.group(1)):
        doc.metadata.update(parse_front_matter(match.group(1)))
        doc.dropped.append(Dropped("front_matter", match.group(0)))
        text = text[match.end() :].lstrip("\r\n")
    doc.text = _drop_data_uris(text, doc.dropped)


def _looks_like_yaml(block: str) -> bool:
    """Front matter must open with a ``key:`` line (or be empty); otherwise ``---`` is a rule."""
    for line in block.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return _KEY_LINE.match(line) is not None
    return True


def parse_front_matter(block: str) -> dict[str, Any]:
    """Parse the simple YAML of front matter: ``key: value``, inline ``[a, b]`` and ``- item`` lists.

    Scalars stay strings (quotes removed), except ``true``/``false``. Nested mappings and any
    line this parser does not understand are ignored: bad front matter never fails a load.
    """
    result: dict[str, Any] = {}
    current: str | None = None
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key_match = _KEY_LINE.match(line)
        if key_match is not None:
            current, value = key_match.group(1), key_match.group(2)
            result[current] = _scalar(value) if value else []
            continue
        item = line.strip()
        if current is not None and item.startswith("- ") and isinstance(result[current], list):
            result[current].append(_scalar(item[2:].strip()))
    return {k: ("" if v == [] else v) for k, v in result.items()}


def _scalar(value: str) -> Any:
    if value.startswith("[") and value.endswith("]"):
        return [_unquote(v.strip()) for v in value[1:-1].split(",") if v.strip()]
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _unquote(value)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _drop_data_uris(text: str, dropped: list[Dropped]) -> str:
    def replace(match: re.Match[str]) -> str:
        payload = match.group(2)
        dropped.append(Dropped("image_output", payload))
        return f"[inline data: {match.group(1)}, {_size(_base64_bytes(payload))} omitted]"

    return _DATA_URI.sub(replace, text)


# ---------------------------------------------------------------------------------------------
# Notebooks


def _load_notebook(doc: Document, max_output_chars: int) -> None:
    try:
        notebook = json.loads(doc.source_text)
    except json.JSONDecodeError as exc:
        doc.notes.append(f"notebook_unparseable: {exc}")
        return
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        doc.notes.append("notebook_unparseable: not an nbformat 4 notebook (no 'cells' list)")
        return
    meta = _mapping(notebook.get("metadata"))
    kernelspec = _mapping(meta.get("kernelspec"))
    language_info = _mapping(meta.get("language_info"))
    language = str(kernelspec.get("language") or language_info.get("name") or "python")

    renderer = _NotebookRenderer(language, max_output_chars, doc.dropped)
    counts = {"markdown": 0, "code": 0, "raw": 0}
    for cell in cells:
        if isinstance(cell, dict):
            cell_type = renderer.cell(cell)
            if cell_type in counts:
                counts[cell_type] += 1
    doc.text = "\n\n".join(renderer.parts) + ("\n" if renderer.parts else "")
    doc.metadata.update(
        {
            "kernel": kernelspec.get("name"),
            "language": language,
            "nbformat": notebook.get("nbformat"),
            "cells": len(cells),
            "cell_counts": counts,
            "outputs": renderer.outputs,
        }
    )


class _NotebookRenderer:
    def __init__(self, language: str, max_output_chars: int, dropped: list[Dropped]) -> None:
        self.language = language
        self.max_output_chars = max_output_chars
        self.dropped = dropped
        self.parts: list[str] = []
        self.outputs = 0

    def cell(self, cell: dict[str, Any]) -> str:
        cell_type = str(cell.get("cell_type", ""))
        source = _join(cell.get("source", ""))
        if cell_type == "code":
            if source.strip():
                self.parts.append(_fence(source, self.language))
            outputs = cell.get("outputs")
            for output in outputs if isinstance(outputs, list) else []:
                if isinstance(output, dict):
                    self.outputs += 1
                    self.output(output)
        elif cell_type == "markdown":
            if source.strip():
                self.parts.append(_drop_data_uris(source, self.dropped))
        elif source.strip():  # raw cells, and any unknown cell type, as written
            self.parts.append(source)
        attachments = cell.get("attachments")
        if isinstance(attachments, dict):
            for bundle in attachments.values():
                if isinstance(bundle, dict):
                    for payload in bundle.values():
                        self.dropped.append(Dropped("image_output", _join(payload)))
        return cell_type

    def output(self, output: dict[str, Any]) -> None:
        kind = output.get("output_type")
        if kind == "stream":
            self.text_output(_join(output.get("text", "")))
        elif kind == "error":
            traceback = output.get("traceback")
            if isinstance(traceback, list) and traceback:
                text = "\n".join(str(line) for line in traceback)
            else:
                text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
            self.text_output(text)
        elif kind in ("execute_result", "display_data", "update_display_data"):
            data = output.get("data")
            if isinstance(data, dict):
                self.rich(data)

    def rich(self, data: dict[str, Any]) -> None:
        kept = next((mime for mime in _TEXT_MIMES if mime in data), None)
        placeholders: list[str] = []
        for mime, value in data.items():
            if mime == kept:
                continue
            text = value if isinstance(value, str | list) else json.dumps(value)
            text = _join(text)
            if _IMAGE_MIME.match(mime):
                self.dropped.append(Dropped("image_output", text))
                size = len(text.encode()) if mime == "image/svg+xml" else _base64_bytes(text)
                placeholders.append(f"[image output: {mime}, {_size(size)} omitted]")
            elif mime == "text/html":
                self.dropped.append(Dropped("html_output", text))
                if kept is None:
                    placeholders.append(f"[html output: {_size(len(text.encode()))} omitted]")
            else:
                self.dropped.append(Dropped("rich_output", text))
                if kept is None:
                    placeholders.append(f"[rich output: {mime} omitted]")
        if kept is not None:
            self.text_output(_join(data[kept]))
        self.parts.extend(placeholders)

    def text_output(self, text: str) -> None:
        text = _ANSI.sub("", text)
        if not text.strip():
            return
        if len(text) > self.max_output_chars:
            rest = text[self.max_output_chars :]
            self.dropped.append(Dropped("text_output_truncated", rest))
            text = text[: self.max_output_chars]
            marker = f"[output truncated: {len(rest)} more characters omitted]"
            self.parts.append(_fence(text, "text") + "\n" + marker)
        else:
            self.parts.append(_fence(text, "text"))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _join(value: Any) -> str:
    """nbformat stores multi-line strings either as a string or as a list of lines."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _fence(body: str, info: str) -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body.rstrip(chr(10))}\n{fence}"


def _base64_bytes(payload: str) -> int:
    """Decoded size of a base64 payload (whitespace and padding ignored)."""
    n = sum(map(len, payload.split())) - payload.count("=")  # str.split() splits on str.isspace()
    return n * 3 // 4


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{round(n / 1024)} KB"
