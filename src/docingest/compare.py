"""Two runs side by side: totals, amplification, cost, and the files whose tokens changed most."""

from __future__ import annotations

from typing import Any

TOTALS = (
    ("source_tokens", "source tokens"),
    ("document_tokens", "document tokens"),
    ("total_tokens_from_raw_docs", "raw chunk tokens"),
    ("total_tokens_sent_to_chat_model", "tokens sent to the chat model"),
    ("total_tokens_sent_to_embeddings", "tokens sent to embeddings"),
    ("total_tokens_sent_to_apis", "tokens sent to the APIs"),
    ("total_api_calls_initiated", "API calls"),
    ("total_failed_calls", "failed calls"),
    ("chunks", "chunks"),
    ("files_loaded", "files loaded"),
    ("amplification", "amplification (chat / raw chunk tokens)"),
    ("wall_time_s", "wall time (s)"),
)


def _row(key: str, label: str, before: Any, after: Any) -> dict[str, Any]:
    delta = after - before if isinstance(before, int | float) and isinstance(after, int | float) else None
    ratio = round(after / before, 4) if delta is not None and before else None
    if isinstance(delta, float):
        delta = round(delta, 6)
    return {"key": key, "label": label, "before": before, "after": after, "delta": delta, "ratio": ratio}


def compare(before: dict[str, Any], after: dict[str, Any], *, top: int = 15) -> dict[str, Any]:
    """Both reports must carry their analysis (``analyse.apply_analysis``) for cost and findings."""
    a, b = before["aggregated"], after["aggregated"]
    rows = [_row(k, label, a.get(k), b.get(k)) for k, label in TOTALS]
    cost_a = (before.get("cost") or {}).get("total_usd")
    cost_b = (after.get("cost") or {}).get("total_usd")
    rows.append(_row("cost_usd", "estimated cost (USD)", cost_a, cost_b))
    files_a, files_b = before.get("files", {}), after.get("files", {})
    changes = []
    for path in sorted(set(files_a) | set(files_b)):
        ta = files_a[path]["total_tokens_sent_to_apis"] if path in files_a else None
        tb = files_b[path]["total_tokens_sent_to_apis"] if path in files_b else None
        delta = (tb or 0) - (ta or 0)
        if delta:
            changes.append(
                {
                    "path": path,
                    "before": ta,
                    "after": tb,
                    "delta": delta,
                    "chunks_before": files_a[path].get("chunk_count") if path in files_a else None,
                    "chunks_after": files_b[path].get("chunk_count") if path in files_b else None,
                }
            )
    changes.sort(key=lambda c: (-abs(c["delta"]), c["path"]))
    codes_a = {f["code"]: f for f in before.get("findings", [])}
    codes_b = {f["code"]: f for f in after.get("findings", [])}
    return {
        "before": {"id": before["run"].get("id"), "config": before["run"].get("config")},
        "after": {"id": after["run"].get("id"), "config": after["run"].get("config")},
        "config_changes": _config_changes(before, after),
        "totals": rows,
        "files": changes[:top],
        "files_changed": len(changes),
        "findings_resolved": sorted(set(codes_a) - set(codes_b)),
        "findings_new": sorted(set(codes_b) - set(codes_a)),
        "findings_kept": sorted(set(codes_a) & set(codes_b)),
    }


def _config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    ca = before["run"].get("config") or {}
    cb = after["run"].get("config") or {}
    skip = {"report", "ledger", "db"}
    return {
        k: [ca.get(k), cb.get(k)]
        for k in sorted(set(ca) | set(cb))
        if k not in skip and ca.get(k) != cb.get(k)
    }
