"""Files that are not what a flag expects are refused with exit 2 and a one-line message naming them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample-docs"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_db_that_is_not_sqlite_is_refused_with_or_without_dry_run(cli, tmp_path, capsys, dry_run):
    db = tmp_path / "garbage.sqlite"
    db.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    argv = ["ingest", str(SAMPLE), "--db", str(db), "--report", str(tmp_path / "r.json")]
    argv += ["--dry-run"] if dry_run else ["--base-url", "http://127.0.0.1:9/v1"]
    assert cli(argv) == 2
    assert _error_line(capsys) == (
        f"error: cannot use the knowledge base at {db} (file is not a database): it is not a docingest "
        "knowledge base; pass --db with the path of a new file"
    )
    assert db.read_text() == "root:x:0:0:root:/root:/bin/bash\n" * 40


def test_a_dry_run_reads_an_empty_db_file_as_an_empty_cache(cli, tmp_path):
    db = tmp_path / "kb.sqlite"
    db.touch()  # SQLite takes an empty file for an empty database: no tables to read the cache from
    assert (
        cli(["ingest", str(SAMPLE), "--dry-run", "--db", str(db), "--report", str(tmp_path / "r.json")]) == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["aggregated"]["total_failed_calls"] == 0 and report["aggregated"]["chunks"] > 0
    assert db.stat().st_size == 0


def test_a_dry_run_refuses_a_db_of_a_newer_docingest(cli, tmp_path, capsys):
    db = tmp_path / "kb.sqlite"
    assert (
        cli(["ingest", str(SAMPLE), "--db", str(db), "--dry-run", "--report", str(tmp_path / "a.json")]) == 0
    )
    with sqlite3.connect(db) as conn:  # a database with a migration from the future
        conn.execute("CREATE TABLE _migrations (seq INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
        conn.execute("INSERT INTO _migrations (name) VALUES ('m001_initial'), ('m999_future')")
    capsys.readouterr()
    assert (
        cli(["ingest", str(SAMPLE), "--db", str(db), "--dry-run", "--report", str(tmp_path / "b.json")]) == 2
    )
    assert _error_line(capsys) == (
        "error: the knowledge base has schema migrations this docingest does not know (m999_future): "
        "it was written by a newer version; upgrade docingest or point --db at another file"
    )


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_a_report_of_another_schema_version_is_refused(cli, tmp_path, capsys, command):
    v99 = tmp_path / "v99.json"
    v99.write_text('{"schema_version": 99}')
    assert cli([command, str(v99)] + ([str(v99)] if command == "compare" else [])) == 2
    assert _error_line(capsys) == (
        f"error: {v99} is a report of schema_version 99; this docingest reads version 1: upgrade docingest, "
        "or rebuild the report from its ledger (docingest report LEDGER.jsonl)"
    )


def test_the_report_command_refuses_a_report_given_as_a_ledger(cli, tmp_path, capsys):
    v99 = tmp_path / "v99.json"
    v99.write_text('{"schema_version": 99}')
    assert cli(["report", str(v99)]) == 2
    assert _error_line(capsys) == f"error: {v99}:1: not a docingest ledger record"


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda r: r.pop("aggregated"), "top level: 'aggregated' is a required property"),
        (
            lambda r: r["aggregated"].pop("total_tokens_from_raw_docs"),
            "aggregated: 'total_tokens_from_raw_docs'",
        ),
        (lambda r: r.update(files=[]), "files: [] is not of type 'object'"),
        (
            lambda r: r["files"]["README.md"].pop("chunk_count"),
            "files/README.md: 'chunk_count' is a required",
        ),
    ],
)
def test_an_incomplete_report_is_refused_by_analyze_and_compare(cli, tmp_path, capsys, edit, where):
    good = tmp_path / "good.json"
    assert cli(["ingest", str(SAMPLE), "--dry-run", "--report", str(good)]) == 0
    report = json.loads(good.read_text())
    edit(report)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    capsys.readouterr()
    for argv in (["analyze", str(bad)], ["compare", str(good), str(bad)]):
        assert cli(argv) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: {bad} is not a complete docingest report ({where}")
        assert line.endswith("): rebuild it from its ledger (docingest report LEDGER.jsonl)")
    assert cli(["analyze", str(good)]) == 0


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ('{"input": 1e308, "output": 1e308}', "'input' 1e+308"),
        ('{"input": 0.15, "output": -0.6}', "'output' -0.6"),
        ('{"input": NaN, "output": 0.6}', "'input' nan"),
        ('{"input": 0.15, "cached_input": Infinity, "output": 0.6}', "'cached_input' inf"),
        ('{"input": 1000001, "output": 0.6}', "'input' 1000001"),
        ('{"input": true, "output": 0.6}', "'input' True"),
    ],
)
def test_a_price_file_with_a_price_that_is_not_real_is_refused_before_any_work(
    cli, tmp_path, capsys, entry, shown
):
    prices = tmp_path / "prices.json"
    prices.write_text(f'{{"gpt-4o-mini": {entry}}}')
    out = tmp_path / "out"
    argv = ["ingest", str(SAMPLE), "--dry-run", "--price-file", str(prices), "--max-cost", "100"]
    assert cli([*argv, "--report", str(out / "r.json")]) == 2
    message = (
        f"error: price file {prices}: model 'gpt-4o-mini' has {shown}: a price is a number of USD per "
        "million tokens from 0 to 1,000,000"
    )
    assert _error_line(capsys) == message
    assert not out.exists()  # no ledger, no report
    good = tmp_path / "good.json"
    assert cli(["ingest", str(SAMPLE), "--dry-run", "--report", str(good)]) == 0
    capsys.readouterr()
    assert cli(["analyze", str(good), "--price-file", str(prices)]) == 2
    assert _error_line(capsys) == message


def test_a_price_of_zero_and_the_highest_price_are_accepted(cli, tmp_path):
    from docingest.cost import load_price_file

    prices = tmp_path / "prices.json"
    prices.write_text('{"free": {"input": 0, "output": 0}, "dear": {"input": 1000000, "output": 1e6}}')
    loaded = load_price_file(prices)
    assert (loaded["free"].input, loaded["free"].output) == (0.0, 0.0)
    assert (loaded["dear"].input, loaded["dear"].output, loaded["dear"].cached_input) == (1e6, 1e6, None)
