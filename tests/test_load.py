from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docingest.discover import discover, kind_for
from docingest.load import load, parse_front_matter
from docingest.models import Document, Dropped, Skipped, SourceFile

CORPUS = Path("/work/shared/corpora/langgraph-docs")
SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "sample-docs"
PNG_SIGNATURE_B64 = "iVBORw0KGgo"


def source(tmp_path: Path, name: str, content: str | bytes) -> SourceFile:
    path = tmp_path / name
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(data)
    return SourceFile(path=name, abspath=path, size=len(data), kind=kind_for(name))


def notebook(cells: list[dict[str, Any]], **metadata: Any) -> str:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": cells})


def code(src: str, *outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "metadata": {},
        "source": src,
        "outputs": list(outputs),
        "execution_count": 1,
    }


def md(src: str, **extra: Any) -> dict[str, Any]:
    return {"cell_type": "markdown", "metadata": {}, "source": src, **extra}


def load_nb(tmp_path: Path, cells: list[dict[str, Any]], **kwargs: Any) -> Document:
    return load(source(tmp_path, "nb.ipynb", notebook(cells)), **kwargs)


# ---------------------------------------------------------------------------------------------
# Bytes, hashing, decoding


def test_hash_bom_and_plain_text(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfHello\nworld\n"
    doc = load(source(tmp_path, "a.txt", data))
    assert doc == Document(
        path="a.txt",
        kind="text",
        text="Hello\nworld\n",
        source_text="Hello\nworld\n",
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_invalid_utf8_is_replaced_and_noted(tmp_path: Path) -> None:
    doc = load(source(tmp_path, "a.rst", b"caf\xe9 au lait\n"))
    assert doc.text == doc.source_text == "caf\ufffd au lait\n"
    assert doc.notes == ["invalid_utf8_replaced"]


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    ghost = SourceFile("gone.md", tmp_path / "gone.md", 10, "markdown")
    with pytest.raises(FileNotFoundError):
        load(ghost)


# ---------------------------------------------------------------------------------------------
# Markdown


FRONT = "---\ntitle: 'Install guide'\ntags: [setup, cli]\nauthors:\n  - ana\n  - bo\ndraft: true\n---\n"


def test_front_matter_becomes_metadata_and_is_dropped(tmp_path: Path) -> None:
    doc = load(source(tmp_path, "a.md", FRONT + "\n# Install\n\nRun it.\n"))
    assert doc.text == "# Install\n\nRun it.\n"
    assert doc.metadata == {
        "title": "Install guide",
        "tags": ["setup", "cli"],
        "authors": ["ana", "bo"],
        "draft": True,
    }
    assert doc.dropped == [Dropped("front_matter", FRONT)]


def test_front_matter_raw_mode_keeps_everything(tmp_path: Path) -> None:
    text = FRONT + "# Install\n"
    doc = load(source(tmp_path, "a.md", text), mode="raw")
    assert (doc.text, doc.metadata, doc.dropped) == (text, {}, [])


@pytest.mark.parametrize(
    "text",
    [
        "---\ntitle: never closed\n# Heading\n",  # unterminated
        "---\nJust a rule above a paragraph.\n---\n",  # not YAML: a thematic break
        "# Title\n---\ntitle: x\n---\n",  # not at the very start
    ],
)
def test_not_front_matter_is_left_alone(tmp_path: Path, text: str) -> None:
    doc = load(source(tmp_path, "a.md", text))
    assert (doc.text, doc.metadata, doc.dropped) == (text, {}, [])


def test_bad_front_matter_lines_are_tolerated() -> None:
    assert parse_front_matter("title: ok\n  nested: {a: 1}\n: nonsense\nempty:\n") == {
        "title": "ok",
        "empty": "",
    }


def test_inline_data_uri_in_markdown_is_dropped(
    tmp_path: Path, make_png: Callable[[int, int], bytes]
) -> None:
    payload = base64.b64encode(make_png(32, 32)).decode()
    doc = load(source(tmp_path, "a.md", f"See ![logo](data:image/png;base64,{payload}) here.\n"))
    assert doc.text == "See ![logo]([inline data: image/png, 3 KB omitted]) here.\n"
    assert doc.dropped == [Dropped("image_output", payload)]


def test_rst_and_text_are_kept_as_is(tmp_path: Path) -> None:
    rst = "Title\n=====\n\n.. note:: keep me\n"
    assert load(source(tmp_path, "a.rst", rst)).text == rst
    txt = "---\nnot: front matter in a .txt\n---\n"
    assert load(source(tmp_path, "a.txt", txt)).text == txt


# ---------------------------------------------------------------------------------------------
# Notebooks


def test_notebook_rendering_exactly(tmp_path: Path) -> None:
    cells = [
        md(["# Title\n", "\n", "Some *prose*."]),
        code("x = 1\nprint(x)", {"output_type": "stream", "name": "stdout", "text": ["1\n"]}),
        code("", {"output_type": "stream", "name": "stdout", "text": "   \n"}),  # nothing to show
        {"cell_type": "raw", "metadata": {}, "source": ".. raw rst"},
        code("x", {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}}),
    ]
    text = notebook(cells, kernelspec={"name": "ir", "language": "R"})
    doc = load(source(tmp_path, "nb.ipynb", text))
    assert doc.text == (
        "# Title\n\nSome *prose*.\n\n"
        "```R\nx = 1\nprint(x)\n```\n\n"
        "```text\n1\n```\n\n"
        ".. raw rst\n\n"
        "```R\nx\n```\n\n"
        "```text\n1\n```\n"
    )
    assert doc.source_text == text
    assert doc.dropped == []
    assert doc.metadata == {
        "kernel": "ir",
        "language": "R",
        "nbformat": 4,
        "cells": 5,
        "cell_counts": {"markdown": 1, "code": 3, "raw": 1},
        "outputs": 3,
    }


def test_language_falls_back_to_language_info_then_python(tmp_path: Path) -> None:
    julia = notebook([code("1 + 1")], language_info={"name": "julia"})
    assert load(source(tmp_path, "j.ipynb", julia)).text == "```julia\n1 + 1\n```\n"
    assert load_nb(tmp_path, [code("1 + 1")]).text == "```python\n1 + 1\n```\n"


def test_code_containing_fences_gets_a_longer_fence(tmp_path: Path) -> None:
    doc = load_nb(tmp_path, [code('s = """\n```\n"""')])
    assert doc.text == '````python\ns = """\n```\n"""\n````\n'


def test_base64_png_output_is_dropped_with_a_placeholder(
    tmp_path: Path, make_png: Callable[[int, int], bytes]
) -> None:
    png = make_png(64, 64)
    payload = base64.b64encode(png).decode() + "\n"
    output = {
        "output_type": "display_data",
        "metadata": {},
        "data": {"image/png": payload, "text/plain": ["<Figure size 640x480 with 1 Axes>"]},
    }
    doc = load_nb(tmp_path, [code("plot()", output)])
    assert PNG_SIGNATURE_B64 in doc.source_text
    assert PNG_SIGNATURE_B64 not in doc.text
    assert doc.text == (
        "```python\nplot()\n```\n\n"
        "```text\n<Figure size 640x480 with 1 Axes>\n```\n\n"
        f"[image output: image/png, {round(len(png) / 1024)} KB omitted]\n"
    )
    assert len(png) > 10_000
    assert doc.dropped == [Dropped("image_output", payload)]


def test_long_stream_is_truncated_to_the_bound_and_the_rest_dropped(tmp_path: Path) -> None:
    log = [f"epoch {i:03d} loss={1 / (i + 1):.5f}\n" for i in range(300)]
    full = "".join(log)
    doc = load_nb(
        tmp_path,
        [code("train()", {"output_type": "stream", "name": "stdout", "text": log})],
        max_output_chars=500,
    )
    kept, rest = full[:500], full[500:]
    assert doc.text == (
        "```python\ntrain()\n```\n\n"
        f"```text\n{kept}\n```\n"
        f"[output truncated: {len(rest)} more characters omitted]\n"
    )
    assert doc.dropped == [Dropped("text_output_truncated", rest)]
    assert len(rest) == len(full) - 500 == 6400


def test_html_is_dropped_and_text_plain_kept(tmp_path: Path) -> None:
    html = "<table><tr><td>1</td></tr></table>"
    both = {
        "output_type": "execute_result",
        "metadata": {},
        "data": {"text/html": html, "text/plain": "   a\n0  1"},
    }
    alone = {"output_type": "display_data", "metadata": {}, "data": {"text/html": [html]}}
    doc = load_nb(tmp_path, [code("df", both), code("show()", alone)])
    assert doc.text == (
        "```python\ndf\n```\n\n```text\n   a\n0  1\n```\n\n"
        "```python\nshow()\n```\n\n[html output: 34 bytes omitted]\n"
    )
    assert doc.dropped == [Dropped("html_output", html), Dropped("html_output", html)]


def test_rich_outputs_and_attachments_are_dropped(tmp_path: Path) -> None:
    widget = {"model_id": "abc", "version_major": 2}
    outputs = [
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {"application/vnd.jupyter.widget-view+json": widget, "text/plain": "HBox()"},
        },
        {"output_type": "display_data", "metadata": {}, "data": {"application/javascript": "alert(1)"}},
        {"output_type": "display_data", "metadata": {}, "data": {"image/svg+xml": ["<svg>", "</svg>"]}},
    ]
    attachment = md("![a](attachment:a.png)", attachments={"a.png": {"image/png": "QUJD"}})
    doc = load_nb(tmp_path, [code("w", *outputs), attachment])
    assert doc.text == (
        "```python\nw\n```\n\n```text\nHBox()\n```\n\n"
        "[rich output: application/javascript omitted]\n\n"
        "[image output: image/svg+xml, 11 bytes omitted]\n\n"
        "![a](attachment:a.png)\n"
    )
    assert doc.dropped == [
        Dropped("rich_output", json.dumps(widget)),
        Dropped("rich_output", "alert(1)"),
        Dropped("image_output", "<svg></svg>"),
        Dropped("image_output", "QUJD"),
    ]


def test_error_traceback_ansi_is_stripped(tmp_path: Path) -> None:
    error = {
        "output_type": "error",
        "ename": "ValueError",
        "evalue": "bad",
        "traceback": ["\x1b[0;31m---------\x1b[0m", "\x1b[0;31mValueError\x1b[0m: bad"],
    }
    doc = load_nb(tmp_path, [code("boom()", error)])
    assert doc.text == "```python\nboom()\n```\n\n```text\n---------\nValueError: bad\n```\n"


@pytest.mark.parametrize(
    ("content", "note"),
    [
        ("not json {", "notebook_unparseable: Expecting value: line 1 column 1 (char 0)"),
        ("[1, 2]", "notebook_unparseable: not an nbformat 4 notebook (no 'cells' list)"),
    ],
)
def test_unparseable_notebook_falls_back_to_raw_text(tmp_path: Path, content: str, note: str) -> None:
    doc = load(source(tmp_path, "nb.ipynb", content))
    assert (doc.text, doc.notes, doc.dropped, doc.kind) == (content, [note], [], "notebook")


def test_raw_mode_notebook_is_the_file(tmp_path: Path) -> None:
    text = notebook(
        [code("x", {"output_type": "display_data", "metadata": {}, "data": {"image/png": "QUJD"}})]
    )
    doc = load(source(tmp_path, "nb.ipynb", text), mode="raw")
    assert (doc.text, doc.dropped, doc.metadata) == (text, [], {})


def test_sample_tutorial_notebook() -> None:
    path = SAMPLE_DOCS / "docs" / "tutorial.ipynb"
    doc = load(SourceFile("docs/tutorial.ipynb", path, path.stat().st_size, "notebook"))
    assert doc.metadata["cell_counts"] == {"markdown": 4, "code": 4, "raw": 0}
    assert [d.category for d in doc.dropped] == ["text_output_truncated", "image_output"]
    assert doc.dropped[1].text.startswith(PNG_SIGNATURE_B64)
    assert 20_000 <= len(base64.b64decode(doc.dropped[1].text)) <= 40_000
    assert "[image output: image/png, 20 KB omitted]" in doc.text
    assert "(86.4, 42.9)" in doc.text
    assert len(doc.text) * 10 < len(doc.source_text)


# ---------------------------------------------------------------------------------------------
# The LangGraph documentation corpus (read-only)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_langgraph_corpus_loads_without_images_and_shrinks() -> None:
    selected = 0
    skipped: Counter[str] = Counter()
    source_chars = text_chars = 0
    for item in discover(CORPUS):
        if isinstance(item, Skipped):
            skipped[item.reason] += 1
            continue
        doc = load(item)
        selected += 1
        assert PNG_SIGNATURE_B64 not in doc.text, doc.path
        source_chars += len(doc.source_text)
        text_chars += len(doc.text)
    assert selected == 205
    assert skipped == {"generated": 1, "lockfile": 1}
    assert text_chars < 0.25 * source_chars
