"""Writing and checking the JSON report (schema-versioned; the schema ships in the package)."""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from docingest.account import StatsCollector
from docingest.cost import PriceTable
from docingest.errors import LedgerError


@cache
def report_schema() -> dict[str, Any]:
    text = resources.files("docingest").joinpath("schema/report.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when the report does not match the shipped schema."""
    import jsonschema

    jsonschema.validate(report, report_schema())


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename: a reader never sees half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_report(stats: StatsCollector, *, prices: PriceTable | None = None) -> dict[str, Any]:
    """The report with its analysis (waterfall, findings, scaling, latency, cost)."""
    from docingest.analyse import apply_analysis

    return apply_analysis(stats.report(), prices=prices)


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, ensure_ascii=False, indent=1) + "\n")


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read report {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") is None:
        raise LedgerError(f"{path} is not a docingest report (no schema_version)")
    return data
