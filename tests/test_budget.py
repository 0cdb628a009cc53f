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

from docingest.budget import Forecast
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


def test_max_cost_prices_with_the_price_file_as_the_report_does(tmp_path, capsys):
    """--price-file sets the prices --max-cost checks, not only the report's: a dear price stops a
    dry run the default prices let through, a cheap one lets through a run they stop."""
    src = write_tree(tmp_path, files=3)
    dear, cheap = tmp_path / "dear.json", tmp_path / "cheap.json"
    for path, usd_per_mtok in ((dear, 1000.0), (cheap, 0.001)):
        price = {"input": usd_per_mtok, "output": usd_per_mtok}
        path.write_text(json.dumps({"gpt-4o-mini": price, "text-embedding-3-small": price}))

    def forecast(**kw: Any) -> Forecast:
        cfg = IngestConfig(source=src, dry_run=True, db=tmp_path / "kb.sqlite", max_cost=1.0, **kw)
        return asyncio.run(aforecast(cfg))

    default = forecast()
    tokens = default.tokens  # one price for every token: the cost is tokens * price
    assert forecast(price_file=dear).usd == pytest.approx(tokens * 1000.0 / 1e6)
    assert forecast(price_file=cheap).usd == pytest.approx(tokens * 0.001 / 1e6)
    assert tokens * 0.001 / 1e6 < default.usd / 10 < default.usd * 10 < tokens * 1000.0 / 1e6

    def run(name: str, max_cost: float, *price_file: Path) -> int:
        argv = ["ingest", str(src), "--dry-run", "--report", str(tmp_path / f"{name}.json")]
        argv += ["--db", str(tmp_path / "kb.sqlite"), "--max-cost", str(max_cost)]
        argv += [f"--price-file={path}" for path in price_file]
        return main(argv, console=Console(file=io.StringIO()))

    high = default.usd * 10
    assert run("high", high) == 0
    assert run("high-dear", high, dear) == 3
    assert f"the forecast costs up to ${tokens * 1000.0 / 1e6:.4f}, over --max-cost ${high:.4f}" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "high-dear.json").exists()
    low = default.usd / 10
    assert run("low", low) == 3
    assert (
        f"the forecast costs up to ${default.usd:.4f}, over --max-cost ${low:.4f}" in capsys.readouterr().err
    )
    assert run("low-cheap", low, cheap) == 0
    (forecast_record,) = [r for r in records(tmp_path / "low-cheap.ledger.jsonl") if r["type"] == "forecast"]
    assert forecast_record["usd"] == pytest.approx(tokens * 0.001 / 1e6, abs=5e-7)  # rounded to 6 places
    report = json.loads((tmp_path / "low-cheap.json").read_text())
    assert report["run"]["config"]["price_file"] == str(cheap)


def test_attempts_that_never_left_spend_no_budget(tmp_path):
    """Connection refused, retried: the budget counts what may be billed, and nothing was sent."""
    import socket

    src = write_tree(tmp_path, files=6)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OpenAIServer() as server:
        forecast = asyncio.run(aforecast(config(src, tmp_path, server, "f")))
    dead = IngestConfig(
        source=src,
        report=tmp_path / "dead.json",
        db=tmp_path / "kb.sqlite",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="k",
        concurrency=2,
        max_retries=2,
        max_tokens=forecast.tokens,  # three attempts per request would cross it, were they charged
    )
    result = ingest(dead)
    calls = [r for r in records(result.ledger_path) if r["type"] == "call"]
    assert len(calls) == 3 * forecast.requests  # every request tried three times, none refused
    assert all(r["sent"] is False for r in calls)
    assert result.stopped is None
    assert not [r for r in records(result.ledger_path) if r["type"] == "unsent"]


def test_a_settled_reservation_that_was_not_sent_gives_the_budget_back():
    from docingest.budget import TokenBudget

    budget = TokenBudget(max_tokens=1_000)
    kept = budget.reserve(300, 100, "m")
    lost = budget.reserve(200, 100, "m")
    assert budget.spent_tokens == 700
    budget.settle(lost, ok=False, completion_tokens=None, sent=False)
    assert budget.spent_tokens == 400  # the attempt that never left costs nothing
    budget.settle(kept, ok=True, completion_tokens=40)
    assert budget.spent_tokens == 340  # prompt and the completion it billed
