"""docingest compare: the fix of a whole-document run verified in one command."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from docingest.cli import main
from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report, write_report


def _run(tmp_path: Path, src: Path, name: str, context: str) -> Path:
    out = tmp_path / f"{name}.json"
    result = ingest(IngestConfig(source=src, dry_run=True, report=out, chunk_tokens=200, context=context))  # type: ignore[arg-type]
    write_report(build_report(result.stats), out)
    return out


def test_compare_before_after(tmp_path: Path) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "big.md").write_text(
        "# Big\n\n" + "".join(f"Step {i} sets flag f{i}.\n\n" for i in range(400)), encoding="utf-8"
    )
    (src / "small.md").write_text("# Small\n\nOne line.\n", encoding="utf-8")
    before = _run(tmp_path, src, "before", "document")
    after = _run(tmp_path, src, "after", "section")
    out = tmp_path / "cmp.json"
    console = Console(record=True, width=140)
    assert main(["compare", str(before), str(after), "--json", str(out)], console=console) == 0
    result = json.loads(out.read_text())
    b, a = json.loads(before.read_text()), json.loads(after.read_text())
    rows = {r["key"]: r for r in result["totals"]}
    sent = rows["total_tokens_sent_to_apis"]
    assert sent["before"] == b["aggregated"]["total_tokens_sent_to_apis"]
    assert sent["after"] == a["aggregated"]["total_tokens_sent_to_apis"]
    assert sent["delta"] == sent["after"] - sent["before"] < 0
    assert rows["cost_usd"]["after"] < rows["cost_usd"]["before"]
    assert result["files"][0]["path"] == "big.md"
    assert result["files"][0]["delta"] == (
        a["files"]["big.md"]["total_tokens_sent_to_apis"] - b["files"]["big.md"]["total_tokens_sent_to_apis"]
    )
    assert result["config_changes"] == {"context": ["document", "section"]}
    assert "context_document" in result["findings_resolved"]
    text = console.export_text()
    assert "big.md" in text and "findings resolved: " in text and "context_document" in text


def test_analyze_report_and_ledger_print_the_same_findings(tmp_path: Path) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text(
        "# A\n\n" + "".join(f"Fact {i} about a.\n\n" for i in range(300)), encoding="utf-8"
    )
    rep = _run(tmp_path, src, "run", "document")
    ledger = tmp_path / "run.ledger.jsonl"
    outs = []
    for target in (rep, ledger):
        console = Console(record=True, width=200)
        assert main(["analyze", str(target)], console=console) == 0
        outs.append(console.export_text().split("\n", 1)[1])  # drop the "== path" line
    assert "context_document" in outs[0]
    assert "where the tokens go" in outs[0]
    assert outs[0].split("context_document")[1] == outs[1].split("context_document")[1]
    small = _run(tmp_path, src, "small", "section")
    console = Console(record=True, width=200)
    assert main(["analyze", str(small), str(rep)], console=console) == 0
    assert "growth with repository size" in console.export_text()


def test_a_top_below_one_is_refused(tmp_path: Path, capsys) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("# A\n\nOne line.\n", encoding="utf-8")
    report = _run(tmp_path, src, "r", "section")
    console = Console(record=True, width=140)
    assert main(["compare", str(report), str(report), "--top", "-5"], console=console) == 2
    assert "--top must be at least 1 (got -5)" in capsys.readouterr().err
