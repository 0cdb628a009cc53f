"""--max-tokens / --max-cost: refused before the first call, or stopped before crossing, then resumed."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from docingest.cli import main
from docingest.errors import BudgetExceeded
from docingest.pipeline import IngestConfig, aforecast, ingest
from docingest.testing.openai_server import OpenAIServer, parse_fault


def write_tree(root: Path, files: int = 12) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = " ".join(f"t{i}w{j}" for j in range(60))
        (src / f"doc{i:02d}.md").write_text(f"# Doc {i}\n\n{body}\n")
    return src


def config(src: Path, tmp: Path, server: OpenAIServer, name: str, **kw: Any) -> IngestConfig:
    return IngestConfig(
        source=src,
        report=tmp / f"{name}.json",
        db=tmp / "kb.sqlite",
        base_url=server.base_url,
        api_key="k",
        concurrency=4,
        **kw,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_budget_below_the_forecast_is_refused_before_any_call(tmp_path):
    src = write_tree(tmp_path)
    with OpenAIServer() as server:
        forecast = asyncio.run(aforecast(config(src, tmp_path, server, "f")))
        assert forecast.requests == 12 + 1  # 12 summaries, one embeddings batch
        with pytest.raises(BudgetExceeded) as info:
            ingest(config(src, tmp_path, server, "run", max_tokens=forecast.tokens - 1))
        message = str(info.value)
        assert f"{forecast.tokens:,} tokens" in message
        assert "--context none" in message and "--summary-tokens" in message
        out = io.StringIO()
        argv = ["ingest", str(src), "--db", str(tmp_path / "kb.sqlite"), "--base-url", server.base_url]
        code = main([*argv, "--max-tokens", "100"], console=Console(file=out))
        assert code == 3
        assert server.requests == []
    assert not (tmp_path / "run.ledger.jsonl").exists()


def test_a_budget_between_stops_before_crossing_it_and_the_run_resumes(tmp_path):
    """The forecast fits the budget, but retried requests make the run cost more than forecast:
    the request that would cross the budget is not sent."""
    src = write_tree(tmp_path)
    with OpenAIServer(faults=[parse_fault("429:every=2,retry_after=0.05")]) as server:
        forecast = asyncio.run(aforecast(config(src, tmp_path, server, "f")))
        budget = forecast.tokens
        first = ingest(config(src, tmp_path, server, "first", max_tokens=budget))
        assert first.stopped is not None and "--max-tokens" in first.stopped
        assert first.stats.status == "stopped"
        calls = [r for r in records(first.ledger_path) if r["type"] == "call"]
        spent = sum(r["prompt_tokens"] + (r["billed"] or {}).get("completion_tokens", 0) for r in calls)
        assert 0 < spent <= budget
        unsent = [r for r in records(first.ledger_path) if r["type"] == "unsent"]
        assert unsent and all(r["reason"].startswith("budget:") for r in unsent)
        served_first = len(server.requests)
        assert served_first == len(calls)  # nothing over the budget left the process

        rest = asyncio.run(aforecast(config(src, tmp_path, server, "f2")))
        assert 0 < rest.tokens < forecast.tokens  # the work done is not forecast again
        second = ingest(config(src, tmp_path, server, "second", max_tokens=10 * rest.tokens))
        assert second.stopped is None and second.stats.status == "completed"
        calls2 = [r for r in records(second.ledger_path) if r["type"] == "call"]
        # the forecast was exact: every prompt token it counted was sent once (retries aside)
        assert sum(r["prompt_tokens"] for r in calls2 if r["status"] == "Success") == rest.prompt_tokens
    done = Counter(
        (c[0], c[1], r["call_type"]) for r in calls + calls2 if r["status"] == "Success" for c in r["chunks"]
    )
    assert len(done) == 2 * 12 and set(done.values()) == {1}
