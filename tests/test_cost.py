"""Cost from genai-prices (offline) and from a user price file; unknown models are unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docingest.cost import PriceTable, run_cost
from docingest.errors import ConfigError


def report(chat_model: str = "gpt-4o-mini", **chat: Any) -> dict[str, Any]:
    fig = {"calls": 10, "successful_calls": 10, "tokens_sent": 1_000_000}
    fig.update(chat)
    return {
        "run": {
            "chat_model": chat_model,
            "embedding_model": "text-embedding-3-small",
            "config": {"summary_tokens": 100},
        },
        "aggregated": {
            "by_call_type": {
                "chat_summary": fig,
                "create_embedding": {"calls": 1, "successful_calls": 1, "tokens_sent": 500_000},
            }
        },
    }


def test_genai_prices_input_cached_and_output_priced_apart() -> None:
    cost = run_cost(
        report(billed_prompt_tokens=1_000_000, billed_cached_tokens=400_000, billed_completion_tokens=2_000)
    )
    chat = cost["by_call_type"]["chat_summary"]
    assert chat["price_per_mtok"]["input"] == pytest.approx(0.15)
    assert chat["input_usd"] == pytest.approx(0.6 * 0.15)
    assert chat["cached_input_usd"] == pytest.approx(0.4 * 0.075)
    assert chat["output_usd"] == pytest.approx(0.002 * 0.6)
    assert not chat["output_estimated"]
    emb = cost["by_call_type"]["create_embedding"]
    assert emb["total_usd"] == pytest.approx(0.5 * 0.02)
    assert cost["total_usd"] == pytest.approx(chat["total_usd"] + emb["total_usd"])


def test_dry_run_output_is_bounded_by_max_tokens() -> None:
    chat = run_cost(report())["by_call_type"]["chat_summary"]
    assert chat["output_tokens"] == 10 * 100 and chat["output_estimated"]
    assert chat["input_tokens_source"] == "counted"


def test_unknown_model_is_unknown_not_free(tmp_path: Path) -> None:
    cost = run_cost(report("my-local-llama"))
    assert cost["by_call_type"]["chat_summary"]["total_usd"] is None
    assert cost["total_usd"] is None
    assert cost["unknown_models"] == ["my-local-llama"]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-local-llama": {"input": 1.0, "output": 2.0}}), encoding="utf-8")
    priced = run_cost(report("my-local-llama"), PriceTable.from_file(prices))
    chat = priced["by_call_type"]["chat_summary"]
    assert chat["total_usd"] == pytest.approx(1.0 + 0.001 * 2.0)
    assert chat["price_per_mtok"]["source"].startswith("price file")


def test_bad_price_file_says_what_to_write(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"m": {"output": 1}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="needs numeric 'input'"):
        PriceTable.from_file(bad)
