"""A large run's report is streamed from its ledger; it must equal the one built in memory."""

from __future__ import annotations

import json
from pathlib import Path

from docingest.account import StatsCollector
from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report, validate_report, write_run_report

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-docs"


def test_streamed_report_equals_in_memory_report(tmp_path):
    result = ingest(IngestConfig(source=SAMPLE, dry_run=True, report=tmp_path / "run.json"))
    detailed = StatsCollector.from_ledger(result.ledger_path)
    assert detailed.detailed
    expected = build_report(detailed)

    compact = StatsCollector.from_ledger(result.ledger_path, detail_limit=3)
    assert not compact.detailed
    assert compact.aggregated() == detailed.aggregated()
    out = tmp_path / "streamed.json"
    returned = write_run_report(compact, out, top_files=10**6)
    streamed = json.loads(out.read_text("utf-8"))
    validate_report(streamed)
    assert streamed["files"] == expected["files"]
    assert streamed == json.loads(json.dumps(expected))
    assert returned["aggregated"] == expected["aggregated"]
    assert not list(tmp_path.glob(".docingest-chunks-*"))  # the temporary index is gone


def test_compact_collector_keeps_file_figures_and_only_top_files_chunks(tmp_path):
    result = ingest(IngestConfig(source=SAMPLE, dry_run=True, report=tmp_path / "run.json"))
    expected = build_report(StatsCollector.from_ledger(result.ledger_path))
    compact = StatsCollector.from_ledger(result.ledger_path, detail_limit=0)
    returned = write_run_report(compact, tmp_path / "r.json", top_files=1)
    with_chunks = [p for p, f in returned["files"].items() if f["chunks"]]
    assert len(with_chunks) == 1
    for p, f in returned["files"].items():
        want = {k: v for k, v in expected["files"][p].items() if k != "chunks"}
        assert {k: v for k, v in f.items() if k != "chunks"} == want
