"""Real runs through the official SDK against the local OpenAI-compatible server (issue 2)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from docingest.account import StatsCollector
from docingest.pipeline import IngestConfig, ingest
from docingest.query import search
from docingest.report import build_report, validate_report
from docingest.testing.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample-docs"
CORPUS = ROOT.parent / "shared" / "corpora" / "langgraph-docs"


def _calls(ledger: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, ledger.read_text().splitlines()) if r["type"] == "call"]


def _run(source: Path, tmp: Path, server: OpenAIServer, **kw: Any) -> tuple[IngestConfig, Any]:
    config = IngestConfig(
        source=source,
        report=tmp / "report.json",
        db=tmp / "kb.sqlite",
        base_url=server.base_url,
        api_key="sk-test-secret-123",
        **kw,
    )
    return config, ingest(config)


def test_sample_docs_real_run_matches_server_usage(tmp_path):
    with OpenAIServer() as server:
        config, result = _run(SAMPLE, tmp_path, server)
        report = build_report(result.stats)
        validate_report(report)
        agg = report["aggregated"]
        calls = _calls(result.ledger_path)
        assert agg["total_failed_calls"] == 0
        assert len(calls) == len(server.requests) == agg["total_api_calls_initiated"]
        for call in calls:  # each computed count equals the server's usage
            assert call["prompt_tokens"] == call["billed"]["prompt_tokens"]
        usage = server.usage_totals()
        assert agg["billed_prompt_tokens"] == usage["prompt_tokens"] == agg["total_tokens_sent_to_apis"]
        assert report["run"]["dry_run"] is False
        # the key never reaches the ledger or the report
        assert "sk-test-secret-123" not in result.ledger_path.read_text()
        assert "sk-test-secret-123" not in json.dumps(report)

        with sqlite3.connect(config.db) as db:
            rows = db.execute(
                "SELECT count(*), count(summary_key), count(embedding_key) FROM chunks"
            ).fetchone()
            (dupes,) = db.execute(
                "SELECT count(*) FROM (SELECT path, idx FROM chunks GROUP BY 1, 2 HAVING count(*) > 1)"
            ).fetchone()
            stored = {
                path: (source, document)
                for path, source, document in db.execute(
                    "SELECT path, source_tokens, document_tokens FROM documents"
                )
            }
        assert rows == (agg["chunks"], agg["chunks"], agg["chunks"])
        assert dupes == 0
        # each document's token counts, counted beside its API calls, reach its row
        assert stored == {
            path: (f["source_tokens"], f["document_tokens"]) for path, f in report["files"].items()
        }
        assert all(source >= document > 0 for source, document in stored.values())

        hits = search(
            "Configuration precedence environment variables",
            db=config.db,
            k=3,
            base_url=server.base_url,
            api_key="x",
        )
        assert hits
        assert hits[0].path == "docs/guide/configuration.md"


def test_ledger_of_a_run_cut_short_still_rebuilds(tmp_path):
    with OpenAIServer() as server:
        _config, result = _run(SAMPLE, tmp_path, server)
    lines = result.ledger_path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.ledger.jsonl"
    keep = len(lines) // 2
    cut.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])  # torn last line
    stats = StatsCollector.from_ledger(cut)
    report = build_report(stats)
    validate_report(report)
    assert report["run"]["status"] == "incomplete"
    expected_calls = sum(1 for line in lines[:keep] if json.loads(line)["type"] == "call")
    assert report["aggregated"]["total_api_calls_initiated"] == expected_calls


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_corpus_real_run_counts_equal_server_usage_and_query_finds_the_page(tmp_path):
    with OpenAIServer() as server:
        config, result = _run(CORPUS, tmp_path, server, concurrency=16)
        agg = build_report(result.stats)["aggregated"]
        calls = _calls(result.ledger_path)
        assert agg["total_failed_calls"] == 0
        mismatches = [c for c in calls if c["prompt_tokens"] != c["billed"]["prompt_tokens"]]
        assert mismatches == []
        assert agg["billed_prompt_tokens"] == server.usage_totals()["prompt_tokens"]
        with sqlite3.connect(config.db) as db:
            (chunks,) = db.execute("SELECT count(*) FROM chunks").fetchone()
        assert chunks == agg["chunks"]
        # a query copied from a section heading of a known page returns a chunk of that page first
        for heading, page in [
            ("Implementing Token Validation", "docs/docs/tutorials/auth/add_auth_server.md"),
            ("Functional API vs. Graph API", "docs/docs/concepts/functional_api.md"),
            ("Adding scoped authorization handlers", "docs/docs/tutorials/auth/resource_auth.md"),
        ]:
            hits = search(heading, db=config.db, k=3, base_url=server.base_url, api_key="x")
            assert hits[0].path == page, (heading, hits[0])


def test_a_text_repeated_after_its_answer_is_forecast_as_the_real_run_sends_it(tmp_path):
    """a.md and z.md are the same page, 20 pages apart: by the time z.md is planned, a.md's
    embedding was answered. The real run finds it in its knowledge base; the dry run must not
    forecast it again."""
    src = tmp_path / "src"
    src.mkdir()
    page = "# Shared page\n\n" + " ".join(f"shared{j}" for j in range(120)) + "\n"
    (src / "a.md").write_text(page)
    (src / "z.md").write_text(page)
    for i in range(20):
        (src / f"m{i:02d}.md").write_text(f"# Page {i}\n\n" + " ".join(f"w{i}x{j}" for j in range(80)) + "\n")
    figures = {}
    with OpenAIServer() as server:
        for mode in ("dry", "real"):
            result = ingest(
                IngestConfig(
                    source=src,
                    report=tmp_path / f"{mode}.json",
                    db=tmp_path / f"{mode}.sqlite",
                    base_url=server.base_url,
                    api_key="k",
                    dry_run=mode == "dry",
                    concurrency=1,
                    embedding_batch_size=2,
                )
            )
            agg = build_report(result.stats)["aggregated"]
            figures[mode] = (
                agg["total_api_calls_initiated"],
                agg["total_tokens_sent_to_chat_model"],
                agg["total_tokens_sent_to_embeddings"],
                agg["cache_hits"],
            )
    assert figures["dry"] == figures["real"]
    # z.md's embedding comes from a.md's (its summary differs: the prompt names the document)
    assert figures["real"][3] == 1


def test_a_real_run_refuses_to_start_while_another_writes_its_knowledge_base(tmp_path):
    """While one run writes a knowledge base (here: its lock held, as a running docingest holds
    it), another real run on it refuses to start; a dry run still forecasts."""
    import fcntl

    from docingest.errors import ConfigError

    db = tmp_path / "kb.sqlite"
    with OpenAIServer() as server:
        config = IngestConfig(
            source=SAMPLE, report=tmp_path / "r.json", db=db, base_url=server.base_url, api_key="k"
        )
        with open(tmp_path / "kb.sqlite.lock", "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.write("pid 4242")
            held.flush()
            with pytest.raises(ConfigError, match=r"another docingest run \(pid 4242\) is writing"):
                ingest(config)
            assert server.requests == []
            dry = ingest(IngestConfig(source=SAMPLE, report=tmp_path / "d.json", db=db, dry_run=True))
            assert dry.stats.aggregated()["total_api_calls_initiated"] > 0
        result = ingest(config)  # the lock released: the run goes on
        assert result.stats.aggregated()["total_failed_calls"] == 0 and server.requests
