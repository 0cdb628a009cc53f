"""``docingest trace``: a user's script, unchanged, recorded through the import hook."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from docingest.cli import main
from docingest.ledger import read_ledger
from docingest.report import validate_report
from docingest.testing.openai_server import OpenAIServer

SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "plain_pipeline.py"
WORDS = "token ledger chunk embedding summary model prompt index vector cache retry batch".split()


def _line(marker: str) -> int:
    lines = SCRIPT.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if marker in line)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for n in range(3):
        body = " ".join(WORDS[(i * 7 + n) % len(WORDS)] for i in range(150 + 120 * n))
        (root / f"doc{n}.md").write_text(f"# Doc {n}\n\n{body}\n")
    return root


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The traced child: offline (loopback sockets only), no key, no DRY_RUN of the caller's."""
    monkeypatch.setenv("PYTHONPATH", str(SCRIPTS / "netguard"))
    for name in ("DRY_RUN", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def expected_calls(docs: Path) -> int:
    """What plain_pipeline.py sends: per file a title, one summary per 400 characters, a batch."""
    return sum(2 + -(-len(f.read_text()) // 400) for f in docs.glob("*.md"))


def _trace(args: list[str], report: Path) -> int:
    return main(["trace", "--report", str(report), "--html", str(report.with_suffix(".html")), *args])


def test_plain_script_totals_equal_server_usage(docs: Path, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    report_path = tmp_path / "out" / "trace.json"
    with OpenAIServer() as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        env.setenv("OPENAI_API_KEY", "sk-test")
        code = _trace(["--", sys.executable, str(SCRIPT), str(docs), "--async"], report_path)
        usage = server.usage_totals()
    assert code == 0
    report = json.loads(report_path.read_text())
    validate_report(report)
    assert report_path.with_suffix(".html").exists()
    agg = report["aggregated"]
    assert usage["requests"] == agg["total_api_calls_initiated"] == expected_calls(docs) + 3  # 3 async
    assert agg["total_tokens_sent_to_apis"] == agg["billed_prompt_tokens"] == usage["prompt_tokens"]
    assert agg["billed_completion_tokens"] == usage["completion_tokens"]
    assert report["run"]["status"] == "completed"
    assert report["run"]["command"][1:] == [str(SCRIPT), str(docs), "--async"]
    # grouped by the script's own call sites...
    sites = agg["unattributed"]["by_site"]
    script = str(SCRIPT.resolve())  # absolute: the script is outside the working directory
    assert set(sites) == {
        f"{script}:{_line('# the summary call site')}",
        f"{script}:{_line('# the embedding call site')}",
        f"{script}:{_line('# the title call site')}",
        f"{script}:{_line('# the async summary call site')}",
    }
    assert sum(sites.values()) == agg["total_tokens_sent_to_apis"]
    # ... and by prompt template: sync and async summaries share theirs
    templates = agg["unattributed"]["by_template"]
    assert set(templates) == {
        "system: You summarize documentation for a search index. | user: Summarize this part of <path>:",
        "user: Give a title to the document <path>.",
        "embeddings text-embedding-3-small",
    }
    assert sum(templates.values()) == agg["total_tokens_sent_to_apis"]


def test_dry_run_completes_without_server(docs: Path, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    env.setenv("DRY_RUN", "true")
    report_path = tmp_path / "dry.json"
    code = _trace(["--", sys.executable, str(SCRIPT), str(docs)], report_path)
    assert code == 0
    report = json.loads(report_path.read_text())
    agg = report["aggregated"]
    assert report["run"]["dry_run"] is True
    assert agg["total_api_calls_initiated"] == agg["total_successful_calls"] == expected_calls(docs)
    assert agg["billed_prompt_tokens"] is None  # a forecast, not a bill
    assert agg["total_tokens_sent_to_apis"] > 0


def test_script_failing_half_way_keeps_the_ledger(
    docs: Path, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report_path = tmp_path / "fail.json"
    with OpenAIServer() as server:
        env.setenv("OPENAI_BASE_URL", server.base_url)
        env.setenv("OPENAI_API_KEY", "sk-test")
        code = _trace(["--", sys.executable, str(SCRIPT), str(docs), "--fail-after", "5"], report_path)
        usage = server.usage_totals()
    assert code == 1  # the script's own exit code
    report = json.loads(report_path.read_text())
    agg = report["aggregated"]
    assert report["run"]["status"] == "failed"
    assert report["run"]["exit_code"] == 1
    # doc0: title, 3 summaries, embedding; doc1: title, 2 summaries, then the crash
    assert agg["total_api_calls_initiated"] == usage["requests"] == 8
    assert agg["total_tokens_sent_to_apis"] == usage["prompt_tokens"]
    records = list(read_ledger(report_path.with_name("fail.ledger.jsonl")))
    assert records[0]["type"] == "run_start"
    assert records[-1]["type"] == "run_end" and records[-1]["status"] == "failed"


def test_trace_without_a_command_is_a_usage_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert main(["trace", "--report", str(tmp_path / "r.json")]) == 2
