"""Self-contained HTML report (placeholder until the analysis issue lands)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from docingest.report import atomic_write_text


def render_html(report: dict[str, Any]) -> str:
    body = html.escape(json.dumps(report["aggregated"], indent=1))
    return f"<!doctype html><meta charset=utf-8><title>docingest report</title><pre>{body}</pre>"


def write_html(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, render_html(report))
