"""How tokens sent grow with document size (per file, log-log) and with repository size (across runs).

An exponent near 1 is linear growth; near 2 is quadratic: each chunk of a document carries
something proportional to the whole document (e.g. ``--context document``). Labels:
``sublinear`` below 0.9, ``linear`` to 1.1, ``slightly superlinear`` to 1.5, ``superlinear`` to
1.75, ``quadratic`` above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

QUADRATIC_EXPONENT = 1.5
MIN_POINTS = 4


def loglog_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any] | None:
    """Least squares of log y on log x: exponent, its standard error, r², and the points used."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return None
    lx = np.log(np.array([p[0] for p in pts], dtype=float))
    ly = np.log(np.array([p[1] for p in pts], dtype=float))
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    n = len(pts)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    stderr = math.sqrt(float(np.sum(resid**2)) / (n - 2) / sxx) if n > 2 and sxx > 0 else None
    return {
        "exponent": round(float(slope), 4),
        "stderr": round(stderr, 4) if stderr is not None else None,
        "coefficient": round(math.exp(float(intercept)), 6),
        "r2": round(1 - float(np.sum(resid**2)) / ss_tot, 4) if ss_tot > 0 else None,
        "points": n,
    }


#: Growth labels by exponent: (upper bound, label, how tokens grow in plain words). One table
#: for the report's ``growth``, the console, the HTML and the ``superlinear_scaling`` finding.
GROWTH = (
    (0.9, "sublinear", "more slowly than"),
    (1.1, "linear", "about linearly with"),
    (QUADRATIC_EXPONENT, "slightly superlinear", "a little faster than linearly with"),
    (1.75, "superlinear", "clearly faster than linearly with"),
    (math.inf, "quadratic", "about quadratically with"),
)


def _growth(exponent: float) -> tuple[str, str]:
    for bound, label, words in GROWTH:
        if exponent < bound:
            return label, words
    return GROWTH[-1][1], GROWTH[-1][2]


def describe(exponent: float) -> str:
    """``sublinear`` (< 0.9), ``linear`` (0.9 to 1.1), ``slightly superlinear`` (1.1 to 1.5),
    ``superlinear`` (1.5 to 1.75) or ``quadratic`` (1.75 and over)."""
    return _growth(exponent)[0]


def explain(fit: dict[str, Any], *, what: str = "tokens sent", size: str = "document size") -> str:
    """A fit in plain words, e.g. "tokens sent grow about linearly with document size
    (exponent 1.02 ± 0.04 over 12 files; 1 would be linear, 2 quadratic)"."""
    words = _growth(float(fit["exponent"]))[1]
    if words == "more slowly than":
        words = "more slowly than linearly with"
    spread = f" ± {fit['stderr']:.2f}" if fit.get("stderr") is not None else ""
    points = f" over {fit['points']} files" if size == "document size" else f" over {fit['points']} runs"
    return (
        f"{what} grow {words} {size} (exponent {fit['exponent']:.2f}{spread}{points}; "
        "1 would be linear, 2 quadratic)"
    )


def per_file(report: dict[str, Any]) -> dict[str, Any]:
    """Tokens sent per file against document tokens per file."""
    xs: list[float] = []
    ys: list[float] = []
    chat: list[float] = []
    for f in report.get("files", {}).values():
        doc = f.get("document_tokens")
        if doc and f.get("total_tokens_sent_to_apis"):
            xs.append(float(doc))
            ys.append(float(f["total_tokens_sent_to_apis"]))
            chat.append(float(f.get("tokens_sent_to_chat_model") or 0))
    fit = loglog_fit(xs, ys)
    chat_fit = loglog_fit(xs, chat)
    out: dict[str, Any] = {"x": "document_tokens", "y": "total_tokens_sent_to_apis", "fit": fit}
    if fit is not None:
        out["growth"] = describe(fit["exponent"])
    out["chat_fit"] = chat_fit
    return out


def across_runs(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The seed plan's Phase 2: how tokens and calls grow with repository size."""
    rows = []
    for name, r in zip(names, reports, strict=True):
        agg = r["aggregated"]
        size = agg.get("document_tokens") or agg["total_tokens_from_raw_docs"]
        rows.append(
            {
                "name": name,
                "document_tokens": size,
                "files": agg.get("files_loaded"),
                "chunks": agg.get("chunks"),
                "tokens_sent": agg["total_tokens_sent_to_apis"],
                "tokens_sent_to_chat_model": agg["total_tokens_sent_to_chat_model"],
                "calls": agg["total_api_calls_initiated"],
                "tokens_per_document_token": round(agg["total_tokens_sent_to_apis"] / size, 4)
                if size
                else None,
            }
        )
    rows.sort(key=lambda row: row["document_tokens"] or 0)
    xs = [float(row["document_tokens"] or 0) for row in rows]
    tokens_fit = _two_point_or_fit(xs, [float(row["tokens_sent"]) for row in rows])
    calls_fit = _two_point_or_fit(xs, [float(row["calls"]) for row in rows])
    return {
        "runs": rows,
        "tokens_vs_size": tokens_fit,
        "calls_vs_size": calls_fit,
    }


def _two_point_or_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any] | None:
    """With two runs the exponent is the slope between them (no spread); with more, a fit."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) == 2 and pts[0][0] != pts[1][0]:
        (x0, y0), (x1, y1) = pts
        slope = math.log(y1 / y0) / math.log(x1 / x0)
        return {"exponent": round(slope, 4), "stderr": None, "points": 2, "growth": describe(slope)}
    fit = loglog_fit(xs, ys)
    if fit is not None:
        fit["growth"] = describe(fit["exponent"])
    return fit
