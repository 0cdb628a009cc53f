"""What the findings, the cost line and the console say: causes and fixes that match the run.

Real runs of the pipeline (dry, or against the local server with faults) and hand-written ledgers.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from docingest.analyse import load_run
from docingest.analyse.waterfall import iter_chunks
from docingest.console import print_analysis, print_summary
from docingest.cost import cost_line, run_cost, usd_parts
from docingest.pipeline import IngestConfig, aforecast, ingest
from docingest.report import build_report, validate_report
from docingest.testing.openai_server import OpenAIServer, parse_fault


def write_tree(root: Path, files: int, words: int = 400) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = " ".join(f"w{i}x{j}" for j in range(words))
        (src / f"doc{i:02d}.md").write_text(f"# Page {i}\n\n{body}\n")
    return src


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, f"no {code} finding in {[f['code'] for f in report['findings']]}"
    return found[0]


def console_text(report: dict[str, Any], *, summary: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=400)
    if summary:
        print_summary(console, report)
    else:
        print_analysis(console, report)
    return buf.getvalue()


def no_python_none(report: dict[str, Any]) -> None:
    for f in report["findings"]:
        for text in (f["summary"], f["fix"]):
            assert "None" not in text, text
        assert "None" not in json.dumps(f["evidence"]), f["evidence"]


def served_run(tmp_path: Path, fault: str, files: int = 4, **kw: Any) -> dict[str, Any]:
    src = write_tree(tmp_path, files)
    with OpenAIServer(faults=[parse_fault(fault)]) as server:
        result = ingest(
            IngestConfig(
                source=src,
                report=tmp_path / "report.json",
                db=tmp_path / "kb.sqlite",
                base_url=server.base_url,
                api_key="k",
                context="none",
                chunk_tokens=128,
                embedding_batch_size=8,
                **kw,
            )
        )
    report = build_report(result.stats)
    validate_report(report)
    return report


def _ledger(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "hand.ledger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _call(seq: int, chunk: int, attempt: int, status: int | None, **extra: Any) -> dict[str, Any]:
    ok = status == 200
    record: dict[str, Any] = {
        "type": "call",
        "call_type": "chat_summary",
        "model": "gpt-4o-mini",
        "attempt": attempt,
        "seq": seq,
        "status": "Success" if ok else "Fail",
        "http_status": status,
        "prompt_tokens": 100,
        "chunks": [["a.md", chunk, 100]],
        "t_s": float(seq),
        "latency_s": 0.5,
        "billed": {"prompt_tokens": 100, "completion_tokens": 20} if ok else None,
    }
    record.update(extra)
    return record


def _start(**config: Any) -> dict[str, Any]:
    return {
        "type": "run_start",
        "run_id": "r1",
        "dry_run": False,
        "chat_model": "gpt-4o-mini",
        "embedding_model": "text-embedding-3-small",
        "config": {"summary_tokens": 100, **config},
    }


# -- 1. a traced run: the model comes from the call records --------------------------------------------
def test_trace_report_prices_the_models_of_its_call_records(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"type": "run_start", "run_id": "t1", "dry_run": False, "mode": "trace", "source": "python app.py"}
    ]
    seq = 0
    for model, n in (("gpt-4o-mini", 3), ("gpt-4o", 1)):
        for _ in range(n):
            seq += 1
            records.append(
                {
                    "type": "call",
                    "call_type": "chat_summary",
                    "model": model,
                    "attempt": 0,
                    "seq": seq,
                    "status": "Success",
                    "http_status": 200,
                    "prompt_tokens": 1_000,
                    "chunks": [],
                    "site": "app.py:12",
                    "billed": {"prompt_tokens": 1_000, "completion_tokens": 100},
                }
            )
    records.append({"type": "run_end", "run_id": "t1", "wall_time_s": 2.0, "status": "completed"})
    report = load_run(_ledger(tmp_path, records))
    validate_report(report)
    assert report["aggregated"]["by_call_type"]["chat_summary"]["models"] == {"gpt-4o-mini": 3, "gpt-4o": 1}
    chat = report["cost"]["by_call_type"]["chat_summary"]
    assert chat["model"] == "gpt-4o-mini"  # the most used model of the call type
    assert chat["total_usd"] == pytest.approx(4_000 * 0.15e-6 + 400 * 0.6e-6)
    assert report["cost"]["total_usd"] is not None
    text = console_text(report, summary=True)
    assert "unknown" not in text and "None" not in text
    assert "files loaded" not in text and "source tokens" not in text and "raw chunk tokens" not in text
    assert "chunks " not in text
    assert "tokens sent to the chat model" in text and "estimated cost: $" in text


def test_dry_run_summary_keeps_its_file_rows(tmp_path: Path) -> None:
    src = write_tree(tmp_path, 2, words=50)
    result = ingest(IngestConfig(source=src, dry_run=True, report=tmp_path / "r.json"))
    text = console_text(build_report(result.stats), summary=True)
    for row in ("files loaded / skipped", "chunks", "source tokens", "raw chunk tokens", "amplification"):
        assert row in text


# -- 2. a budget stop is not "the API would refuse them" -------------------------------------------------
def test_budget_stop_unsent_requests_say_budget_and_how_to_go_on(tmp_path: Path) -> None:
    """The forecast fits the budget; retries (429) make the run cross it, so it stops."""
    src = write_tree(tmp_path, 12, words=60)
    with OpenAIServer(faults=[parse_fault("429:every=2,retry_after=0.05")]) as server:
        cfg = dict(
            source=src, db=tmp_path / "kb.sqlite", base_url=server.base_url, api_key="k", concurrency=4
        )
        forecast = asyncio.run(aforecast(IngestConfig(**cfg, report=tmp_path / "f.json")))  # type: ignore[arg-type]
        result = ingest(IngestConfig(**cfg, report=tmp_path / "r.json", max_tokens=forecast.tokens))  # type: ignore[arg-type]
    assert result.stopped is not None
    report = build_report(result.stats)
    validate_report(report)
    by_reason = report["aggregated"]["unsent_by_reason"]
    assert set(by_reason) == {"budget"} and by_reason["budget"]["requests"] >= 1
    f = finding(report, "unsent_requests")
    assert f["evidence"]["by_reason"] == by_reason
    assert f["tokens"] == by_reason["budget"]["tokens"] > 0 and f["cost_kind"] == "not_sent"
    assert "budget" in f["summary"] and "refuse" not in f["summary"]
    # counted per chunk and call type: summaries and embedding inputs, not HTTP requests
    n = by_reason["budget"]["requests"]
    assert (
        f"{n:,} chunk summary or embedding input(s) ({by_reason['budget']['tokens']:,} tokens)"
        in f["summary"]
    )
    assert f["fix"].startswith("run the same command again with a larger --max-tokens/--max-cost")
    assert "--chunk-tokens" not in f["fix"]
    # a 429 whose retry the budget held back did not fail for good: no "raise --max-retries" advice
    assert [x for x in report["findings"] if x["code"] == "failed_calls"] == []
    reasons = [u["reason"] for _p, _i, c in iter_chunks(report) for u in c.get("unsent") or ()]
    assert reasons and all(r.startswith("budget: not sent once the run reached its budget") for r in reasons)


# -- 3 and 4. retries: cause, fix and tokens that agree ----------------------------------------------------
def test_500_retries_say_provider_errors_and_agree_with_calls_above_plan(tmp_path: Path) -> None:
    report = served_run(tmp_path, "500:every=5")
    retried = finding(report, "retried_calls")
    assert set(retried["evidence"]["failed_by_status"]) == {"500"}
    assert "5xx" in retried["fix"] and "retrying them is right" in retried["fix"]
    assert "--concurrency" not in retried["fix"]
    above = finding(report, "calls_above_plan")
    assert "split" not in above["fix"] and "400" not in above["summary"]
    assert above["evidence"]["retried_attempts"] == retried["evidence"]["attempts"]
    assert above["tokens"] == retried["tokens"] == above["evidence"]["retried_tokens"]
    steps = {s["step"]: s["tokens"] for s in report["waterfall"]["steps"]}
    assert steps["retries"] == retried["tokens"]  # the waterfall's step: the same definition
    no_python_none(report)


def test_429_retries_tokens_agree_and_advise_rate_limits(tmp_path: Path) -> None:
    report = served_run(tmp_path, "429:every=3,retry_after=0.05", files=3)
    retried = finding(report, "retried_calls")
    above = finding(report, "calls_above_plan")
    assert retried["tokens"] == above["tokens"] > 0
    embed_retries = [
        d
        for f in report["files"].values()
        for c in f["chunks"].values()
        for d in c["call_details"]
        if d["call_type"] == "create_embedding" and d["attempt"] > 0
    ]
    assert embed_retries  # the figure covers batch re-sends too
    assert set(retried["evidence"]["failed_by_status"]) == {"429"}
    assert "--concurrency (this run: 16)" in retried["fix"] and "--rpm/--tpm" in retried["fix"]
    no_python_none(report)


def test_connection_errors_say_unreachable_not_none(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [_start(concurrency=16)]
    records += [{"type": "chunk", "path": "a.md", "index": i, "raw_chunk_tokens": 80} for i in range(3)]
    seq = 0
    for i in range(3):
        for attempt in range(3):
            seq += 1
            error = "ConnectError: [Errno 111] Connection refused (nothing was sent: ...)"
            unsent = {"prompt_tokens": 0, "chunks": [["a.md", i, 0]], "sent": False, "tokens_not_sent": 100}
            records.append(_call(seq, i, attempt, None, error_details=error, **unsent))
    report = load_run(_ledger(tmp_path, records))
    validate_report(report)
    retried = finding(report, "retried_calls")
    assert retried["evidence"]["failed_by_status"] == {"not sent": 6}
    assert "not sent: 6" in retried["summary"] and "6 of them sent nothing" in retried["summary"]
    assert "unreachable" in retried["fix"] and "--base-url" in retried["fix"]
    failed = finding(report, "failed_calls")
    assert failed["fix"].startswith("not sent (connection refused, DNS failure or connect timeout)")
    assert "after sending 0 tokens (3 ConnectError; 3 of them sent nothing" in failed["summary"]
    assert "context_length" not in failed["fix"]
    assert report["aggregated"]["by_call_type"]["chat_summary"]["tokens_not_sent"] == 900
    assert report["waterfall"]["check"]["exact"] and report["aggregated"]["total_tokens_sent_to_apis"] == 0
    no_python_none(report)


def test_connection_errors_after_sending_may_have_been_billed(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [_start(concurrency=16)]
    records += [{"type": "chunk", "path": "a.md", "index": i, "raw_chunk_tokens": 80} for i in range(2)]
    for seq, i in ((1, 0), (2, 1)):
        records.append(_call(seq, i, 0, None, error_details="APIConnectionError: Connection error."))
    report = load_run(_ledger(tmp_path, records))
    failed = finding(report, "failed_calls")
    assert failed["fix"].startswith("no response (connection errors once the request was on its way")
    assert "billed" in failed["fix"] and "sent nothing" not in failed["summary"]
    assert report["aggregated"]["total_tokens_sent_to_apis"] == 200


def test_failed_calls_lead_with_the_fix_for_the_most_common_error(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [_start(concurrency=4, timeout=30.0)]
    records += [{"type": "chunk", "path": "a.md", "index": i, "raw_chunk_tokens": 80} for i in range(4)]
    records.append(_call(1, 0, 0, 400, error_details="400 context_length_exceeded: too long"))
    for seq, i in ((2, 1), (3, 2), (4, 3)):
        records.append(_call(seq, i, 0, None, error_details="APITimeoutError: Request timed out."))
    report = load_run(_ledger(tmp_path, records))
    failed = finding(report, "failed_calls")
    assert failed["fix"].startswith("timeouts: raise --timeout (this run: 30 s)")
    assert "context_length_exceeded: lower --chunk-tokens" in failed["fix"]
    assert failed["cost_kind"] == "spent"


def test_sequential_calls_state_the_runs_concurrency_or_the_rate_limit(tmp_path: Path) -> None:
    def ledger(status_every: int | None) -> dict[str, Any]:
        records: list[dict[str, Any]] = [_start(concurrency=4)]
        records += [{"type": "chunk", "path": "a.md", "index": i, "raw_chunk_tokens": 80} for i in range(25)]
        seq = 0
        for i in range(25):
            attempts = [429, 200] if status_every and i % status_every == 0 else [200]
            for attempt, status in enumerate(attempts):
                seq += 1
                records.append(_call(seq, i, attempt, status))
        sub = tmp_path / f"r{status_every}"
        sub.mkdir()
        return load_run(_ledger(sub, records))

    plain = finding(ledger(None), "sequential_calls")
    assert "this run: 4" in plain["fix"] and "default is 8" not in plain["fix"]
    limited = finding(ledger(3), "sequential_calls")
    assert "rate limited" in limited["summary"]
    assert "--rpm/--tpm" in limited["fix"] and "raise --concurrency" not in limited["fix"]


# -- 5. the cost line adds up; nothing sent is said so ---------------------------------------------------
def test_cost_parts_add_up_as_printed() -> None:
    total, parts = usd_parts(0.002213, [0.002148, 0.000065])
    assert total == "$0.0022" and parts == ["$0.0021", "$0.0001"]
    for t, ps in ((0.002213, [0.002148, 0.000065]), (1.005, [0.5025, 0.5025]), (0.3, [0.1, 0.1, 0.1])):
        total, parts = usd_parts(t, ps)
        assert sum(float(p[1:].replace(",", "")) for p in parts) == pytest.approx(float(total[1:]))
    report = {
        "run": {"chat_model": "gpt-4o-mini", "embedding_model": "text-embedding-3-small", "config": {}},
        "aggregated": {
            "by_call_type": {
                "chat_summary": {
                    "calls": 10,
                    "successful_calls": 10,
                    "tokens_sent": 12_000,
                    "billed_prompt_tokens": 12_000,
                    "billed_completion_tokens": 650,
                },
                "create_embedding": {"calls": 1, "successful_calls": 1, "tokens_sent": 3_250},
            }
        },
    }
    line = cost_line(run_cost(report))
    amounts = [float(m) for m in re.findall(r"\$([0-9.]+)", line)]
    assert amounts[0] == pytest.approx(sum(amounts[1:])), line
    assert "(gpt-4o-mini)" in line and "None" not in line


def test_a_run_that_sent_nothing_says_so(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.md").write_text("")
    result = ingest(IngestConfig(source=src, dry_run=True, report=tmp_path / "r.json"))
    report = build_report(result.stats)
    text = console_text(report, summary=True)
    assert "estimated cost: $0 (nothing sent)" in text
    assert "n/a (nothing sent)" in text and "0.00x" not in text
    from docingest.html import render_html

    html = render_html(report)
    assert "n/a (nothing sent)" in html and "0.00x" not in html


# -- 6. tokens not sent are money saved --------------------------------------------------------------------
def test_tokens_kept_back_are_labelled_saved(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("# App\n\nHow to run the app.\n")
    lock = {
        "packages": {f"p{i}": {"version": f"1.{i}.0", "integrity": "sha512-" + "ab" * 40} for i in range(300)}
    }
    (src / "package-lock.json").write_text(json.dumps(lock, indent=2))
    result = ingest(IngestConfig(source=src, dry_run=True, report=tmp_path / "r.json"))
    report = build_report(result.stats)
    validate_report(report)
    assert all(f["cost_kind"] in ("spent", "saved") for f in report["findings"])
    skipped = finding(report, "skipped_generated")
    assert skipped["cost_kind"] == "saved" and skipped["cost_usd"] is not None
    text = console_text(report)
    line = next(ln for ln in text.splitlines() if "skipped_generated" in ln)
    assert "tokens not sent, saved" in line and "vs a naive loader" in line
    from docingest.html import render_html

    assert "tokens not sent, saved" in render_html(report)


# -- 7. the waterfall has headers; the scaling line is plain words ----------------------------------------
def test_waterfall_headers_and_plain_scaling_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, words in enumerate((100, 300, 900, 2_700)):
        (src / f"d{i}.md").write_text(f"# D{i}\n\n" + " ".join(f"w{i}x{j}" for j in range(words)) + "\n")
    result = ingest(IngestConfig(source=src, dry_run=True, report=tmp_path / "r.json", chunk_tokens=200))
    report = build_report(result.stats)
    text = console_text(report)
    header = next(ln for ln in text.splitlines() if "running total" in ln)
    assert "step" in header and "tokens" in header
    scaling = next(ln for ln in text.splitlines() if ln.startswith("scaling:"))
    assert "tokens sent grow" in scaling and "with document size (exponent" in scaling
    assert "2 quadratic" in scaling and "^" not in scaling


def test_growth_labels_are_consistent() -> None:
    from docingest.analyse.scaling import QUADRATIC_EXPONENT, describe, explain

    assert describe(1.0) == "linear"
    assert describe(1.17) == "slightly superlinear"
    assert describe(QUADRATIC_EXPONENT) == "superlinear"  # where the superlinear_scaling finding starts
    assert describe(2.0) == "quadratic" and describe(0.6) == "sublinear"
    text = explain({"exponent": 1.17, "stderr": 0.04, "points": 12})
    assert text == (
        "tokens sent grow a little faster than linearly with document size "
        "(exponent 1.17 ± 0.04 over 12 files; 1 would be linear, 2 quadratic)"
    )
