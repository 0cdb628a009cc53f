"""Outputs never overwrite each other, an input, or a file docingest did not write: exit 2 before any work."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from docingest.errors import ConfigError
from docingest.pipeline import IngestConfig, ingest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample-docs"
DOC = "# Guide\n\nHow to configure the service.\n"


def _refused(cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


def _docs(tmp_path: Path) -> Path:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "guide.md").write_text(DOC)
    return src


def test_report_and_ledger_on_one_path_are_refused(cli, tmp_path, capsys):
    src, x = _docs(tmp_path), tmp_path / "x.json"
    argv = ["ingest", str(src), "--dry-run", "--report", str(x), "--ledger", str(x)]
    assert (
        _refused(cli, capsys, argv)
        == f"error: --report and --ledger are the same file {x}: give each its own path"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # nothing written
    with pytest.raises(ConfigError, match="--report and --ledger are the same file"):
        ingest(IngestConfig(source=src, dry_run=True, report=x, ledger=x))
    assert not x.exists()


def test_report_and_html_on_one_path_are_refused_and_the_report_kept(cli, tmp_path, capsys):
    src, report = _docs(tmp_path), tmp_path / "r.json"
    assert cli(["ingest", str(src), "--dry-run", "--report", str(report)]) == 0
    before = report.read_bytes()
    argv = ["ingest", str(src), "--dry-run", "--html", str(report), "--report", str(report)]
    assert (
        _refused(cli, capsys, argv)
        == f"error: --report and --html are the same file {report}: give each its own path"
    )
    assert report.read_bytes() == before
    kb = str(tmp_path / "kb.sqlite")
    argv = ["ingest", str(src), "--dry-run", "--db", kb, "--report", kb]
    assert _refused(cli, capsys, argv) == (
        f"error: --report and --db are the same file {tmp_path / 'kb.sqlite'}: give each its own path"
    )


def test_a_report_or_html_over_a_file_docingest_did_not_write_is_refused(cli, tmp_path, capsys):
    src = _docs(tmp_path)
    prices = tmp_path / "prices.json"
    prices.write_text('{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}')
    doc = src / "guide.md"
    for flag, path in (("--report", doc), ("--html", doc), ("--report", prices)):
        assert _refused(cli, capsys, ["ingest", str(src), "--dry-run", flag, str(path)]) == (
            f"error: {flag} {path} exists and was not written by docingest: it replaces only its own "
            "reports; give another path, or remove the file"
        )
    argv = ["ingest", str(src), "--dry-run", "--price-file", str(prices), "--report", str(prices)]
    assert (
        _refused(cli, capsys, argv)
        == f"error: --report {prices} is also an input (--price-file): write it elsewhere"
    )
    assert doc.read_text() == DOC
    assert json.loads(prices.read_text()) == {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    assert _refused(cli, capsys, ["ingest", str(src), "--dry-run", "--report", str(src)]) == (
        f"error: --report {src} is a directory: give the path of a file"
    )


def test_a_previous_report_and_html_of_docingest_are_replaced(cli, tmp_path):
    src, report, html = _docs(tmp_path), tmp_path / "r.json", tmp_path / "r.html"
    empty = tmp_path / "empty.json"
    empty.touch()  # an empty file holds nothing to lose
    argv = ["ingest", str(src), "--dry-run", "--report", str(report), "--html", str(html)]
    assert cli(argv) == 0
    first = json.loads(report.read_text())["run"]["id"]
    assert first in html.read_text()
    assert cli(argv) == 0
    second = json.loads(report.read_text())["run"]["id"]
    assert second != first and second in html.read_text() and first not in html.read_text()
    assert cli(["analyze", str(report), "--report", str(empty)]) == 0
    assert json.loads(empty.read_text())["run"]["id"] == second


def test_report_analyze_and_compare_never_write_over_what_they_read(cli, tmp_path, capsys):
    src, report = _docs(tmp_path), tmp_path / "r.json"
    assert cli(["ingest", str(src), "--dry-run", "--report", str(report)]) == 0
    ledger = tmp_path / "r.ledger.jsonl"
    before = (report.read_bytes(), ledger.read_bytes())
    assert _refused(cli, capsys, ["report", str(ledger), "--report", str(ledger)]) == (
        f"error: --report {ledger} is also an input (LEDGER.jsonl): write it elsewhere"
    )
    assert _refused(cli, capsys, ["analyze", str(report), "--html", str(report)]) == (
        f"error: --html {report} is also an input (REPORT.json): write it elsewhere"
    )
    assert _refused(cli, capsys, ["compare", str(report), str(ledger), "--json", str(ledger)]) == (
        f"error: --json {ledger} is also an input (AFTER): write it elsewhere"
    )
    assert (report.read_bytes(), ledger.read_bytes()) == before
