"""An attempt that never left the machine (connection refused, DNS failure, connect timeout) is
recorded as an attempt that sent nothing; one that reached the API counts its tokens as sent.

Real runs: against a port where nothing listens, and against the local server with faults.
"""

from __future__ import annotations

import io
import json
import re
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from rich.console import Console

from docingest import StatsCollector, recording_http_client
from docingest.cli import main
from docingest.errors import failed_before_sending
from docingest.report import build_report, validate_report, write_run_report
from docingest.testing.openai_server import OpenAIServer, parse_fault

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-docs"


def free_port() -> int:
    """A port where nothing listens: bound to learn a free one, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def ingest(tmp: Path, name: str, base_url: str | None, *extra: str) -> tuple[int, Path, str]:
    """``docingest ingest`` of the sample docs as a user runs it: the exit code, the report, the output."""
    buf = io.StringIO()
    report = tmp / f"{name}.json"
    argv = ["ingest", str(SAMPLE), "--report", str(report), "--db", str(tmp / f"{name}.sqlite")]
    argv += ["--embedding-batch", "4", *extra]  # batches of several chunks
    if base_url is not None:
        argv += ["--base-url", base_url]
    code = main(argv, console=Console(file=buf, width=400))
    return code, report, " ".join(buf.getvalue().split())


def rebuilt(tmp: Path, ledger: Path) -> dict[str, Any]:
    """``docingest report LEDGER.jsonl``: the report rebuilt from the ledger alone."""
    out = tmp / "rebuilt.json"
    assert main(["report", str(ledger), "--report", str(out)], console=Console(file=io.StringIO())) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def calls_in(ledger: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, ledger.read_text().splitlines()) if r["type"] == "call"]


def served_run(tmp: Path, fault: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run against the local server answering every request with ``fault``, without retries:
    its report and call records (each one a request the server received)."""
    with OpenAIServer(faults=[parse_fault(fault)]) as server:
        code, path, _ = ingest(tmp, fault, server.base_url, "--max-retries", "0")
        served = len(server.requests)
    assert code == 4
    report: dict[str, Any] = json.loads(path.read_text())
    validate_report(report)
    calls = calls_in(next(tmp.glob(f"{fault}*.ledger.jsonl")))
    assert len(calls) == served == report["aggregated"]["total_api_calls_initiated"] > 0
    return report, calls


def chunk_totals(report: dict[str, Any]) -> int:
    return sum(c["total_tokens_sent_to_apis"] for f in report["files"].values() for c in f["chunks"].values())


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DRY_RUN", raising=False)


def test_a_dead_port_records_every_attempt_and_sends_no_token(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, path, out = ingest(tmp_path, "dead", dead, "--max-retries", "1")
    assert code == 4 and "failed for good" in out
    assert f"no request reached the API at {dead}: check --base-url" in out
    assert re.search(r"tokens sent to the chat model [│ ]*0 ", out)
    assert "n/a (nothing sent)" in out and "0.00x" not in out
    report = json.loads(path.read_text())
    validate_report(report)
    ledger = next(tmp_path.glob("dead*.ledger.jsonl"))
    calls = calls_in(ledger)

    # every request was attempted twice (--max-retries 1), and each attempt is counted
    attempts: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for c in calls:
        attempts[(c["call_type"], *(tuple(s[:2]) for s in c["chunks"]))].append(c["attempt"])
    assert {tuple(sorted(a)) for a in attempts.values()} == {(0, 1)}
    agg = report["aggregated"]
    assert agg["total_api_calls_initiated"] == len(calls) == 2 * len(attempts) > 0
    assert agg["total_failed_calls"] == len(calls) and agg["total_successful_calls"] == 0
    assert agg["retried_calls"] == len(attempts)

    # ...but none of them sent a token
    for c in calls:
        assert c["status"] == "Fail" and c["http_status"] is None and c["sent"] is False
        assert c["error_details"].startswith("ConnectError: ") and "Connection refused" in c["error_details"]
        assert "nothing was sent" in c["error_details"]
        assert c["prompt_tokens"] == 0 and all(share == 0 for *_, share in c["chunks"])
        assert c["tokens_not_sent"] > 0
    assert agg["total_tokens_sent_to_chat_model"] == 0
    assert agg["total_tokens_sent_to_embeddings"] == 0
    assert agg["total_tokens_sent_to_apis"] == 0
    assert agg["billed_prompt_tokens"] is None
    for fig in agg["by_call_type"].values():
        assert fig["tokens_sent"] == fig["failed_tokens_sent"] == 0
        assert fig["calls_not_sent"] == fig["calls"] == fig["failed_calls"]
    assert all(f["total_tokens_sent_to_apis"] == 0 for f in report["files"].values())
    assert chunk_totals(report) == 0 == agg["unattributed"]["tokens_sent"]
    details = [d for f in report["files"].values() for c in f["chunks"].values() for d in c["call_details"]]
    assert details and all(d["sent"] is False and d["prompt_tokens"] == 0 for d in details)
    assert sum(c["failed_calls"] for f in report["files"].values() for c in f["chunks"].values()) == len(
        details
    )

    # the waterfall still sums exactly: the chunk text was not sent
    assert report["waterfall"]["check"]["exact"] and report["waterfall"]["check"]["unexplained_tokens"] == 0
    steps = {s["step"]: s["tokens"] for s in report["waterfall"]["steps"]}
    assert steps["not_sent_to_chat"] == -agg["total_tokens_from_raw_docs"]
    assert "retries" not in steps and steps["tokens_sent"] == 0

    # the findings say nothing was sent, and why
    findings = {f["code"]: f for f in report["findings"]}
    failed, retried = findings["failed_calls"], findings["retried_calls"]
    assert failed["tokens"] == 0 and failed["evidence"]["attempts_not_sent"] == len(attempts)
    assert f"after sending 0 tokens ({len(attempts)} ConnectError;" in failed["summary"]
    assert f"{len(attempts)} of them sent nothing on their last attempt" in failed["summary"]
    assert failed["fix"].startswith("not sent (connection refused") and "--base-url" in failed["fix"]
    assert retried["tokens"] == 0 and retried["evidence"]["failed_by_status"] == {"not sent": len(attempts)}

    # each request's count is the one a dry run forecasts: what was not sent is the whole plan
    _, dry_path, _ = ingest(tmp_path, "dry", None, "--dry-run")
    dry = json.loads(dry_path.read_text())["aggregated"]
    first = {ct: 0 for ct in dry["by_call_type"]}
    for c in calls:
        first[c["call_type"]] += c["tokens_not_sent"] if c["attempt"] == 0 else 0
    assert first == {ct: fig["tokens_sent"] for ct, fig in dry["by_call_type"].items()}
    for ct, fig in agg["by_call_type"].items():
        assert fig["tokens_not_sent"] == 2 * dry["by_call_type"][ct]["tokens_sent"]

    # the ledger alone rebuilds the same report
    again = rebuilt(tmp_path, ledger)
    validate_report(again)
    for key in ("aggregated", "files", "waterfall", "findings", "cost"):
        assert again[key] == report[key], key
    # ...also when the chunk details are streamed from it (a run too large to hold them)
    streamed = tmp_path / "streamed.json"
    write_run_report(StatsCollector.from_ledger(ledger, detail_limit=1), streamed)
    assert json.loads(streamed.read_text())["files"] == report["files"]


def test_an_attempt_answered_500_counts_its_tokens_as_sent(tmp_path: Path) -> None:
    report, calls = served_run(tmp_path, "500")
    for c in calls:
        assert c["status"] == "Fail" and c["http_status"] == 500
        assert "sent" not in c and "tokens_not_sent" not in c and c["prompt_tokens"] > 0
    agg = report["aggregated"]
    sent = sum(c["prompt_tokens"] for c in calls)
    assert (
        agg["total_tokens_sent_to_apis"] == sent == chunk_totals(report) + agg["unattributed"]["tokens_sent"]
    )
    assert agg["total_tokens_sent_to_chat_model"] > 0
    for fig in agg["by_call_type"].values():
        assert fig["calls_not_sent"] == fig["tokens_not_sent"] == 0
        assert fig["failed_tokens_sent"] == fig["tokens_sent"] > 0
    assert report["waterfall"]["check"]["exact"]
    # the same requests as a dead port's: there they were not sent, here they were
    _, dead_path, _ = ingest(tmp_path, "dead", f"http://127.0.0.1:{free_port()}/v1", "--max-retries", "0")
    dead = json.loads(dead_path.read_text())["aggregated"]
    assert dead["total_tokens_sent_to_apis"] == 0
    assert {ct: f["tokens_not_sent"] for ct, f in dead["by_call_type"].items()} == {
        ct: f["tokens_sent"] for ct, f in agg["by_call_type"].items()
    }


def test_timeouts_are_not_said_to_have_never_reached_the_api(tmp_path: Path) -> None:
    """Every attempt reached the server, which did not answer within --timeout: the closing
    message says so, with the tokens the report counts as sent (was: 'no request reached the
    API', beside a report counting 8,442 embedding tokens sent)."""
    with OpenAIServer(faults=[parse_fault("timeout:delay=30")]) as server:
        code, path, out = ingest(tmp_path, "slow", server.base_url, "--timeout", "0.5", "--max-retries", "1")
        received = server.received
    agg = json.loads(path.read_text())["aggregated"]
    assert code == 4 and agg["total_successful_calls"] == 0
    assert agg["total_failed_calls"] == received > 0
    sent = agg["total_tokens_sent_to_apis"]
    assert sent == sum(t["failed_tokens_sent"] for t in agg["by_call_type"].values()) > 0
    assert "no request reached" not in out
    assert (
        f"the API at {server.base_url} did not answer within --timeout 0.5 s ({received:,} attempt(s) "
        f"timed out; their {sent:,} tokens count as sent: the API may have received, and billed, them)"
    ) in out


def test_a_dropped_connection_counts_as_sent_and_says_it_may_be_billed(tmp_path: Path) -> None:
    report, calls = served_run(tmp_path, "drop")
    for c in calls:  # the server read the request, then hung up: it may have billed it
        assert c["http_status"] is None and "sent" not in c and c["prompt_tokens"] > 0
        assert "RemoteProtocolError" in c["error_details"]
        assert "counted as sent: the API may have received the request, and billed it" in c["error_details"]
    assert report["aggregated"]["total_tokens_sent_to_apis"] == sum(c["prompt_tokens"] for c in calls)
    failed = {f["code"]: f for f in report["findings"]}["failed_calls"]
    assert failed["fix"].startswith("no response (connection errors once the request was on its way")
    assert "sent nothing" not in failed["summary"]


def test_the_sync_client_records_a_refused_connection_as_not_sent(tmp_path: Path) -> None:
    stats = StatsCollector(tmp_path / "l.jsonl")
    stats.start(source="test")
    http = recording_http_client(stats, dry_run=False)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", max_retries=0, http_client=http
    )
    messages = [{"role": "user", "content": "Summarise: the quick brown fox"}]
    with client:
        with stats.chunk("a.md", 0, text="the quick brown fox"), pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        with pytest.raises(openai.APIConnectionError):  # outside any chunk: unattributed
            client.embeddings.create(model="text-embedding-3-small", input=["the quick brown fox"])
    stats.finish("failed")
    report = build_report(stats)
    agg = report["aggregated"]
    assert agg["total_api_calls_initiated"] == agg["total_failed_calls"] == 2
    assert agg["total_tokens_sent_to_apis"] == 0 == chunk_totals(report)
    assert agg["unattributed"]["calls"] == 1 and agg["unattributed"]["tokens_sent"] == 0
    assert agg["by_call_type"]["chat_summary"]["tokens_not_sent"] > 0
    assert agg["by_call_type"]["create_embedding"]["tokens_not_sent"] > 0
    assert StatsCollector.from_ledger(tmp_path / "l.jsonl").aggregated() == agg


@pytest.mark.parametrize(
    ("exc", "before"),
    [
        (httpx2.ConnectError("[Errno 111] Connection refused"), True),
        (httpx2.ConnectTimeout("timed out"), True),
        (httpx2.PoolTimeout("no connection"), True),
        (httpx2.ProxyError("tunnel refused"), True),
        (httpx2.ReadTimeout("timed out"), False),
        (httpx2.RemoteProtocolError("Server disconnected without sending a response."), False),
        (httpx2.ReadError("reset"), False),
        (httpx2.WriteError("broken pipe"), False),
        (httpx2.WriteTimeout("timed out"), False),
        (ConnectionRefusedError(111, "Connection refused"), False),  # not an HTTP library's: unknown
    ],
)
def test_only_connect_phase_errors_mean_nothing_was_sent(exc: BaseException, before: bool) -> None:
    assert failed_before_sending(exc) is before
