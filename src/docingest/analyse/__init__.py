"""Analysis: where the tokens of a run went, and why.

``analyse(report)`` returns the sections a report carries beside its counts: ``waterfall`` (from
source tokens to tokens sent, summing exactly), ``findings`` (causes with tokens, cost, evidence
and a fix), ``scaling`` (tokens sent per file vs document tokens, log-log), ``latency`` and
``cost``. Every finding has ``cost_usd`` and ``cost_kind``: ``not_sent`` (requests held back: over
an API limit, or past the budget), ``spent`` (its tokens were sent)
or ``saved`` (tokens kept back, e.g. by the smart loader). ``analyse_runs`` compares several
reports (e.g. dry runs on repositories of different sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docingest.analyse import findings as _findings
from docingest.analyse import latency as _latency
from docingest.analyse import scaling as _scaling
from docingest.analyse import waterfall as _waterfall
from docingest.cost import PriceTable, input_rate, run_cost, usd

#: Findings whose tokens were kept back, not sent: their ``cost_usd`` is money saved.
SAVED_CODES = frozenset({"loader_dropped_payload", "skipped_generated"})

__all__ = ["amplification_text", "analyse", "analyse_runs", "apply_analysis", "findings_for", "load_run"]


def analyse(report: dict[str, Any], *, prices: PriceTable | None = None) -> dict[str, Any]:
    prices = prices or PriceTable()
    flow = _waterfall.compute(report)
    scaling = _scaling.per_file(report)
    latency = _latency.latency(report)
    findings = _findings.build(report, flow, scaling, latency)
    rate = input_rate(report, prices)
    for f in findings:
        # tokens a finding names that were *not* sent (the loader or discovery kept them back)
        f["cost_kind"] = (
            "saved" if f["code"] in SAVED_CODES else "not_sent" if f["code"] == "unsent_requests" else "spent"
        )
        if f["code"] == "failed_calls":  # rejected requests are not billed: they cost time, not money
            f["cost_usd"] = 0.0 if rate is not None else None
            continue
        f["cost_usd"] = usd(f["tokens"], rate) if f["tokens"] else (0.0 if rate is not None else None)
    return {
        "waterfall": flow.as_dict(),
        "findings": findings,
        "scaling": scaling,
        "latency": latency,
        "cost": run_cost(report, prices),
    }


def apply_analysis(report: dict[str, Any], *, prices: PriceTable | None = None) -> dict[str, Any]:
    """Add the analysis sections to ``report`` (in place) and return it."""
    report.update(analyse(report, prices=prices))
    return report


def findings_for(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of one report, most costly first."""
    findings: list[dict[str, Any]] = analyse(report)["findings"]
    return findings


def analyse_runs(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Growth of tokens and calls with repository size across runs."""
    return _scaling.across_runs(reports, names)


def load_run(path: Path, *, prices: PriceTable | None = None) -> dict[str, Any]:
    """A report from a report JSON or from ledger JSONL, analysed afresh (same code as ``ingest``)."""
    from docingest.account import StatsCollector
    from docingest.report import load_report

    if path.suffix == ".jsonl" or path.name.endswith(".ledger.jsonl"):
        report = StatsCollector.from_ledger(path).report()
    else:
        report = load_report(path)
    return apply_analysis(report, prices=prices)


def amplification_text(agg: dict[str, Any]) -> str:
    """``2.31x``; ``n/a (nothing sent)`` for a run that sent no token (no call, or only calls whose
    connection failed before the request left); ``unknown`` without chunks."""
    not_sent = sum(int(fig.get("calls_not_sent") or 0) for fig in (agg.get("by_call_type") or {}).values())
    if not agg.get("total_tokens_sent_to_apis") and (agg.get("total_api_calls_initiated") or 0) <= not_sent:
        return "n/a (nothing sent)"
    amp = agg.get("amplification")
    return f"{amp:.2f}x" if amp is not None else "unknown"
