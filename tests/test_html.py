"""The HTML report: self-contained, escaped, rendered by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from docingest.html import render_html, write_html
from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report

EVIL_NAME = "<img src=x onerror=alert(1)>.md"
EVIL_CHUNK = "<script>window.__pwned=1;document.body.setAttribute('data-pwned','1')</script>"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(
            "chromium is not installed and could not be: run `make dev` as root (apt-get install chromium)"
        )
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("html")
    src = root / "src"
    (src / "guide").mkdir(parents=True)
    (src / EVIL_NAME).write_text(
        f"# Evil\n\n{EVIL_CHUNK}\n\nMore text about the evil page.\n", encoding="utf-8"
    )
    for i in range(6):
        body = "".join(
            f"Paragraph {j} of page {i} explains option o{i}_{j} in depth.\n\n" for j in range(30 * (i + 1))
        )
        (src / "guide" / f"page{i}.md").write_text(f"# Page {i}\n\n{body}", encoding="utf-8")
    (src / "package-lock.json").write_text('{"lockfileVersion": 3}', encoding="utf-8")
    result = ingest(
        IngestConfig(source=src, dry_run=True, report=root / "r.json", chunk_tokens=200, context="document")
    )
    return build_report(result.stats)


def test_strings_from_documents_are_escaped(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert EVIL_NAME in report["files"]
    assert "<img src=x" not in page and "<script>window.__pwned" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.md" in page
    assert "&lt;script&gt;window.__pwned=1;" in page  # the chunk preview, as text
    # Self-contained: no URL is fetched (the CSP allows only the page's own inline script).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "default-src &#x27;none&#x27;" in page  # a CSP: only the page's own script may run
    assert len(re.findall(r"<script>", page)) == 1


def test_chromium_renders_charts_and_tables_and_runs_no_document_script(
    report: dict[str, Any], tmp_path: Path
) -> None:
    browser = chromium()
    out = tmp_path / "report.html"
    write_html(report, out)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]
    dom = subprocess.run(
        [*flags, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-rendered") == "1"  # the page's own script ran
    assert attrs["data-charts"] == "3"  # waterfall, treemap, scatter
    assert int(attrs["data-marks"]) >= len(report["files"]) * 2  # bars, blocks and points drawn
    assert int(attrs["data-file-rows"]) == len(report["files"])
    assert "data-pwned" not in attrs  # the document's script did not run
    assert "<img" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;.md" in dom
    assert 'data-code="context_document"' in dom
    assert "package-lock.json" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "html-report.png"
    subprocess.run(
        [
            *flags,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 10_000
