"""What a run costs, from a maintained price table (``genai-prices``, offline) or a user price file.

Input, cached input and output are priced separately. A model neither table knows is reported
as unknown (``None``), never as free.

A price file is JSON, prices in US dollars per million tokens::

    {"my-model": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from docingest.errors import ConfigError

MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float
    cached_input: float | None
    output: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@cache
def _table_price(model: str) -> Price | None:
    """A model's price from genai-prices' bundled table (no network), or None if it is unknown."""
    from genai_prices import Usage, __version__, calc_price

    def calc(usage: Usage) -> Any:
        for provider in ("openai", None):
            try:
                return calc_price(usage, model_ref=model, provider_id=provider)
            except LookupError:
                continue
        return None

    base = calc(Usage(input_tokens=MTOK, output_tokens=MTOK))
    if base is None:
        return None
    cached = calc(Usage(input_tokens=MTOK, cache_read_tokens=MTOK))
    return Price(
        input=float(Decimal(base.input_price)),
        cached_input=float(Decimal(cached.input_price)) if cached is not None else None,
        output=float(Decimal(base.output_price)),
        source=f"genai-prices {__version__} ({base.provider.id}/{base.model.id})",
    )


class PriceTable:
    """Prices by model: a user's overrides first, then genai-prices."""

    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self.overrides = dict(overrides or {})

    @classmethod
    def from_file(cls, path: Path | None) -> PriceTable:
        return cls(load_price_file(path) if path is not None else None)

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        if model in self.overrides:
            return self.overrides[model]
        return _table_price(model)


def load_price_file(path: Path) -> dict[str, Price]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read price file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f'price file {path}: expected {{"model": {{"input": ..., "output": ...}}}}')
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        try:
            prices[model] = Price(
                input=float(entry["input"]),
                cached_input=float(entry["cached_input"]) if entry.get("cached_input") is not None else None,
                output=float(entry.get("output", 0.0)),
                source=f"price file {path}",
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"price file {path}: model {model!r} needs numeric 'input' (and optionally "
                f"'cached_input', 'output'), in USD per million tokens ({exc})"
            ) from exc
    return prices


def usd(tokens: int | None, per_mtok: float | None) -> float | None:
    if tokens is None or per_mtok is None:
        return None
    return round(tokens * per_mtok / MTOK, 6)


def _model_for(report: dict[str, Any], call_type: str) -> str | None:
    run = report.get("run") or {}
    key = "chat_model" if call_type == "chat_summary" else "embedding_model"
    model = run.get(key) or (run.get("config") or {}).get(key)
    return str(model) if model else None


def run_cost(report: dict[str, Any], prices: PriceTable | None = None) -> dict[str, Any]:
    """The cost section of a report: per call type and in total, with where each price came from.

    Input tokens are the API's billed figure when it gave one, else docingest's own count of the
    requests that succeeded (the API bills no request it rejects: 400, 401, 429, 5xx). Output
    tokens without a billed figure (a dry run) are bounded by ``max_tokens`` of each summary.
    """
    prices = prices or PriceTable()
    agg = report["aggregated"]
    config = (report.get("run") or {}).get("config") or {}
    by_type: dict[str, Any] = {}
    unknown: list[str] = []
    total: float | None = 0.0
    for call_type, fig in sorted(agg.get("by_call_type", {}).items()):
        model = _model_for(report, call_type)
        price = prices.price(model)
        billed_in = fig.get("billed_prompt_tokens")
        unbilled = fig.get("failed_tokens_sent") or 0
        input_tokens = billed_in if billed_in is not None else fig["tokens_sent"] - unbilled
        cached = fig.get("billed_cached_tokens") or 0
        output_tokens = fig.get("billed_completion_tokens")
        output_estimated = False
        if output_tokens is None:
            if call_type == "chat_summary":
                output_tokens = fig["successful_calls"] * int(config.get("summary_tokens") or 128)
                output_estimated = True
            else:
                output_tokens = 0
        entry: dict[str, Any] = {
            "model": model,
            "price_per_mtok": price.as_dict() if price else None,
            "input_tokens": input_tokens,
            "input_tokens_source": "billed" if billed_in is not None else "counted",
            "cached_input_tokens": cached,
            "output_tokens": output_tokens,
            "output_estimated": output_estimated,
        }
        if price is None:
            entry.update(input_usd=None, cached_input_usd=None, output_usd=None, total_usd=None)
            unknown.append(model or call_type)
            total = None
        else:
            cached_rate = price.cached_input if price.cached_input is not None else price.input
            parts = (
                usd(input_tokens - cached, price.input),
                usd(cached, cached_rate),
                usd(output_tokens, price.output),
            )
            entry.update(
                input_usd=parts[0],
                cached_input_usd=parts[1],
                output_usd=parts[2],
                total_usd=round(sum(p or 0.0 for p in parts), 6),
            )
            if total is not None:
                total += entry["total_usd"]
        by_type[call_type] = entry
    return {
        "currency": "USD",
        "by_call_type": by_type,
        "total_usd": round(total, 6) if total is not None else None,
        "unknown_models": sorted(set(unknown)),
        "output_estimated": any(e["output_estimated"] for e in by_type.values()),
    }


def input_rate(
    report: dict[str, Any], prices: PriceTable | None, call_type: str = "chat_summary"
) -> float | None:
    """USD per million input tokens of the model behind ``call_type`` (None when unknown)."""
    price = (prices or PriceTable()).price(_model_for(report, call_type))
    return price.input if price else None
