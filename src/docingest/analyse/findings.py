"""Findings: each names a cause of tokens (or time), the tokens it accounts for, the evidence
(worst files and chunks, with figures) and a concrete fix.

Codes are stable: ``context_document``, ``non_text_payload``, ``loader_dropped_payload``,
``skipped_generated``, ``chunk_overlap``, ``duplicate_content``, ``retried_calls``,
``failed_calls``, ``unsent_requests``, ``billed_mismatch``, ``calls_above_plan``,
``superlinear_scaling``, ``unbatched_embeddings``, ``sequential_calls``, ``rate_limited``.

Fixes follow the actual cause: retries and failures by HTTP status (429, 5xx, timeouts, no
response, not sent), unsent requests by their reason (budget, API limit, an identical request
failed).
Tokens sent again (``retried_calls``, ``calls_above_plan``, the waterfall's ``retries``) are the
whole prompt of every attempt after the first, a batch with all its inputs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from docingest.account import unsent_kind
from docingest.analyse.latency import calls_by_seq
from docingest.analyse.scaling import QUADRATIC_EXPONENT, describe, explain
from docingest.analyse.waterfall import CHAT, EMBED, Flow, iter_chunks

TOP = 10
OVERLAP_FACTOR = 1.25
BILLED_TOLERANCE = 0.02
AVOIDED_REASONS = ("lockfile", "minified", "generated")


def severity(tokens: int, total: int) -> str:
    share = tokens / total if total else 0.0
    if share >= 0.3:
        return "high"
    if share >= 0.1:
        return "medium"
    if share >= 0.02:
        return "low"
    return "info"


def _finding(
    code: str, sev: str, tokens: int | None, summary: str, fix: str, **evidence: Any
) -> dict[str, Any]:
    return {
        "code": code,
        "severity": sev,
        "tokens": tokens,
        "summary": summary,
        "evidence": evidence,
        "fix": fix,
    }


def build(
    report: dict[str, Any], flow: Flow, scaling: dict[str, Any], latency: dict[str, Any]
) -> list[dict[str, Any]]:
    agg = report["aggregated"]
    total = agg["total_tokens_sent_to_apis"]
    out: list[dict[str, Any]] = []
    for check in (
        _context_document,
        _non_text_payload,
        _loader_dropped,
        _skipped_generated,
        _chunk_overlap,
        _duplicates,
        _retries_and_failures,
        _unsent,
        _billed_mismatch,
        _calls_above_plan,
        _unbatched_embeddings,
    ):
        out.extend(check(report, flow, total))
    out.extend(_scaling(scaling, total))
    out.extend(_slowness(report, latency))
    rank = {"high": 0, "medium": 1, "low": 2, "info": 3}
    out.sort(key=lambda f: (rank[f["severity"]], -(f["tokens"] or 0), f["code"]))
    return out


def _files(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = report.get("files", {})
    return files


def _context_document(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    """Whole-document context: each call carries (about) the whole document, so a file's chat
    tokens grow with chunks x document tokens."""
    rows: list[dict[str, Any]] = []
    saving = 0
    saving_known = True
    for path, f in _files(report).items():
        ff = flow.files.get(path)
        doc = f.get("document_tokens") or 0
        if ff is None or ff.chunks_called < 2 or not doc:
            continue
        per_call = ff.context / ff.chunks_called
        if per_call < 0.9 * doc:
            continue
        plan = f.get("chat_plan_tokens") or {}
        file_saving = plan["document"] - plan["section"] if {"document", "section"} <= plan.keys() else None
        if file_saving is None:
            saving_known = False
        else:
            saving += file_saving
        rows.append(
            {
                "path": path,
                "document_tokens": doc,
                "chunks": f.get("chunk_count"),
                "chunks_x_document_tokens": (f.get("chunk_count") or 0) * doc,
                "context_tokens": ff.context,
                "tokens_sent_to_chat_model": f.get("tokens_sent_to_chat_model"),
                "saving_with_section_context": file_saving,
            }
        )
    if not rows:
        return []
    rows.sort(key=lambda r: -r["context_tokens"])
    tokens = sum(r["context_tokens"] for r in rows)
    chat = report["aggregated"]["total_tokens_sent_to_chat_model"]
    summary = (
        f"{len(rows)} file(s) send the whole document with every chunk: {tokens:,} context tokens, "
        f"{tokens / chat:.0%} of the tokens sent to the chat model"
        if chat
        else f"{len(rows)} file(s) send the whole document with every chunk"
    )
    fix = "use --context section (the default): the summary prompt carries the chunk's section and neighbours"
    if saving_known:
        fix += f"; the same plan with --context section sends {saving:,} fewer tokens"
    return [
        _finding(
            "context_document",
            severity(tokens, total),
            tokens,
            summary,
            fix,
            saving_with_section_context=saving if saving_known else None,
            files=rows[:TOP],
        )
    ]


def _non_text_payload(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    """Files whose tokens sent are mostly base64, notebook outputs or markup (``--loader raw``)."""
    rows = []
    for path, f in _files(report).items():
        payload = sum((f.get("payload_tokens") or {}).values())
        source = f.get("source_tokens") or 0
        if not payload or not source:
            continue
        share = payload / source
        sent = f.get("total_tokens_sent_to_apis") or 0
        rows.append(
            {
                "path": path,
                "source_tokens": source,
                "payload_tokens": payload,
                "payload_share": round(share, 4),
                "by_category": f.get("payload_tokens"),
                "smart_document_tokens": f.get("smart_document_tokens"),
                "tokens_sent": sent,
                "tokens_sent_for_payload": round(sent * share),
            }
        )
    if not rows:
        return []
    rows.sort(key=lambda r: -r["tokens_sent_for_payload"])
    tokens = sum(r["tokens_sent_for_payload"] for r in rows)
    payload = sum(r["payload_tokens"] for r in rows)
    source = sum(r["source_tokens"] for r in rows)
    top = rows[0]
    return [
        _finding(
            "non_text_payload",
            severity(tokens, total),
            tokens,
            f"{payload / source:.0%} of the source tokens of {len(rows)} file(s) are notebook outputs, "
            f"base64 or markup the smart loader drops (worst: {top['path']}, {top['payload_share']:.0%})",
            "use --loader smart (the default): it keeps notebook code and text, drops images, "
            "base64 and long outputs",
            payload_tokens=payload,
            payload_share=round(payload / source, 4),
            files=rows[:TOP],
        )
    ]


def _loader_dropped(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    agg = report["aggregated"]
    dropped = agg.get("dropped_tokens") or {}
    avoided = sum(dropped.values())
    if not avoided:
        return []
    rows = [
        {"path": p, "source_tokens": f.get("source_tokens"), "dropped_tokens": f["dropped_tokens"]}
        for p, f in _files(report).items()
        if f.get("dropped_tokens")
    ]
    rows.sort(key=lambda r: -sum(r["dropped_tokens"].values()))
    source = agg.get("source_tokens") or 0
    return [
        _finding(
            "loader_dropped_payload",
            "info",
            avoided,
            f"the loader kept {avoided:,} tokens of notebook outputs, base64 and front matter out of the "
            f"documents" + (f" ({avoided / source:.0%} of the source tokens)" if source else ""),
            "nothing to do: this is what --loader smart avoids; --loader raw would send them",
            avoided_tokens=avoided,
            by_category=dict(dropped),
            files=rows[:TOP],
        )
    ]


def _skipped_generated(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    rows = [s for s in report.get("skipped_files", []) if s.get("reason") in AVOIDED_REASONS]
    if not rows:
        return []
    known = [s["source_tokens"] for s in rows if s.get("source_tokens") is not None]
    avoided = sum(known) if known else None
    rows = sorted(rows, key=lambda s: -(s.get("source_tokens") or 0))
    names = ", ".join(s["path"] for s in rows[:3]) + (", ..." if len(rows) > 3 else "")
    return [
        _finding(
            "skipped_generated",
            "info",
            avoided,
            f"{len(rows)} lockfile(s), minified or generated file(s) skipped ({names})"
            + (f": {avoided:,} tokens avoided" if avoided is not None else ""),
            "nothing to do: discovery skips them; an --include naming one (its path, no wildcard) "
            "would send it",
            avoided_tokens=avoided,
            files=[
                {
                    "path": s["path"],
                    "reason": s["reason"],
                    "size": s.get("size"),
                    "source_tokens": s.get("source_tokens"),
                }
                for s in rows[:TOP]
            ],
        )
    ]


def _chunk_overlap(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    agg = report["aggregated"]
    doc = agg.get("document_tokens")
    raw = agg["total_tokens_from_raw_docs"]
    if not doc or raw <= doc * OVERLAP_FACTOR:
        return []
    factor = raw / doc
    extra_raw = raw - doc
    # A repeated chunk token travels like any other: scale by tokens sent per chunk token.
    tokens = round(extra_raw * agg["total_tokens_sent_to_apis"] / raw)
    rows = []
    for path, f in _files(report).items():
        d = f.get("document_tokens") or 0
        if d and f.get("raw_chunk_tokens"):
            rows.append(
                {
                    "path": path,
                    "document_tokens": d,
                    "raw_chunk_tokens": f["raw_chunk_tokens"],
                    "chunks": f.get("chunk_count"),
                    "overlap_factor": round(f["raw_chunk_tokens"] / d, 3),
                }
            )
    rows.sort(key=lambda r: -(r["raw_chunk_tokens"] - r["document_tokens"]))
    config = (report.get("run") or {}).get("config") or {}
    return [
        _finding(
            "chunk_overlap",
            "high" if factor >= 2 else severity(tokens, total),
            tokens,
            f"chunks repeat their neighbours: overlap factor {factor:.2f} (sum of chunk tokens / document "
            f"tokens); {extra_raw:,} repeated chunk tokens, about {tokens:,} tokens sent",
            f"lower --overlap-tokens (now {config.get('overlap_tokens', '?')} for --chunk-tokens "
            f"{config.get('chunk_tokens', '?')}): 0 to 10% of the chunk size is usually enough",
            overlap_factor=round(factor, 4),
            repeated_chunk_tokens=extra_raw,
            files=rows[:TOP],
        )
    ]


def _duplicates(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    if not flow.duplicates:
        return []
    chunks = {(p, i): c for p, i, c in iter_chunks(report)}
    groups = []
    for refs in flow.duplicates.values():
        first = chunks[refs[0]]
        extra = sum(chunks[r]["total_tokens_sent_to_apis"] for r in refs[1:])
        groups.append(
            {
                "copies": len(refs),
                "raw_chunk_tokens": first.get("raw_chunk_tokens"),
                "tokens_sent_for_extra_copies": extra,
                "chunks": [{"path": p, "index": i} for p, i in refs],
                "preview": first.get("preview"),
            }
        )
    groups.sort(key=lambda g: -g["tokens_sent_for_extra_copies"])
    tokens = sum(g["tokens_sent_for_extra_copies"] for g in groups)
    # Whole files sent more than once (same bytes under different paths).
    by_sha: dict[str, list[str]] = defaultdict(list)
    for path, f in _files(report).items():
        if f.get("sha256") and f.get("chunk_count"):
            by_sha[f["sha256"]].append(path)
    files = _files(report)
    dup_files = [
        {
            "paths": sorted(paths),
            "document_tokens": files[sorted(paths)[0]].get("document_tokens"),
            "tokens_sent_for_extra_copies": sum(
                files[p]["total_tokens_sent_to_apis"] for p in sorted(paths)[1:]
            ),
        }
        for paths in by_sha.values()
        if len(paths) > 1
    ]
    dup_files.sort(key=lambda g: -g["tokens_sent_for_extra_copies"])
    paths = sorted({p for g in groups for p, _ in ((c["path"], c["index"]) for c in g["chunks"])})
    extra_chunks = sum(g["copies"] - 1 for g in groups)
    return [
        _finding(
            "duplicate_content",
            severity(tokens, total),
            tokens,
            f"{extra_chunks:,} chunk(s) repeat text already sent ({len(groups)} distinct text(s) in "
            f"{len(paths)} file(s)); the extra copies cost {tokens:,} tokens",
            "exclude the copies (--exclude GLOB), or keep one copy of shared docs; a knowledge base run "
            "reuses summaries and embeddings of identical chunks from its cache",
            duplicate_files=dup_files[:TOP],
            chunks=groups[:TOP],
            paths=paths[:50],
        )
    ]


#: causes the SDK retries (up to --max-retries)
_RETRYABLE = frozenset({"429", "5xx", "timeout", "no response", "not sent"})


def _cause(c: dict[str, Any]) -> str:
    """A failed attempt's cause: ``not sent`` (the connection failed before the request left:
    refused, DNS failure, connect timeout), ``timeout``, ``no response`` (a connection error
    after the request may have been received), ``429``, ``5xx``, ``context length``,
    ``401``/``403``/``404`` or ``HTTP <n>``."""
    status = c.get("http_status")
    text = str(c.get("error_details") or "").lower()
    if status is None:
        if c.get("sent") is False:
            return "not sent"
        return "timeout" if "timeout" in text or "timed out" in text else "no response"
    code = int(status)
    if code == 429:
        return "429"
    if code >= 500:
        return "5xx"
    if "context_length" in text or "maximum context length" in text:
        return "context length"
    if code in (401, 403, 404):
        return str(code)
    return f"HTTP {code}"


def _status_label(c: dict[str, Any]) -> str:
    """An attempt's HTTP status for people: the number, or what happened when there was none."""
    return str(c["http_status"]) if c.get("http_status") is not None else _cause(c)


def _advice(cause: str, config: dict[str, Any], *, final: bool) -> str:
    concurrency = config.get("concurrency")
    now = f" (this run: {concurrency})" if concurrency is not None else ""
    timeout = config.get("timeout")
    if cause == "429":
        return (
            f"rate limited (429): lower --concurrency{now} or set --rpm/--tpm to your tier's limits, "
            "or ask for a higher rate limit tier"
        )
    if cause == "5xx":
        if final:
            return (
                "the provider kept failing (5xx) after every retry: run the same command again later "
                "(finished work is not sent again) or raise --max-retries"
            )
        return (
            "server errors (5xx) at the provider: retrying them is right; nothing to change unless "
            "they persist"
        )
    if cause == "not sent":
        return (
            "not sent (connection refused, DNS failure or connect timeout): the API was unreachable and "
            "no token left this machine: check --base-url and the network or proxy"
        )
    if cause == "no response":
        return (
            "no response (connection errors once the request was on its way: the API may have received "
            "it, and billed it): check --base-url and the network or proxy"
        )
    if cause == "timeout":
        return "timeouts: raise --timeout" + (f" (this run: {timeout:g} s)" if timeout is not None else "")
    if cause == "context length":
        return (
            "context_length_exceeded: lower --chunk-tokens or use --context section/none, or exclude the file"
        )
    if cause == "401":
        return "401 unauthorised: check OPENAI_API_KEY (the key of the API at --base-url)"
    if cause == "403":
        return "403 forbidden: the key has no access to this model or project"
    if cause == "404":
        return "404 not found: check --chat-model/--embedding-model and --base-url"
    return f"{cause}: see error_details in the report"


def _fix_for(causes: Counter[str], config: dict[str, Any], *, final: bool) -> str:
    """The fixes of the causes, the most common first."""
    return "; ".join(_advice(c, config, final=final) for c, _ in causes.most_common())


def _request_key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c["call_type"], tuple(c["chunks"]))


def _retries_and_failures(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    calls = calls_by_seq(report)
    config = (report.get("run") or {}).get("config") or {}
    out: list[dict[str, Any]] = []
    last_attempt: dict[tuple[Any, ...], int] = {}
    for c in calls.values():
        key = _request_key(c)
        last_attempt[key] = max(last_attempt.get(key, 0), c.get("attempt", 0))
    retried = [c for c in calls.values() if c.get("attempt", 0) > 0]
    if retried:
        tokens = sum(c["prompt_tokens"] for c in retried)
        # the failed attempts that were retried: what made the retries
        before_retry = [
            c
            for c in calls.values()
            if c["status"] != "Success" and c.get("attempt", 0) < last_attempt[_request_key(c)]
        ]
        statuses = Counter(_status_label(c) for c in before_retry)
        causes = Counter(_cause(c) for c in before_retry)
        worst = _worst_chunks(retried)
        not_sent = sum(1 for c in retried if c.get("sent") is False)
        out.append(
            _finding(
                "retried_calls",
                severity(tokens, total),
                tokens,
                f"{len(retried):,} retried attempt(s) sent {tokens:,} tokens again (each retry's whole "
                f"request, every input of a batch{_not_sent_text(not_sent)}; failed attempts before a "
                f"retry: {_counts(statuses) or 'none recorded'})",
                _fix_for(causes, config, final=False) or "see error_details in the report",
                attempts=len(retried),
                attempts_not_sent=not_sent,
                failed_by_status=dict(statuses.most_common()),
                chunks=worst,
            )
        )
    # a request whose retry the budget held back did not fail for good: the unsent finding says it
    held = {
        (u.get("call_type"), p, i)
        for p, i, ch in iter_chunks(report)
        for u in ch.get("unsent") or ()
        if str(u.get("reason", "")).startswith("budget")
    }
    # a run stopped early (budget, Ctrl-C) cuts short the retries still waiting: not failures for good
    cut_short = (report.get("run") or {}).get("status") in ("stopped", "interrupted")
    retry_limit = int(config.get("max_retries") or 0)
    final_fail = [
        c
        for c in calls.values()
        if c["status"] != "Success"
        and c.get("attempt", 0) >= last_attempt[_request_key(c)]
        and not (c["chunks"] and all((c["call_type"], p, i) in held for p, i in c["chunks"]))
        and not (cut_short and c.get("attempt", 0) < retry_limit and _cause(c) in _RETRYABLE)
    ]
    if final_fail:
        tokens = sum(c["prompt_tokens"] for c in final_fail)
        reasons = Counter(_error_label(c) for c in final_fail)
        causes = Counter(_cause(c) for c in final_fail)
        not_sent = sum(1 for c in final_fail if c.get("sent") is False)
        out.append(
            _finding(
                "failed_calls",
                severity(tokens, total),
                tokens,
                f"{len(final_fail):,} request(s) failed for good after sending {tokens:,} tokens "
                f"({', '.join(f'{n} {r}' for r, n in reasons.most_common(3))}"
                f"{_not_sent_text(not_sent, ' on their last attempt')})",
                _fix_for(causes, config, final=True),
                attempts_not_sent=not_sent,
                by_error=dict(reasons.most_common()),
                chunks=_worst_chunks(final_fail),
            )
        )
    return out


def _not_sent_text(n: int, when: str = "") -> str:
    """``; 3 of them sent nothing: the connection failed...``, or nothing when ``n`` is 0."""
    if not n:
        return ""
    return f"; {n:,} of them sent nothing{when}: the connection failed before the request left"


def _error_label(c: dict[str, Any]) -> str:
    """The head of a failure's error (e.g. ``400 context_length_exceeded``, ``ConnectError``)."""
    if c.get("error_details"):
        return str(c["error_details"]).split(":")[0]
    status = c.get("http_status")
    return f"HTTP {status}" if status is not None else "no response"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {n:,}" for k, n in counter.most_common())


def _worst_chunks(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per: Counter[tuple[str, int]] = Counter()
    errors: dict[tuple[str, int], str] = {}
    for c in calls:
        for ref in c["chunks"]:
            per[ref] += c["prompt_tokens"] // max(len(c["chunks"]), 1)
            if c.get("error_details"):
                errors[ref] = c["error_details"]
    return [
        {"path": p, "index": i, "tokens": n, "error": errors.get((p, i))}
        for (p, i), n in per.most_common(TOP)
    ]


_UNSENT = {
    # kind: (why, the fix)
    "budget": (
        "the run reached its budget (--max-tokens/--max-cost)",
        "run the same command again with a larger --max-tokens/--max-cost to go on; finished work is not "
        "sent again",
    ),
    "over_limit": (
        "the API would refuse them (an embedding input over 8,192 tokens); those chunks have no embedding",
        "lower --chunk-tokens",
    ),
    "identical_failed": (
        "they waited for an identical request that failed",
        "fix that failure (see failed_calls) and run the same command again",
    ),
    "other": (
        "see each unsent record's reason in the ledger",
        "see the reason of the unsent records in the ledger",
    ),
}


def _unsent(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    agg = report["aggregated"]
    n = agg.get("unsent_requests") or 0
    if not n:
        return []
    rows = []
    for p, i, c in iter_chunks(report):
        for u in c.get("unsent") or ():
            rows.append({"path": p, "index": i, "tokens": u.get("tokens"), "reason": u.get("reason")})
    rows.sort(key=lambda r: -(r["tokens"] or 0))
    by_reason: dict[str, dict[str, int]] = agg.get("unsent_by_reason") or {}
    if not by_reason:  # a report from before the reasons were counted: from the chunks it carries
        for r in rows:
            e = by_reason.setdefault(unsent_kind(r["reason"]), {"requests": 0, "tokens": 0})
            e["requests"] += 1
            e["tokens"] += r["tokens"] or 0
        if sum(e["requests"] for e in by_reason.values()) < n:
            other = by_reason.setdefault("other", {"requests": 0, "tokens": 0})
            other["requests"] += n - sum(e["requests"] for e in by_reason.values())
    kinds = sorted(by_reason, key=lambda k: -by_reason[k]["requests"])
    parts = [
        # one per chunk and call type: a summary request, or one input of an embeddings batch
        f"{by_reason[k]['requests']:,} chunk summary or embedding input(s) ({by_reason[k]['tokens']:,} "
        "tokens) were not sent: " + _UNSENT.get(k, _UNSENT["other"])[0]
        for k in kinds
    ]
    fixes = [
        f"{k}: {_UNSENT.get(k, _UNSENT['other'])[1]}"
        if len(kinds) > 1
        else _UNSENT.get(k, _UNSENT["other"])[1]
        for k in kinds
    ]
    return [
        _finding(
            "unsent_requests",
            "medium",
            sum(e["tokens"] for e in by_reason.values()),
            "; ".join(parts),
            "; ".join(fixes),
            by_reason=by_reason,
            inputs=rows[:TOP],
        )
    ]


def _billed_mismatch(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    out = []
    for ct, fig in report["aggregated"].get("by_call_type", {}).items():
        billed = fig.get("billed_prompt_tokens")
        counted = fig.get("tokens_sent_with_usage")
        if billed is None or not counted:
            continue
        diff = billed - counted
        if abs(diff) <= BILLED_TOLERANCE * counted:
            continue
        out.append(
            _finding(
                "billed_mismatch",
                "medium",
                abs(diff),
                f"{ct}: the API billed {billed:,} prompt tokens where docingest counted {counted:,} "
                f"({diff / counted:+.1%})",
                "check that --chat-model/--embedding-model name the models the server really runs (the "
                "tokenizer follows the model name), and that a proxy does not add to the prompts",
                call_type=ct,
                billed_prompt_tokens=billed,
                counted_prompt_tokens=counted,
                relative_difference=round(diff / counted, 4),
            )
        )
    return out


def _calls_above_plan(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    """The plan needs one summary per chunk and ceil(chunks / batch) embedding requests.

    The extra tokens are the whole prompt of every extra request (a batch counts all its inputs):
    retried attempts (the same figure as ``retried_calls``), embedding inputs sent again after
    their batch was refused and split, and summaries of a chunk asked for again."""
    calls = calls_by_seq(report)
    config = (report.get("run") or {}).get("config") or {}
    batch = int(config.get("embedding_batch_size") or 256)
    chat_chunks = {c["chunks"][0] for c in calls.values() if c["call_type"] == CHAT}
    embedded = {ref for c in calls.values() if c["call_type"] == EMBED for ref in c["chunks"]}
    planned = len(chat_chunks) + math.ceil(len(embedded) / batch)
    actual = len(calls)
    if not planned or actual <= planned * 1.02 + 1:
        return []
    retries = [0, 0]
    splits = [0, 0]
    repeats = [0, 0]
    seen_chat: set[tuple[str, int]] = set()
    seen_embed: set[tuple[str, int]] = set()
    for seq in sorted(calls):
        c = calls[seq]
        if c.get("attempt", 0) > 0:
            cause = retries
        elif c["call_type"] == CHAT:
            cause = repeats if c["chunks"][0] in seen_chat else [0, 0]
        else:
            cause = splits if seen_embed.intersection(c["chunks"]) else [0, 0]
        cause[0] += 1
        cause[1] += c["prompt_tokens"]
        (seen_chat if c["call_type"] == CHAT else seen_embed).update(c["chunks"])
    extra_tokens = retries[1] + splits[1] + repeats[1]
    parts = []
    fixes = []
    if retries[0]:
        parts.append(f"{retries[0]:,} retried attempt(s), {retries[1]:,} tokens")
        fixes.append("retries: see retried_calls for why they were retried")
    if splits[0]:
        parts.append(
            f"{splits[0]:,} embedding request(s) re-sent after a batch was refused (400), "
            f"{splits[1]:,} tokens"
        )
        fixes.append("refused embedding batches: lower --chunk-tokens so that no input is refused")
    if repeats[0]:
        parts.append(
            f"{repeats[0]:,} summary request(s) for chunks already summarised, {repeats[1]:,} tokens"
        )
        fixes.append(
            "repeated summaries: the ledger holds more than one run of the same chunks, or a cache "
            "was bypassed"
        )
    return [
        _finding(
            "calls_above_plan",
            severity(extra_tokens, total),
            extra_tokens,
            f"{actual:,} API calls where the plan needed {planned:,} "
            f"({actual / planned:.2f} per planned call): "
            + "; ".join(parts or ["cause not recorded"])
            + " (extra tokens: the whole prompt of every extra request, a batch with all its inputs)",
            "; ".join(fixes) or "see the call records in the ledger",
            planned_calls=planned,
            actual_calls=actual,
            retried_attempts=retries[0],
            retried_tokens=retries[1],
            split_requests=splits[0],
            split_tokens=splits[1],
            repeated_summaries=repeats[0],
            repeated_summary_tokens=repeats[1],
            calls_per_chunk=round(actual / max(len(chat_chunks | embedded), 1), 3),
        )
    ]


def _unbatched_embeddings(report: dict[str, Any], flow: Flow, total: int) -> list[dict[str, Any]]:
    fig = report["aggregated"].get("by_call_type", {}).get(EMBED)
    chunks = report["aggregated"].get("chunks") or 0
    if not fig or chunks < 20 or fig["calls"] < chunks / 2:
        return []
    return [
        _finding(
            "unbatched_embeddings",
            "low",
            0,
            f"{fig['calls']:,} embedding requests for {chunks:,} chunks: "
            "inputs are sent one or two at a time",
            "raise --embedding-batch (256 is the default; the API takes up to 2,048 inputs a request)",
            embedding_calls=fig["calls"],
            chunks=chunks,
        )
    ]


def _scaling(scaling: dict[str, Any], total: int) -> list[dict[str, Any]]:
    fit = scaling.get("fit")
    if not fit or fit["points"] < 4 or fit["exponent"] < QUADRATIC_EXPONENT:
        return []
    return [
        _finding(
            "superlinear_scaling",
            "medium",
            None,
            f"{explain(fit)} ({describe(fit['exponent'])}), so large documents cost far more than their size",
            "something is sent once per chunk and grows with the document: use --context section",
            fit=fit,
        )
    ]


def _slowness(report: dict[str, Any], latency: dict[str, Any]) -> list[dict[str, Any]]:
    if (report.get("run") or {}).get("dry_run"):
        return []  # a dry run's timings are the simulator's
    out = []
    eff = latency.get("effective_concurrency")
    if eff is not None and latency["calls_timed"] >= 20 and eff < 1.5 and (latency.get("busy_s") or 0) > 1:
        configured = latency.get("configured_concurrency")
        limited = latency.get("rate_limited_calls") or 0
        agg = report.get("aggregated") or {}
        if agg.get("retry_wait_s") is not None or agg.get("rate_limit_wait_s") is not None:
            waited = float(agg.get("retry_wait_s") or 0.0) + float(agg.get("rate_limit_wait_s") or 0.0)
        else:
            waited = float(latency.get("retry_wait_s") or 0.0)
        summary = (
            f"calls ran one at a time: effective concurrency {eff:.2f} over {latency['span_s']:.1f} s "
            f"({latency['calls_timed']:,} calls, {latency['busy_s']:.1f} s of request time"
            + (f"; --concurrency was {configured}" if configured is not None else "")
            + ")"
        )
        if limited or waited > 0.2 * (latency.get("span_s") or 0):
            summary += (
                f": the run was rate limited ({limited:,} 429 response(s), {waited:.1f} s spent waiting "
                "before retries and for rate limits, summed over requests)"
            )
            fix = (
                "the API's rate limit held the run back, not --concurrency: set --rpm/--tpm to your "
                "tier's limits so that requests are paced instead of refused, or ask for a higher tier"
            )
        elif configured is not None:
            fix = (
                f"raise --concurrency (this run: {configured}) up to your rate limit; batch embeddings "
                "(--embedding-batch)"
            )
        else:
            fix = (
                "the traced program made its calls one after another: make them concurrently "
                "(e.g. asyncio.gather)"
            )
        out.append(
            _finding(
                "sequential_calls",
                "medium",
                None,
                summary,
                fix,
                **{
                    k: latency[k]
                    for k in ("effective_concurrency", "configured_concurrency", "span_s", "busy_s")
                },
                rate_limited_calls=limited,
            )
        )
    if latency.get("rate_limited_calls"):
        out.append(
            _finding(
                "rate_limited",
                "low",
                None,
                f"{latency['rate_limited_calls']:,} call(s) were rate limited (429); "
                f"{latency['retry_wait_s']:.1f} s spent waiting before retries",
                "lower --concurrency or set --rpm/--tpm to stay under the limit, or ask for a higher rate "
                "limit tier",
                rate_limited_calls=latency["rate_limited_calls"],
                retry_wait_s=latency["retry_wait_s"],
            )
        )
    return out
