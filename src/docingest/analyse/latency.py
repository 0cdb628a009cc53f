"""Where the time went: per call type latency, waiting on rate limits and retries, concurrency."""

from __future__ import annotations

from typing import Any

from docingest.analyse.waterfall import iter_chunks


def calls_by_seq(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each HTTP attempt once (a batch is listed under every chunk it carried), with its chunks."""
    calls: dict[int, dict[str, Any]] = {}
    for path, index, c in iter_chunks(report):
        for d in c["call_details"]:
            seq = d.get("seq")
            if seq is None:
                continue
            call = calls.setdefault(int(seq), {**d, "prompt_tokens": 0, "chunks": []})
            call["prompt_tokens"] += d["prompt_tokens"]
            call["chunks"].append((path, index))
    return calls


def latency(report: dict[str, Any]) -> dict[str, Any]:
    agg = report["aggregated"]
    config = (report.get("run") or {}).get("config") or {}
    calls = calls_by_seq(report)
    timed = [c for c in calls.values() if c.get("latency_s") is not None and c.get("t_s") is not None]
    busy = sum(float(c["latency_s"]) for c in timed)
    span = None
    if timed:
        start = min(float(c["t_s"]) for c in timed)
        end = max(float(c["t_s"]) + float(c["latency_s"]) for c in timed)
        span = round(end - start, 6)
    # A retry waits from the end of the previous attempt of the same request to its own start.
    last_end: dict[tuple[str, str, int], float] = {}
    retry_wait = 0.0
    failed_time = 0.0
    rate_limited = 0
    for seq in sorted(calls):
        c = calls[seq]
        key = (c["call_type"], *c["chunks"][0])
        if c.get("http_status") == 429:
            rate_limited += 1
        if c.get("latency_s") is None or c.get("t_s") is None:
            continue
        if c["status"] != "Success":
            failed_time += float(c["latency_s"])
        if c.get("attempt", 0) > 0 and key in last_end:
            retry_wait += max(0.0, float(c["t_s"]) - last_end[key])
        last_end[key] = float(c["t_s"]) + float(c["latency_s"])
    return {
        "by_call_type": {ct: fig.get("latency_s") for ct, fig in sorted(agg.get("by_call_type", {}).items())},
        "calls_timed": len(timed),
        "busy_s": round(busy, 6),
        "span_s": span,
        "wall_time_s": agg.get("wall_time_s"),
        "effective_concurrency": round(busy / span, 3) if span else None,
        "configured_concurrency": config.get("concurrency"),
        "rate_limited_calls": rate_limited,
        "retry_wait_s": round(retry_wait, 6),
        "failed_attempt_s": round(failed_time, 6),
    }
