"""The command line: exit codes, messages, DRY_RUN, and the README kept in step with --help."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from docingest.cli import build_parser, main
from docingest.config import env_dry_run

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample-docs"


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120), buf


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DRY_RUN"):
        monkeypatch.delenv(name, raising=False)


def test_dry_run_of_the_sample_docs_writes_report_and_ledger(tmp_path):
    console, out = _console()
    report = tmp_path / "r.json"
    code = main(
        ["ingest", str(SAMPLE), "--dry-run", "--report", str(report), "--db", str(tmp_path / "kb")],
        console=console,
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert data["run"]["dry_run"] is True
    assert (tmp_path / "r.ledger.jsonl").exists()
    assert not (tmp_path / "kb").exists()
    text = out.getvalue()
    assert "dry run (no API call made)" in text
    assert f"{data['aggregated']['total_tokens_sent_to_chat_model']:,}" in text
    skipped = {s["path"]: s["reason"] for s in data["skipped_files"]}
    assert skipped["docs/package-lock.json"] == "lockfile"
    assert skipped["docs/assets/logo.md"] == "binary"
    assert skipped["docs/assets/app.min.js"] == "minified"


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", " Yes ", "on", "y"])
def test_dry_run_env_true(value):
    assert env_dry_run({"DRY_RUN": value}) is True


@pytest.mark.parametrize("value", ["false", "0", "", "no", "off", "N"])
def test_dry_run_env_false(value):
    assert env_dry_run({"DRY_RUN": value}) is False
    assert env_dry_run({}) is False


@pytest.mark.parametrize("value", ["maybe", "ture", "2"])
def test_a_dry_run_env_that_is_neither_is_refused_before_any_work(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRY_RUN", value)
    console, _ = _console()
    report = tmp_path / "r.json"
    argv = ["ingest", str(SAMPLE), "--report", str(report), "--base-url", "http://127.0.0.1:9/v1"]
    assert main(argv, console=console) == 2
    assert f"DRY_RUN={value!r} is neither true" in capsys.readouterr().err
    assert not report.exists()


def test_dry_run_from_the_environment_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DRY_RUN", "yes")
    console, _ = _console()
    report = tmp_path / "r.json"
    assert main(["ingest", str(SAMPLE), "--report", str(report)], console=console) == 0
    assert json.loads(report.read_text())["run"]["dry_run"] is True


def test_real_run_without_key_or_base_url_stops_at_once(tmp_path, capsys):
    console, _ = _console()
    report = tmp_path / "r.json"
    code = main(["ingest", str(SAMPLE), "--report", str(report)], console=console)
    assert code == 2
    err = capsys.readouterr().err
    for needle in ("OPENAI_API_KEY", "--base-url", "--dry-run"):
        assert needle in err
    assert not report.exists()
    assert not (tmp_path / "r.ledger.jsonl").exists()


def test_overlap_not_below_chunk_size_is_refused_before_any_work(tmp_path, capsys):
    console, _ = _console()
    report = tmp_path / "r.json"
    argv = ["ingest", str(SAMPLE), "--dry-run", "--chunk-tokens", "100", "--overlap-tokens", "100"]
    assert main([*argv, "--report", str(report)], console=console) == 2
    err = capsys.readouterr().err
    assert "--overlap-tokens (100) must be smaller than --chunk-tokens (100)" in err
    assert not report.exists() and not (tmp_path / "r.ledger.jsonl").exists()


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    console, _ = _console()
    assert main(["ingest", str(tmp_path / "nope"), "--dry-run"], console=console) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_command_rebuilds_from_the_ledger(tmp_path):
    console, _ = _console()
    first = tmp_path / "r.json"
    assert main(["ingest", str(SAMPLE), "--dry-run", "--report", str(first)], console=console) == 0
    rebuilt = tmp_path / "again.json"
    assert main(["report", str(tmp_path / "r.ledger.jsonl"), "--report", str(rebuilt)], console=console) == 0
    a, b = json.loads(first.read_text()), json.loads(rebuilt.read_text())
    assert a["aggregated"] == b["aggregated"]
    assert a["files"] == b["files"]


def test_report_of_a_missing_ledger_is_a_clear_error(tmp_path, capsys):
    console, _ = _console()
    assert main(["report", str(tmp_path / "none.jsonl")], console=console) == 2
    assert "cannot read ledger" in capsys.readouterr().err


def test_readme_documents_every_ingest_option():
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    ingest = sub.choices["ingest"]  # type: ignore[attr-defined]
    flags = [s for a in ingest._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    missing = [f for f in flags if not re.search(re.escape(f) + r"\b", readme)]
    assert missing == []


def test_no_api_key_ever_reaches_the_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-key-000")
    console, out = _console()
    report = tmp_path / "r.json"
    assert main(["ingest", str(SAMPLE), "--dry-run", "--report", str(report)], console=console) == 0
    for path in (report, tmp_path / "r.ledger.jsonl"):
        assert "sk-very-secret-key-000" not in path.read_text()
    assert "sk-very-secret-key-000" not in out.getvalue()
    assert os.environ["OPENAI_API_KEY"] == "sk-very-secret-key-000"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--chunk-tokens", "0", "--chunk-tokens must be at least 16"),
        ("--overlap-tokens", "-1", "--overlap-tokens cannot be negative"),
        ("--concurrency", "0", "--concurrency must be at least 1"),
        ("--summary-tokens", "0", "--summary-tokens must be at least 1"),
        ("--max-retries", "-1", "--max-retries cannot be negative"),
        ("--timeout", "0", "--timeout must be more than 0"),
        ("--max-file-bytes", "0", "--max-file-bytes must be at least 1"),
        ("--embedding-batch", "4096", "--embedding-batch must be between 1 and 2048"),
        ("--base-url", "notaurl", "--base-url must be an http(s) URL"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(tmp_path, capsys, flag, value, message):
    console, _ = _console()
    report = tmp_path / "r.json"
    assert (
        main(["ingest", str(SAMPLE), "--dry-run", flag, value, "--report", str(report)], console=console) == 2
    )
    assert message in capsys.readouterr().err
    assert not report.exists()


def test_a_run_whose_calls_all_fail_exits_4_and_names_the_unreachable_api(tmp_path):
    console, out = _console()
    report = tmp_path / "r.json"
    argv = ["ingest", str(SAMPLE), "--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0"]
    code = main([*argv, "--report", str(report), "--db", str(tmp_path / "kb.sqlite")], console=console)
    assert code == 4
    data = json.loads(report.read_text())
    agg = data["aggregated"]
    assert (
        agg["total_successful_calls"] == 0
        and agg["total_failed_calls"] == agg["total_api_calls_initiated"] > 0
    )
    text = " ".join(out.getvalue().split())
    # one failure per request (no retries here: one attempt each), an embedding batch counting once
    assert agg["by_call_type"]["create_embedding"]["calls"] < agg["chunks"]
    n = agg["total_api_calls_initiated"]
    assert f" {n:,} request(s) failed for good ({n:,} APIConnectionError)" in text
    assert "no request reached the API at http://127.0.0.1:9/v1" in text


def test_a_run_with_some_failed_requests_exits_4(tmp_path):
    from docingest.testing.openai_server import OpenAIServer, parse_fault

    console, out = _console()
    report = tmp_path / "r.json"
    with OpenAIServer(faults=[parse_fault("context_length:on=2")]) as server:
        argv = ["ingest", str(SAMPLE), "--base-url", server.base_url, "--report", str(report)]
        code = main([*argv, "--db", str(tmp_path / "kb.sqlite")], console=console)
    assert code == 4
    text = " ".join(out.getvalue().split())
    assert "1 request(s) failed for good (1 400 context_length_exceeded)" in text


def test_an_empty_source_is_reported_with_exit_2(tmp_path):
    console, out = _console()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "script.py").write_text("print(1)\n")
    code = main(
        ["ingest", str(tmp_path / "src"), "--dry-run", "--report", str(tmp_path / "r.json")], console=console
    )
    assert code == 2
    assert "no documentation files found" in " ".join(out.getvalue().split())


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_a_glob_that_can_never_match_is_refused_before_any_work(tmp_path, capsys, flag):
    console, _ = _console()
    report = tmp_path / "r.json"
    argv = ["ingest", str(SAMPLE), "--dry-run", "--report", str(report), flag, "*.md", flag, "["]
    assert main(argv, console=console) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {flag} '[' has a '[' that no ']' closes, so gitignore syntax drops the whole pattern: "
        "write \\[ for a '['\n"
    )
    assert not report.exists() and not (tmp_path / "r.ledger.jsonl").exists()


def test_an_include_that_selects_no_file_says_so_with_its_patterns(tmp_path):
    src = tmp_path / "src"
    for rel in ("guide/intro.md", "package-lock.json", "data.json"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("{}\n")
    console, out = _console()
    argv = ["ingest", str(src), "--dry-run", "--report", str(tmp_path / "r.json")]
    assert main([*argv, "--include", "docs/*.md", "--include", "*.rst"], console=console) == 2
    assert " ".join(out.getvalue().split()).endswith(
        f"no file in {src} matched the include patterns 'docs/*.md', '*.rst': --include globs use "
        "gitignore syntax on the path relative to the source, e.g. 'docs/**/*.md' ('*.md' alone matches "
        "in every directory)"
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["aggregated"]["files_loaded"] == 0
    assert [s["path"] for s in report["skipped_files"]] == ["package-lock.json"]  # reported, not matched

    console, out = _console()
    (src / "data.json").write_text("")
    assert main([*argv, "--include", "*.json"], console=console) == 2
    assert " ".join(out.getvalue().split()).endswith(
        f"no file loaded from {src}: the 2 file(s) the include patterns '*.json' match were all skipped "
        "(listed above)"
    )


def test_an_unwritable_report_path_is_a_clear_error(tmp_path, capsys):
    console, _ = _console()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["ingest", str(SAMPLE), "--dry-run", "--report", str(blocker / "r.json")], console=console)
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "--report" in err
    assert "Traceback" not in err


def test_query_errors_are_messages_not_tracebacks(tmp_path, capsys):
    from docingest.testing.openai_server import OpenAIServer

    console, _ = _console()
    db = tmp_path / "kb.sqlite"
    with OpenAIServer() as server:
        argv = ["ingest", str(SAMPLE), "--base-url", server.base_url, "--db", str(db)]
        assert main([*argv, "--report", str(tmp_path / "r.json")], console=console) == 0
        base = ["query", "--db", str(db), "--base-url", server.base_url]
        assert main([*base, "configuration", "-k", "0"], console=console) == 2
        assert "-k must be at least 1" in capsys.readouterr().err
        assert main([*base, "  "], console=console) == 2
        assert "the query is empty" in capsys.readouterr().err
        assert (
            main([*base, "configuration", "--embedding-model", "text-embedding-3-large"], console=console)
            == 2
        )
        err = capsys.readouterr().err
        assert "no embeddings of text-embedding-3-large" in err and "text-embedding-3-small" in err
    unreachable = ["query", "configuration", "--db", str(db), "--base-url", "http://127.0.0.1:9/v1"]
    assert main(unreachable, console=console) == 2
    err = capsys.readouterr().err
    assert "could not embed the query" in err and "Traceback" not in err


def test_reports_are_written_with_the_usual_file_mode(tmp_path):
    console, _ = _console()
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    old = os.umask(0o022)
    try:
        argv = ["ingest", str(SAMPLE), "--dry-run", "--report", str(report), "--html", str(html)]
        assert main(argv, console=console) == 0
    finally:
        os.umask(old)
    assert report.stat().st_mode & 0o777 == 0o644
    assert html.stat().st_mode & 0o777 == 0o644


def test_query_lines_show_the_heading_path_of_each_hit(tmp_path):
    from docingest.query import search
    from docingest.testing.openai_server import OpenAIServer

    console, buf = _console()
    db = tmp_path / "kb.sqlite"
    with OpenAIServer() as server:
        argv = ["ingest", str(SAMPLE), "--base-url", server.base_url, "--db", str(db)]
        assert main([*argv, "--report", str(tmp_path / "r.json")], console=console) == 0
        hits = search("Quick install", db=db, k=3, base_url=server.base_url, api_key="x")
        buf.seek(0)
        buf.truncate()
        assert (
            main(
                ["query", "Quick install", "-k", "3", "--db", str(db), "--base-url", server.base_url],
                console=console,
            )
            == 0
        )
    lines = [line for line in buf.getvalue().splitlines() if re.match(r"\d+\. ", line)]
    assert len(lines) == len(hits) == 3
    for rank, (line, hit) in enumerate(zip(lines, hits, strict=True), 1):
        expected = f"{rank}. {hit.path} #{hit.index}  score {hit.score:.4f}"
        if hit.heading_path:
            expected += f"  ({' > '.join(hit.heading_path)})"
        assert line == expected
    assert any(hit.heading_path for hit in hits)


def test_report_of_an_empty_file_is_refused(tmp_path, capsys):
    console, _ = _console()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty)], console=console) == 2
    assert "holds no ledger record" in capsys.readouterr().err


def test_loader_notes_are_shown_in_the_terminal(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "ok.md").write_text("# Fine\n\nText.\n")
    (src / "latin1.md").write_bytes("# Caf\xe9\n".encode("latin-1"))
    (src / "broken.ipynb").write_text("{ not json")
    console, out = _console()
    assert main(["ingest", str(src), "--dry-run", "--report", str(tmp_path / "r.json")], console=console) == 0
    text = out.getvalue()
    assert "note: invalid_utf8_replaced: latin1.md" in text
    assert "note: notebook_unparseable: broken.ipynb" in text


def test_dry_run_shows_the_figure_the_token_budget_is_checked_against(tmp_path):
    import asyncio

    from docingest.config import IngestConfig
    from docingest.pipeline import aforecast

    console, out = _console()
    assert (
        main(["ingest", str(SAMPLE), "--dry-run", "--report", str(tmp_path / "r.json")], console=console) == 0
    )
    line = next(x for x in out.getvalue().splitlines() if "forecast for --max-tokens" in x)
    shown = int(re.sub(r"[^0-9]", "", line.split("│")[2]))
    forecast = asyncio.run(aforecast(IngestConfig(source=SAMPLE, dry_run=True, report=tmp_path / "f.json")))
    assert shown == forecast.tokens


def test_report_of_a_report_points_at_its_ledger(tmp_path, capsys):
    console, _ = _console()
    report = tmp_path / "r.json"
    assert main(["ingest", str(SAMPLE), "--dry-run", "--report", str(report)], console=console) == 0
    assert main(["report", str(report)], console=console) == 2
    assert f"its ledger is {tmp_path / 'r'}.ledger.jsonl" in capsys.readouterr().err


def test_merged_ledgers_of_one_source_count_each_skipped_file_once(tmp_path):
    console, _ = _console()
    ledgers = []
    for name in ("a", "b", "c"):
        report = tmp_path / f"{name}.json"
        assert main(["ingest", str(SAMPLE), "--dry-run", "--report", str(report)], console=console) == 0
        ledgers.append(str(tmp_path / f"{name}.ledger.jsonl"))
    one = json.loads((tmp_path / "a.json").read_text())["aggregated"]
    merged = tmp_path / "merged.json"
    assert main(["report", *ledgers, "--report", str(merged)], console=console) == 0
    data = json.loads(merged.read_text())
    assert one["files_skipped"] > 0
    assert data["aggregated"]["files_skipped"] == one["files_skipped"]
    assert len(data["skipped_files"]) == len({s["path"] for s in data["skipped_files"]})


def test_a_refused_key_stops_the_run_at_the_first_401(tmp_path):
    """A user:password in --base-url replaces the key (basic auth): the API answers 401 to every
    request, so the run stops at the first and sends nothing more."""
    from docingest.testing.openai_server import OpenAIServer

    console, out = _console()
    report = tmp_path / "r.json"
    with OpenAIServer() as server:
        url = server.base_url.replace("http://", "http://user:pw@")
        argv = ["ingest", str(SAMPLE), "--base-url", url, "--report", str(report), "--concurrency", "2"]
        code = main([*argv, "--db", str(tmp_path / "kb.sqlite")], console=console)
        received = len(server.requests)
    assert code == 4
    agg = json.loads(report.read_text())["aggregated"]
    assert agg["total_successful_calls"] == 0
    assert 1 <= received == agg["total_api_calls_initiated"] <= 2  # only those already in flight
    dry = tmp_path / "dry.json"
    assert main(["ingest", str(SAMPLE), "--dry-run", "--report", str(dry)], console=_console()[0]) == 0
    assert json.loads(dry.read_text())["aggregated"]["total_api_calls_initiated"] > 10  # the whole run
    text = " ".join(out.getvalue().split())
    assert "stopped at the first 401: the API refused the key (401 invalid_api_key)" in text
    assert "check OPENAI_API_KEY" in text
