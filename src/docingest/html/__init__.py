"""Self-contained HTML report: inline CSS, inline SVG charts, a little inline JS; works offline.

Every string that comes from the documents or their file names goes through :func:`esc`, and a
Content-Security-Policy allows only this module's own script (by hash), so a file named
``<img src=x onerror=alert(1)>.md`` or a chunk holding ``<script>`` renders as text.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from docingest.analyse import amplification_text
from docingest.analyse.scaling import explain
from docingest.cost import cost_line, finding_cost
from docingest.report import atomic_write_text, format_figure

__all__ = ["render_html", "write_html"]

MAX_TREEMAP_FILES = 400
MAX_TABLE_ROWS = 2000


def esc(value: Any) -> str:
    """HTML-escape any value for text and attribute positions (quotes included)."""
    text = str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def _asset(name: str) -> str:
    return resources.files("docingest.html").joinpath(name).read_text("utf-8")


def _n(value: Any) -> str:
    return esc(format_figure(value))


def _usd(value: Any) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _num_attr(value: Any) -> str:
    return esc(value) if isinstance(value, int | float) else "-1"


# -- charts -------------------------------------------------------------------------------------


def waterfall_svg(steps: Sequence[dict[str, Any]]) -> str:
    """Horizontal waterfall: one bar per step from the running total before it to after it."""
    if not steps:
        return ""
    top = max(max(abs(s["running"]), abs(s["tokens"])) for s in steps) or 1
    label_w, bar_w, row_h = 330, 520, 24
    width = label_w + bar_w + 120
    height = row_h * len(steps) + 10
    parts = [
        f'<svg class="chart" id="waterfall" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="token waterfall">'
    ]
    prev = 0
    for i, s in enumerate(steps):
        y = 5 + i * row_h
        if s["kind"] == "delta":
            start, end = prev, s["running"]
            color = "var(--up)" if s["tokens"] > 0 else "var(--down)"
            value = f"{s['tokens']:+,}"
        else:
            start, end = 0, s["tokens"]
            color = "var(--total)"
            value = f"{s['tokens']:,}"
        x0 = label_w + bar_w * min(start, end) / top
        w = max(bar_w * abs(end - start) / top, 1.0)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{esc(s["label"])}</text>'
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{color}">'
            f"<title>{esc(s['label'])}: {esc(value)} (running {s['running']:,})</title></rect>"
            f'<text x="{x0 + w + 6:.1f}" y="{y + 15}">{esc(value)}</text>'
        )
        prev = s["running"]
    parts.append("</svg>")
    return "".join(parts)


def _slice(items: Sequence[tuple[float, Any]], x: float, y: float, w: float, h: float, vertical: bool):  # type: ignore[no-untyped-def]
    total = sum(v for v, _ in items) or 1.0
    offset = 0.0
    for value, item in items:
        share = value / total
        if vertical:
            yield item, (x, y + offset, w, h * share)
            offset += h * share
        else:
            yield item, (x + offset, y, w * share, h)
            offset += w * share


def treemap_svg(report: dict[str, Any], width: int = 960, height: int = 420) -> str:
    """Tokens sent by directory -> file -> chunk (slice and dice, alternating direction)."""
    files = report.get("files", {})
    by_dir: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    ranked = sorted(files.items(), key=lambda kv: -kv[1].get("total_tokens_sent_to_apis", 0))
    for path, f in ranked[:MAX_TREEMAP_FILES]:
        if f.get("total_tokens_sent_to_apis", 0) > 0:
            by_dir.setdefault(path.rsplit("/", 1)[0] if "/" in path else ".", []).append((path, f))
    if not by_dir:
        return '<p class="note">no tokens sent</p>'
    dirs = sorted(
        ((sum(f["total_tokens_sent_to_apis"] for _, f in fs), (d, fs)) for d, fs in by_dir.items()),
        key=lambda t: -t[0],
    )
    palette = ["#3867b5", "#3c8d5a", "#b5632f", "#7b4fa8", "#2f8f99", "#a83f62", "#6d7a2f", "#5d6b85"]
    out = [
        f'<svg class="chart" id="treemap" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="tokens sent by directory, file and chunk">'
    ]
    for di, ((d, fs), (dx, dy, dw, dh)) in enumerate(_slice(dirs, 0, 0, width, height, False)):
        color = palette[di % len(palette)]
        items = [(float(f["total_tokens_sent_to_apis"]), (p, f)) for p, f in fs]
        for (path, f), (fx, fy, fw, fh) in _slice(items, dx, dy, dw, dh, True):
            if fw * fh < 1:
                continue
            title = (
                f"{path}: {f['total_tokens_sent_to_apis']:,} tokens sent, {f.get('chunk_count', 0)} chunks"
            )
            first = f.get("chunks", {}).get("0") or {}
            if first.get("preview"):
                title += f"\n#0: {first['preview']}"
            out.append(
                f'<g><rect x="{fx:.1f}" y="{fy:.1f}" width="{fw:.1f}" height="{fh:.1f}" fill="{color}" '
                f'fill-opacity="0.25" stroke="#fff"><title>{esc(title)}</title></rect>'
            )
            chunks = [
                (float(c["total_tokens_sent_to_apis"]), (k, c))
                for k, c in sorted(f.get("chunks", {}).items(), key=lambda kv: int(kv[0]))
                if c["total_tokens_sent_to_apis"] > 0
            ]
            if fw * fh > 400 and len(chunks) > 1:
                for (k, c), (cx, cy, cw, ch) in _slice(chunks, fx + 1, fy + 1, fw - 2, fh - 2, False):
                    if cw < 1:
                        continue
                    ctitle = f"{path} #{k}: {c['total_tokens_sent_to_apis']:,} tokens sent"
                    if c.get("preview"):
                        ctitle += f"\n{c['preview']}"
                    out.append(
                        f'<rect x="{cx:.1f}" y="{cy:.1f}" width="{cw:.1f}" height="{ch:.1f}" fill="{color}" '
                        f'fill-opacity="0.55" stroke="#fff" stroke-width="0.5">'
                        f"<title>{esc(ctitle)}</title></rect>"
                    )
            if fw > 60 and fh > 14:
                name = path.rsplit("/", 1)[-1]
                name = name if len(name) * 6.5 < fw else name[: max(int(fw / 6.5) - 1, 1)] + "\u2026"
                out.append(f'<text x="{fx + 3:.1f}" y="{fy + 12:.1f}">{esc(name)}</text>')
            out.append("</g>")
        if dw > 80 and dh > 30:
            out.append(
                f'<text x="{dx + 3:.1f}" y="{dy + dh - 4:.1f}" font-weight="600" fill-opacity="0.8">'
                f"{esc(d)}/</text>"
            )
    out.append("</svg>")
    return "".join(out)


def scatter_svg(report: dict[str, Any], width: int = 640, height: int = 420) -> str:
    """Document tokens vs tokens sent per file (log-log), with linear and quadratic guides."""
    pts = [
        (float(f["document_tokens"]), float(f["total_tokens_sent_to_apis"]), p)
        for p, f in report.get("files", {}).items()
        if f.get("document_tokens") and f.get("total_tokens_sent_to_apis")
    ]
    if not pts:
        return '<p class="note">no file with both document tokens and tokens sent</p>'
    m = 50
    lx = [math.log10(x) for x, _, _ in pts]
    ly = [math.log10(y) for _, y, _ in pts]
    x0, x1 = math.floor(min(lx)), math.ceil(max(lx) + 1e-9)
    y0, y1 = math.floor(min(ly)), math.ceil(max(ly) + 1e-9)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def sx(v: float) -> float:
        return m + (width - 2 * m) * (v - x0) / (x1 - x0)

    def sy(v: float) -> float:
        return height - m - (height - 2 * m) * (v - y0) / (y1 - y0)

    out = [
        f'<svg class="chart" id="scatter" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="document tokens vs tokens sent per file">',
        f'<clipPath id="plot"><rect x="{m}" y="{m}" width="{width - 2 * m}" '
        f'height="{height - 2 * m}"/></clipPath>',
    ]
    for e in range(x0, x1 + 1):
        out.append(
            f'<line x1="{sx(e):.1f}" y1="{m}" x2="{sx(e):.1f}" y2="{height - m}" stroke="#eee"/>'
            f'<text x="{sx(e):.1f}" y="{height - m + 16}" text-anchor="middle">1e{e}</text>'
        )
    for e in range(y0, y1 + 1):
        out.append(
            f'<line x1="{m}" y1="{sy(e):.1f}" x2="{width - m}" y2="{sy(e):.1f}" stroke="#eee"/>'
            f'<text x="{m - 6}" y="{sy(e) + 4:.1f}" text-anchor="end">1e{e}</text>'
        )
    out.append(
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">document tokens per file</text>'
        f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">'
        "tokens sent per file</text>"
    )
    # Guides through the points' centre: slope 1 (linear) and slope 2 (quadratic).
    cx, cy = sum(lx) / len(lx), sum(ly) / len(ly)
    fit = (report.get("scaling") or {}).get("fit")
    guides = [(1.0, "#3c8d5a", "4 3"), (2.0, "#c62828", "4 3")]
    if fit:
        guides.append((float(fit["exponent"]), "#3867b5", ""))
    for slope, color, dash in guides:
        out.append(
            f'<line clip-path="url(#plot)" x1="{sx(x0):.1f}" y1="{sy(cy + slope * (x0 - cx)):.1f}" '
            f'x2="{sx(x1):.1f}" y2="{sy(cy + slope * (x1 - cx)):.1f}" stroke="{color}" stroke-width="1.5" '
            f'stroke-dasharray="{dash}"/>'
        )
    for (x, y, path), vx, vy in zip(pts, lx, ly, strict=True):
        out.append(
            f'<circle cx="{sx(vx):.1f}" cy="{sy(vy):.1f}" r="3.5" fill="#3867b5" fill-opacity="0.6">'
            f"<title>{esc(path)}: {int(x):,} document tokens, {int(y):,} tokens sent</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


# -- tables -------------------------------------------------------------------------------------


def _table(
    headers: Sequence[tuple[str, bool]], rows: Iterable[Sequence[Any]], *, cls: str = "", id_: str = ""
) -> str:
    """Headers are (name, numeric); numeric cells carry their value in data-v for sorting."""
    sortable = "sortable" in cls
    head = "".join(
        f'<th class="{"n " if numeric else ""}{"sortable" if sortable else ""}">{esc(name)}</th>'
        for name, numeric in headers
    )
    body = []
    for row in rows:
        cells = []
        for (_, numeric), value in zip(headers, row, strict=True):
            if numeric:
                cells.append(f'<td class="n" data-v="{_num_attr(value)}">{_n(value)}</td>')
            else:
                cells.append(f"<td>{esc(value) if value is not None else ''}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{id_}"' if id_ else ""
    return f'<table class="{cls}"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _evidence(evidence: dict[str, Any]) -> str:
    scalars = [(k, v) for k, v in evidence.items() if not isinstance(v, list | dict)]
    parts = []
    if scalars:
        parts.append(
            "<table class=evidence><tbody>"
            + "".join(f"<tr><th>{esc(k)}</th><td>{_n(v)}</td></tr>" for k, v in scalars)
            + "</tbody></table>"
        )
    for k, v in evidence.items():
        if isinstance(v, dict):
            parts.append(
                f"<p class=note>{esc(k)}: " + ", ".join(f"{esc(a)} {_n(b)}" for a, b in v.items()) + "</p>"
            )
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            keys = list(dict.fromkeys(key for row in v for key in row))
            headers = [
                (key, all(isinstance(row.get(key), int | float) or row.get(key) is None for row in v))
                for key in keys
            ]
            rows = [[_cell(row.get(key)) for key in keys] for row in v]
            parts.append(f"<p class=note>{esc(k)}</p>" + _table(headers, rows, cls="evidence"))
        elif isinstance(v, list):
            parts.append(f"<p class=note>{esc(k)}: " + ", ".join(esc(x) for x in v) + "</p>")
    return "".join(parts)


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return "; ".join(
            " ".join(str(x) for x in item.values()) if isinstance(item, dict) else str(item) for item in value
        )
    if isinstance(value, dict):
        return ", ".join(f"{a}: {b}" for a, b in value.items())
    return value


def _findings(report: dict[str, Any]) -> str:
    out = []
    for f in report.get("findings") or []:
        sev = esc(f["severity"])
        tokens = finding_cost(f) if f.get("tokens") else ""
        cost = ""
        out.append(
            f'<div class="finding {sev}" data-code="{esc(f["code"])}"><span class="sev {sev}">{sev}</span>'
            f'<span class="code">{esc(f["code"])}</span> <span class="note">{esc(tokens)}{esc(cost)}</span>'
            f"<div>{esc(f.get('summary', ''))}</div>"
            f'<div class="fix">fix: {esc(f.get("fix", ""))}</div>'
            f"<details><summary>evidence</summary>{_evidence(f.get('evidence') or {})}</details></div>"
        )
    return "".join(out) or '<p class="note">no finding: nothing unusual in this run</p>'


def _files_table(report: dict[str, Any]) -> str:
    files = sorted(report.get("files", {}).items(), key=lambda kv: -kv[1].get("total_tokens_sent_to_apis", 0))
    headers = [
        ("file", False),
        ("kind", False),
        ("source tokens", True),
        ("document tokens", True),
        ("chunks", True),
        ("raw chunk tokens", True),
        ("chat tokens", True),
        ("tokens sent", True),
        ("sent / document", True),
        ("failed calls", True),
    ]
    rows = []
    for path, f in files[:MAX_TABLE_ROWS]:
        doc = f.get("document_tokens")
        sent = f.get("total_tokens_sent_to_apis", 0)
        rows.append(
            [
                path,
                f.get("kind"),
                f.get("source_tokens"),
                doc,
                f.get("chunk_count"),
                f.get("raw_chunk_tokens"),
                f.get("tokens_sent_to_chat_model"),
                sent,
                round(sent / doc, 2) if doc else None,
                f.get("failed_calls"),
            ]
        )
    return _table(headers, rows, cls="sortable", id_="files")


def _cards(report: dict[str, Any]) -> str:
    agg = report["aggregated"]
    cost = (report.get("cost") or {}).get("total_usd")
    amp = agg.get("amplification")
    sent_per_doc = (
        agg["total_tokens_sent_to_apis"] / agg["document_tokens"] if agg.get("document_tokens") else None
    )
    cards = [
        ("source tokens (files on disk)", _n(agg.get("source_tokens")), False),
        ("document tokens (after loading)", _n(agg.get("document_tokens")), False),
        ("raw chunk tokens", _n(agg["total_tokens_from_raw_docs"]), False),
        ("tokens sent to the chat model", _n(agg["total_tokens_sent_to_chat_model"]), False),
        ("tokens sent to embeddings", _n(agg.get("total_tokens_sent_to_embeddings")), False),
        ("tokens sent, all APIs", _n(agg["total_tokens_sent_to_apis"]), True),
        (
            "amplification (chat / chunk tokens)",
            amplification_text(agg),
            bool(amp and amp > 3),
        ),
        ("tokens sent per document token", f"{sent_per_doc:.2f}" if sent_per_doc else "unknown", False),
        (
            "API calls (failed)",
            f"{agg['total_api_calls_initiated']:,} ({agg['total_failed_calls']:,})",
            agg["total_failed_calls"] > 0,
        ),
        (
            "estimated cost",
            esc(cost_line(report["cost"]).split(" = ")[0]) if report.get("cost") else _usd(cost),
            False,
        ),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card{" hl" if hl else ""}"><div class="v">{v}</div>'
            f'<div class="k">{esc(k)}</div></div>'
            for k, v, hl in cards
        )
        + "</div>"
    )


def _cost_latency(report: dict[str, Any]) -> str:
    parts = []
    cost = report.get("cost")
    if cost:
        rows = [
            [
                ct,
                c["model"],
                c["input_tokens"],
                c["cached_input_tokens"],
                c["output_tokens"],
                c["input_usd"],
                c["cached_input_usd"],
                c["output_usd"],
                c["total_usd"],
                (c["price_per_mtok"] or {}).get("source", "unknown price"),
            ]
            for ct, c in cost["by_call_type"].items()
        ]
        headers = [
            ("call type", False),
            ("model", False),
            ("input tokens", True),
            ("cached input", True),
            ("output tokens", True),
            ("input USD", True),
            ("cached USD", True),
            ("output USD", True),
            ("total USD", True),
            ("price from", False),
        ]
        parts.append(_table(headers, rows))
        if cost.get("output_estimated"):
            parts.append(
                '<p class="note">output tokens without a billed figure are bounded by max_tokens</p>'
            )
    lat = report.get("latency")
    if lat:
        rows = [
            [ct, (v or {}).get("p50"), (v or {}).get("p95"), (v or {}).get("max"), (v or {}).get("total")]
            for ct, v in lat["by_call_type"].items()
        ]
        parts.append(
            _table(
                [("call type", False), ("p50 s", True), ("p95 s", True), ("max s", True), ("total s", True)],
                rows,
            )
        )
        parts.append(
            f'<p class="note">effective concurrency {_n(lat.get("effective_concurrency"))} '
            f"(configured {_n(lat.get('configured_concurrency'))}); rate limited calls "
            f"{_n(lat.get('rate_limited_calls'))}; waiting before retries {_n(lat.get('retry_wait_s'))} s; "
            f"wall time {_n(lat.get('wall_time_s'))} s</p>"
        )
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    run = report.get("run") or {}
    agg = report["aggregated"]
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:"
    waterfall = report.get("waterfall") or {}
    check = waterfall.get("check") or {}
    scaling = report.get("scaling") or {}
    fit = scaling.get("fit")
    fit_text = esc(explain(fit)) if fit else "too few files for a fit"
    config = run.get("config") or {}
    settings = ", ".join(
        f"{k} {v}" for k, v in config.items() if k in ("chunk_tokens", "overlap_tokens", "context", "loader")
    )
    skipped = report.get("skipped_files") or []
    skipped_table = _table(
        [("file", False), ("reason", False), ("detail", False), ("size", True), ("tokens avoided", True)],
        [[s["path"], s["reason"], s.get("detail"), s.get("size"), s.get("source_tokens")] for s in skipped],
        cls="sortable",
        id_="skipped",
    )
    title = "docingest dry run" if run.get("dry_run") else "docingest run"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} {esc(run.get("id", ""))}</title>
<style>{_asset("report.css")}</style></head>
<body>
<h1>{esc(title)}: where the tokens go</h1>
<div class="meta">run {esc(run.get("id", ""))} · source {esc(run.get("source", ""))} · chat model
{esc(run.get("chat_model", ""))} · embedding model {esc(run.get("embedding_model", ""))} · {esc(settings)} ·
status {esc(run.get("status"))}</div>
{_cards(report)}
<section><h2>Findings</h2>{_findings(report)}</section>
<section><h2>Waterfall: from files on disk to tokens sent</h2>{waterfall_svg(waterfall.get("steps") or [])}
<p class="note">the steps sum to {_n(check.get("sum_of_steps"))} tokens; the report's total is
{_n(agg["total_tokens_sent_to_apis"])}; unexplained: {_n(check.get("unexplained_tokens"))}</p></section>
<section><h2>Tokens sent by directory, file and chunk</h2>{treemap_svg(report)}
<p class="note">area is tokens sent (chat and embeddings); hover a block for figures</p></section>
<section><h2>Scaling: document tokens vs tokens sent per file</h2>{scatter_svg(report)}
<div class="legend"><span><i style="background:#3c8d5a"></i>linear (slope 1)</span>
<span><i style="background:#c62828"></i>quadratic (slope 2)</span>
<span><i style="background:#3867b5"></i>fit</span></div>
<p class="note">{fit_text}</p></section>
<section><h2>Cost and latency</h2>{_cost_latency(report)}</section>
<section><h2>Files ({len(report.get("files", {})):,})</h2>{_files_table(report)}</section>
<section><h2>Skipped files ({len(skipped):,})</h2>{skipped_table}</section>
<script>{script}</script>
</body></html>
"""


def write_html(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, render_html(report))
