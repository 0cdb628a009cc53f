"""The main job on the real LangGraph docs corpus, as a dry run (issue 2 acceptance)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest

from docingest.account import StatsCollector
from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report, validate_report, write_report
from docingest.transport import DryRunTransport

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "langgraph-docs"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


class CapturingDryRun(httpx2.AsyncBaseTransport):
    """The dry-run transport, remembering every request body it answered."""

    def __init__(self) -> None:
        self.inner = DryRunTransport()
        self.bodies: list[bytes] = []
        self.hosts: set[str] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(request.read())
        self.hosts.add(request.url.host)
        return await self.inner.handle_async_request(request)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dry")
    capture = CapturingDryRun()
    config = IngestConfig(source=CORPUS, dry_run=True, report=out / "report.json", db=out / "kb.sqlite")
    result = ingest(config, transport=capture)
    report = build_report(result.stats)
    write_report(report, result.report_path)
    return {"result": result, "report": report, "capture": capture, "out": out, "config": config}


def test_report_is_valid_against_the_shipped_schema(corpus_run):
    report = json.loads(corpus_run["result"].report_path.read_text())
    validate_report(report)
    assert report["run"]["dry_run"] is True
    assert report["run"]["status"] == "completed"
    broken = json.loads(json.dumps(report))
    del broken["aggregated"]["total_api_calls_initiated"]
    with pytest.raises(jsonschema.ValidationError):
        validate_report(broken)


def test_conservation_of_tokens(corpus_run):
    report = corpus_run["report"]
    agg = report["aggregated"]
    per_chunk = sum(
        c["total_tokens_sent_to_apis"] for f in report["files"].values() for c in f["chunks"].values()
    )
    assert per_chunk + agg["unattributed"]["tokens_sent"] == agg["total_tokens_sent_to_apis"]
    assert agg["unattributed"]["tokens_sent"] == 0
    by_type = sum(t["tokens_sent"] for t in agg["by_call_type"].values())
    assert by_type == agg["total_tokens_sent_to_apis"]
    raw = sum(c["raw_chunk_tokens"] for f in report["files"].values() for c in f["chunks"].values())
    assert raw == agg["total_tokens_from_raw_docs"] > 0


def test_every_chunk_summarized_once_and_embedded_once(corpus_run):
    report = corpus_run["report"]
    agg = report["aggregated"]
    assert agg["total_failed_calls"] == 0
    for f in report["files"].values():
        for chunk in f["chunks"].values():
            types = [d["call_type"] for d in chunk["call_details"]]
            # a request identical to another chunk's is sent once per run (a cache hit here)
            assert len(set(types)) == len(types)
            assert len(types) + chunk.get("cache_hits", 0) == 2
    records = [json.loads(line) for line in corpus_run["result"].ledger_path.read_text().splitlines()]
    hits = Counter(r["call_type"] for r in records if r["type"] == "cache_hit")
    chats = agg["by_call_type"]["chat_summary"]["calls"]
    assert chats == agg["chunks"] - hits["chat_summary"]
    embeds = agg["by_call_type"]["create_embedding"]["calls"]
    assert embeds == -(-(agg["chunks"] - hits["create_embedding"]) // 256)  # batches of 256 inputs
    assert agg["total_api_calls_initiated"] == chats + embeds == len(corpus_run["capture"].bodies)


def test_no_base64_output_reaches_any_request(corpus_run):
    bodies = corpus_run["capture"].bodies
    assert bodies
    assert not any(b"iVBORw0KGgo" in body for body in bodies)  # PNG signature in base64
    agg = corpus_run["report"]["aggregated"]
    # the corpus is ~9 million tokens on disk, mostly notebook outputs; the loaded text a small part
    assert agg["source_tokens"] > 8_000_000
    assert agg["document_tokens"] < 0.1 * agg["source_tokens"]
    assert agg["dropped_tokens"]["image_output"] > 7_000_000


def test_dry_run_leaves_the_machine_and_the_knowledge_base_alone(corpus_run):
    assert corpus_run["capture"].hosts == {"api.openai.com"}  # answered by the transport, not sent
    assert not (corpus_run["out"] / "kb.sqlite").exists()
    assert all(rec.get("billed") is None for rec in _calls(corpus_run))


def test_report_rebuilt_from_the_ledger_is_the_same(corpus_run):
    live = corpus_run["report"]
    rebuilt = build_report(StatsCollector.from_ledger(corpus_run["result"].ledger_path))
    assert rebuilt["aggregated"] == live["aggregated"]
    assert rebuilt["files"] == live["files"]
    assert rebuilt["skipped_files"] == live["skipped_files"]


def test_lockfile_and_generated_files_are_listed_as_skipped(corpus_run):
    skipped = {s["path"]: s["reason"] for s in corpus_run["report"]["skipped_files"]}
    assert skipped.get("docs/poetry.lock") == "lockfile"


def _calls(run: dict[str, Any]) -> list[dict[str, Any]]:
    lines = run["result"].ledger_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "call"]


def test_the_shipped_schema_is_a_valid_json_schema():
    from docingest.report import report_schema

    jsonschema.Draft202012Validator.check_schema(report_schema())
