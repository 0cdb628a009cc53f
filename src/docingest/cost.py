"""What a run costs, from a maintained price table (``genai-prices``, offline) or a user price file.

Input, cached input and output are priced separately. A model neither table knows is reported
as unknown (``None``), never as free.

A price file is JSON, prices in US dollars per million tokens::

    {"my-model": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

from docingest.errors import ConfigError

MTOK = 1_000_000
#: The highest price a price file may give, in USD per million tokens: more is a typo (or 1e308), and
#: non-finite or negative prices are refused too, so every cost docingest prints is a real amount.
MAX_PRICE = 1_000_000


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
        for name in ("input", "cached_input", "output"):
            value = entry.get(name)
            price = getattr(prices[model], name)
            if isinstance(value, bool) or (price is not None and not 0 <= price <= MAX_PRICE):
                raise ConfigError(
                    f"price file {path}: model {model!r} has {name!r} {value!r}: a price is a number of "
                    f"USD per million tokens from 0 to {MAX_PRICE:,}"
                )
    return prices


def usd(tokens: int | None, per_mtok: float | None) -> float | None:
    if tokens is None or per_mtok is None:
        return None
    return round(tokens * per_mtok / MTOK, 6)


def _model_for(report: dict[str, Any], call_type: str) -> str | None:
    run = report.get("run") or {}
    key = "chat_model" if call_type == "chat_summary" else "embedding_model"
    model = run.get(key) or (run.get("config") or {}).get(key)
    if model:
        return str(model)
    # A traced run names no model up front; its call records do: the most used one of the type.
    fig = ((report.get("aggregated") or {}).get("by_call_type") or {}).get(call_type) or {}
    models: dict[str, int] = fig.get("models") or {}
    if models:
        return max(sorted(models), key=lambda m: models[m])
    return None


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


def usd_parts(total: float, parts: list[float]) -> tuple[str, list[str]]:
    """``total`` and its ``parts`` as dollar strings that add up as printed: the fewest decimals
    (2 to 6) at which the rounded parts sum to the rounded total, and show every non-zero part."""
    for places in range(2, 7):
        q = Decimal(1).scaleb(-places)

        def rnd(v: float, q: Decimal = q) -> Decimal:
            return Decimal(str(v)).quantize(q, rounding=ROUND_HALF_UP)

        shown = [rnd(p) for p in parts]
        if sum(shown) == rnd(total) and all(s or not p for s, p in zip(shown, parts, strict=True)):
            return f"${rnd(total):,}", [f"${s:,}" for s in shown]
    return f"${total:,.6f}", [f"${p:,.6f}" for p in parts]


def cost_line(cost: dict[str, Any]) -> str:
    """The cost in one line, e.g. ``$0.0023 = chat_summary $0.0022 (gpt-4o-mini) + create_embedding
    $0.0001 (text-embedding-3-small)``; the parts add up to the total as printed."""
    by_type: dict[str, Any] = cost.get("by_call_type") or {}
    if not by_type:
        return "$0 (nothing sent)"
    if all(not (c.get("input_tokens") or c.get("output_tokens")) for c in by_type.values()):
        return "$0 (nothing billed: no request succeeded)"
    known = {ct: c["total_usd"] for ct, c in by_type.items() if c.get("total_usd") is not None}
    known_total = cost["total_usd"] if cost.get("total_usd") is not None else sum(known.values())
    total_s, part_s = usd_parts(float(known_total), [float(v) for v in known.values()])
    shown = dict(zip(known, part_s, strict=True))
    parts = []
    for ct, c in by_type.items():
        model = c.get("model") or "model unknown"
        parts.append(
            f"{ct} {shown.get(ct, 'unknown')} ({model})"
            + (", output estimated" if c.get("output_estimated") else "")
        )
    head = total_s if cost.get("total_usd") is not None else "unknown"
    line = f"{head} = " + " + ".join(parts)
    if cost.get("unknown_models"):
        line += "; unknown price for " + ", ".join(str(m) for m in cost["unknown_models"])
    return line


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _saved_usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"~${value:,.2f}" if value >= 0.005 else "under $0.01"


def finding_cost(finding: dict[str, Any]) -> str:
    """``12,345 tokens, $0.0123`` for tokens sent; ``12,345 tokens not sent, saved ~$1.19 vs a
    naive loader`` for tokens the loader or discovery kept back."""
    tokens = finding.get("tokens")
    if tokens is None:
        return ""
    if finding.get("cost_kind") == "not_sent":
        return f"{tokens:,} tokens not sent"
    if finding.get("cost_kind") == "saved":
        return f"{tokens:,} tokens not sent, saved {_saved_usd(finding.get('cost_usd'))} vs a naive loader"
    return f"{tokens:,} tokens, {_money(finding.get('cost_usd'))}"
