"""The waterfall: from the tokens of the files on disk to the tokens sent, one named cause a step.

Steps are signed; subtotals (document tokens, raw chunk tokens, tokens sent) are the report's own
totals, and whatever the named steps do not explain is its own step (``unexplained``), never
hidden. Duplicate chunks (same text as an earlier chunk, in any file) are taken out of the
chunk text and shown with everything sent for them as ``duplicate_content``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CHAT = "chat_summary"
EMBED = "create_embedding"

_DROPPED_LABELS = {
    "image_output": "notebook images and base64 data",
    "html_output": "notebook HTML outputs",
    "rich_output": "notebook rich outputs",
    "text_output_truncated": "long notebook text outputs (cut)",
    "front_matter": "front matter",
}


def iter_chunks(report: dict[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(path, index, chunk view) in path then index order."""
    for path, f in sorted(report.get("files", {}).items()):
        for key, c in sorted(f.get("chunks", {}).items(), key=lambda kv: int(kv[0])):
            yield path, int(key), c


def template_tokens_per_call(f: dict[str, Any]) -> int | None:
    """Prompt tokens of a summary call beyond chunk text and context (system prompt, message
    overhead), from the file's plan with ``--context none``."""
    plan = f.get("chat_plan_tokens") or {}
    n = f.get("chunk_count") or 0
    if "none" not in plan or not n:
        return None
    return round((int(plan["none"]) - int(f.get("raw_chunk_tokens") or 0)) / n)


@dataclass(slots=True)
class FileFlow:
    """Per file: how its chat tokens divide up (distinct chunks only)."""

    chunks_called: int = 0
    template: int = 0
    context: int = 0
    retries: int = 0
    embeddings: int = 0
    not_sent: int = 0
    duplicate_sent: int = 0
    duplicate_raw: int = 0


@dataclass(slots=True)
class Flow:
    """The waterfall's figures, and per file ones the findings reuse."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, FileFlow] = field(default_factory=dict)
    duplicates: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # sha -> chunks
    check: dict[str, Any] = field(default_factory=dict)
    summarised_files: list[str] = field(default_factory=list)  # split from file figures, not chunks

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "check": self.check}


def compute(report: dict[str, Any]) -> Flow:
    agg = report["aggregated"]
    flow = Flow()
    seen: dict[str, tuple[str, int]] = {}
    for path, index, c in iter_chunks(report):
        sha = c.get("sha256")
        if sha:
            if sha in seen:
                flow.duplicates.setdefault(sha, [seen[sha]]).append((path, index))
            else:
                seen[sha] = (path, index)
    dup_chunks = {ref for refs in flow.duplicates.values() for ref in refs[1:]}

    files = report.get("files", {})
    for path, index, c in iter_chunks(report):
        ff = flow.files.setdefault(path, FileFlow())
        raw = c.get("raw_chunk_tokens") or 0
        if (path, index) in dup_chunks:
            ff.duplicate_raw += raw
            ff.duplicate_sent += c["total_tokens_sent_to_apis"]
            continue
        # attempts that never left (connection refused...) sent nothing: not a first call, not a retry
        sent = [d for d in c["call_details"] if d.get("sent", True)]
        chat = [d["prompt_tokens"] for d in sent if d["call_type"] == CHAT]
        other = [d["prompt_tokens"] for d in sent if d["call_type"] != CHAT]
        if chat:
            ff.chunks_called += 1
            t = template_tokens_per_call(files[path])
            first = chat[0]
            template = min(t, first - raw) if t is not None else first - raw
            ff.template += template
            ff.context += first - raw - template
            ff.retries += sum(chat[1:])
        else:
            ff.not_sent += raw
        if other:
            ff.embeddings += other[0]
            ff.retries += sum(other[1:])

    # Files whose chunks the report does not carry (a large run's report keeps the chunks of the
    # costliest files only): split their figures with the file's plan; duplicates are not seen.
    mode = ((report.get("run") or {}).get("config") or {}).get("context")
    for path, f in files.items():
        if f.get("chunks") or not f.get("chunk_count"):
            continue
        ff = flow.files.setdefault(path, FileFlow())
        plan = f.get("chat_plan_tokens") or {}
        raw = int(f.get("raw_chunk_tokens") or 0)
        chat_sent = int(f.get("tokens_sent_to_chat_model") or 0)
        planned = int(plan.get(mode, chat_sent)) if mode else chat_sent
        none = int(plan.get("none", planned))
        ff.chunks_called += int(f["chunk_count"])
        ff.template += none - raw
        ff.context += planned - none
        ff.retries += max(chat_sent - planned, 0)
        ff.not_sent += max(planned - chat_sent, 0)
        ff.embeddings += int(f.get("total_tokens_sent_to_apis") or 0) - chat_sent
        flow.summarised_files.append(path)

    def total(attr: str) -> int:
        return sum(getattr(ff, attr) for ff in flow.files.values())

    steps = flow.steps
    raw_total = agg["total_tokens_from_raw_docs"]
    document = agg.get("document_tokens")
    source = agg.get("source_tokens")
    if source is not None and document is not None:
        steps.append(_step("source_tokens", "files as on disk", source, "start"))
        dropped = agg.get("dropped_tokens") or {}
        for category, tokens in sorted(dropped.items(), key=lambda kv: -kv[1]):
            label = "dropped by the loader: " + _DROPPED_LABELS.get(category, category.replace("_", " "))
            steps.append(_step(f"loader_dropped_{category}", label, -tokens))
        markup = source - document - sum(dropped.values())
        if markup:
            steps.append(_step("loader_markup", "dropped by the loader: notebook JSON and markup", -markup))
        steps.append(_step("document_tokens", "document tokens (after loading)", document, "subtotal"))
        steps.append(_step("chunk_overlap", "chunk overlap and boundaries", raw_total - document))
    else:
        steps.append(_step("raw_chunk_tokens_start", "chunk tokens", raw_total, "start"))
    steps.append(_step("raw_chunk_tokens", "raw chunk tokens", raw_total, "subtotal"))
    named = [
        (
            "duplicate_chunk_text",
            "duplicate chunk text (counted below, with all sent for it)",
            -total("duplicate_raw"),
        ),
        (
            "not_sent_to_chat",
            "chunk text not sent to the chat model (cached, not reached, or the connection failed)",
            -total("not_sent"),
        ),
        ("prompt_template", "prompt template and message overhead", total("template")),
        ("context", "context added around chunks", total("context")),
        ("embeddings", "embeddings (chunk text sent to the embedding model)", total("embeddings")),
        ("retries", "retries and repeated attempts", total("retries")),
        ("duplicate_content", "duplicated content sent more than once", total("duplicate_sent")),
        ("unattributed", "calls that belong to no chunk", agg["unattributed"]["tokens_sent"]),
    ]
    for code, label, tokens in named:
        if tokens:
            steps.append(_step(code, label, tokens))
    sent = agg["total_tokens_sent_to_apis"]
    explained = raw_total + sum(tokens for _, _, tokens in named)
    if sent != explained:
        steps.append(_step("unexplained", "not explained by the steps above", sent - explained))
    steps.append(_step("tokens_sent", "tokens sent to the APIs", sent, "total"))
    running = 0
    for s in steps:
        if s["kind"] == "delta":
            running += s["tokens"]
        elif s["kind"] == "start":
            running = s["tokens"]
        s["running"] = running
    flow.check = {
        "sum_of_steps": running,
        "total_tokens_sent_to_apis": sent,
        "exact": running == sent,
        "unexplained_tokens": sent - explained,
        "files_without_chunk_details": len(flow.summarised_files),
    }
    return flow


def _step(code: str, label: str, tokens: int, kind: str = "delta") -> dict[str, Any]:
    return {"step": code, "label": label, "tokens": int(tokens), "kind": kind}
