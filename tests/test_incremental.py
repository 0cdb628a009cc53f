"""Incremental runs: what is already in the knowledge base is never paid for twice."""

from __future__ import annotations

import io
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from docingest.cli import main
from docingest.pipeline import IngestConfig, RunResult, ingest
from docingest.report import build_report, validate_report
from docingest.testing.openai_server import OpenAIServer


def write_tree(root: Path, files: int) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sections = "\n\n".join(
            f"## Part {k}\n\n" + " ".join(f"p{i}s{k}w{j}" for j in range(120)) for k in range(3)
        )
        (src / f"page{i:02d}.md").write_text(f"# Page {i}\n\n{sections}\n")
    return src


def ledger(result: RunResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.ledger_path.read_text().splitlines()]


def run(src: Path, tmp: Path, server: OpenAIServer, name: str, **kw: Any) -> RunResult:
    config = IngestConfig(
        source=src,
        report=tmp / f"{name}.json",
        db=tmp / "kb.sqlite",
        base_url=server.base_url,
        api_key="k",
        **kw,
    )
    return ingest(config)


def test_unchanged_source_sends_nothing_and_an_edit_sends_only_its_file(tmp_path):
    src = write_tree(tmp_path, 20)
    with OpenAIServer() as server:
        first = run(src, tmp_path, server, "first")
        sent_first = first.stats.aggregated()["total_tokens_sent_to_apis"]
        assert sent_first > 0
        served = len(server.requests)

        second = run(src, tmp_path, server, "second")
        agg = build_report(second.stats)["aggregated"]
        assert len(server.requests) == served  # not one request
        assert agg["total_tokens_sent_to_apis"] == 0
        assert agg["total_api_calls_initiated"] == 0
        assert agg["files_unchanged"] == 20
        assert agg["cache_hits"] == 2 * agg["chunks"]
        assert agg["tokens_saved_by_cache"] == sent_first
        report = build_report(second.stats)
        validate_report(report)
        for info in report["files"].values():
            assert info["unchanged"] is True
            assert info["tokens_saved"] > 0 and info["cache_hits"] == 2 * info["chunk_count"]

        page = src / "page07.md"
        page.write_text(page.read_text().replace("p7s2w5 ", "changed "))
        third = run(src, tmp_path, server, "third")
    calls = [r for r in ledger(third) if r["type"] == "call"]
    assert calls
    assert {c[0] for r in calls for c in r["chunks"]} == {"page07.md"}
    summaries = [r for r in calls if r["call_type"] == "chat_summary"]
    # the edited chunk and, with --context section, the neighbours that quote it; the others of
    # page 7 kept their prompts and come from the cache
    resent = {r["chunks"][0][1] for r in summaries}
    agg = third.stats.aggregated()
    page7 = third.stats.files["page07.md"]
    assert 0 < len(resent) < len(page7.chunks)
    assert sum(cs.cache_hits for cs in page7.chunks.values()) > 0
    assert agg["files_unchanged"] == 19
    with sqlite3.connect(tmp_path / "kb.sqlite") as db:
        total, linked = db.execute(
            "SELECT count(*), count(summary_key) + count(embedding_key) FROM chunks"
        ).fetchone()
    assert linked == 2 * total


def test_the_terminal_says_all_files_were_unchanged(tmp_path):
    src = write_tree(tmp_path, 3)
    with OpenAIServer() as server:
        argv = ["ingest", str(src), "--db", str(tmp_path / "kb.sqlite"), "--base-url", server.base_url]
        out = io.StringIO()
        assert main([*argv, "--report", str(tmp_path / "a.json")], console=Console(file=out, width=200)) == 0
        out = io.StringIO()
        assert main([*argv, "--report", str(tmp_path / "b.json")], console=Console(file=out, width=200)) == 0
    assert "files unchanged: 3 (all of them)" in out.getvalue()


def test_deleted_files_leave_the_knowledge_base(tmp_path):
    src = write_tree(tmp_path, 4)
    with OpenAIServer() as server:
        run(src, tmp_path, server, "first")
        (src / "page02.md").unlink()
        again = run(src, tmp_path, server, "second")
    assert again.stats.aggregated()["total_api_calls_initiated"] == 0
    with sqlite3.connect(tmp_path / "kb.sqlite") as db:
        paths = [p for (p,) in db.execute("SELECT DISTINCT path FROM chunks ORDER BY path")]
        docs = [p for (p,) in db.execute("SELECT path FROM documents ORDER BY path")]
    assert paths == docs == ["page00.md", "page01.md", "page03.md"]


def test_identical_chunks_are_summarized_and_embedded_once_per_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = "# Install\n\n" + " ".join(f"step{j}" for j in range(80)) + "\n"
    for name in ("a.md", "b.md", "c.md"):
        (src / name).write_text(text)
    (src / "other.md").write_text("# Other\n\nsomething else entirely\n")
    with OpenAIServer() as server:
        result = run(src, tmp_path, server, "run", context="none")
        served = server.requests
    records = ledger(result)
    calls = [r for r in records if r["type"] == "call"]
    chats = [r for r in calls if r["call_type"] == "chat_summary"]
    assert len(chats) == 2  # one for the three copies, one for other.md
    embedded = [c[0] for r in calls if r["call_type"] == "create_embedding" for c in r["chunks"]]
    assert len(embedded) == 2
    hits = [r for r in records if r["type"] == "cache_hit"]
    assert Counter((r["call_type"], r["source"]) for r in hits) == {
        ("chat_summary", "this_run"): 2,
        ("create_embedding", "this_run"): 2,
    }
    assert len(served) == 3
    with sqlite3.connect(tmp_path / "kb.sqlite") as db:
        rows = db.execute("SELECT path, summary_key, embedding_key FROM chunks ORDER BY path").fetchall()
    assert [r[0] for r in rows] == ["a.md", "b.md", "c.md", "other.md"]
    assert len({r[1] for r in rows[:3]}) == 1 and len({r[2] for r in rows[:3]}) == 1
    assert all(r[1] and r[2] for r in rows)


def test_a_dry_run_reads_the_cache_and_writes_nothing(tmp_path):
    src = write_tree(tmp_path, 5)
    with OpenAIServer() as server:
        run(src, tmp_path, server, "real")
    (src / "page01.md").write_text("# Page 1\n\nrewritten\n")
    db = tmp_path / "kb.sqlite"
    before = db.read_bytes()
    config = IngestConfig(source=src, report=tmp_path / "dry.json", db=db, dry_run=True)
    result = ingest(config)
    agg = result.stats.aggregated()
    assert agg["files_unchanged"] == 4
    calls = [r for r in ledger(result) if r["type"] == "call"]
    assert {c[0] for r in calls for c in r["chunks"]} == {"page01.md"}
    assert db.read_bytes() == before
