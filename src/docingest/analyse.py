"""Findings that explain where tokens go (amplification, waste) and how to avoid it."""

from __future__ import annotations

from typing import Any


def findings_for(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of one report, most costly first."""
    agg = report["aggregated"]
    findings: list[dict[str, Any]] = []
    amp = agg.get("amplification")
    if amp is not None and amp > 3:
        findings.append(
            {
                "code": "chat_amplification",
                "severity": "high" if amp > 10 else "medium",
                "tokens": agg["total_tokens_sent_to_chat_model"] - agg["total_tokens_from_raw_docs"],
                "summary": f"the chat model was sent {amp:.1f}x the tokens of the chunks it summarized",
                "fix": "use --context section (default) or none instead of --context document",
            }
        )
    return findings
