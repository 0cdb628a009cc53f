"""Writing and checking the JSON report (schema-versioned; the schema ships in the package)."""

from __future__ import annotations

import json
import os
import re
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


def format_figure(value: Any) -> str:
    """A figure as people read it: thousands separated, ``unknown`` for None."""
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, for the rename), with the mode that
    ``open()`` would give ``path`` rather than mkstemp's private 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename: a reader never sees half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
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
    schema = report_schema()
    version = schema["properties"]["schema_version"]["const"]
    if data["schema_version"] != version or isinstance(data["schema_version"], bool):
        raise LedgerError(
            f"{path} is a report of schema_version {data['schema_version']!r}; this docingest reads "
            f"version {version}: upgrade docingest, or rebuild the report from its ledger "
            "(docingest report LEDGER.jsonl)"
        )
    import jsonschema

    # checked against the schema: all but the files (the bulk), which need their figures
    files = data.get("files")
    try:
        jsonschema.validate({**data, "files": {}}, schema)
        if not isinstance(files, dict):
            raise jsonschema.ValidationError(f"{files!r:.40} is not of type 'object'", path=["files"])
        required = schema["properties"]["files"]["additionalProperties"]["required"]
        for name, view in files.items():
            missing = [key for key in required if not isinstance(view, dict) or key not in view]
            if missing:
                raise jsonschema.ValidationError(
                    f"{missing[0]!r} is a required property", path=["files", name]
                )
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "top level"
        raise LedgerError(
            f"{path} is not a complete docingest report ({where}: {exc.message}): rebuild it from its "
            "ledger (docingest report LEDGER.jsonl)"
        ) from exc
    from docingest.config import redact_run

    data["run"] = redact_run(data["run"])
    return data


_REPORT_HEAD = re.compile(r'\{\s*"schema_version"\s*:')


def _head(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return ""


def is_report_file(path: Path) -> bool:
    """Whether ``path`` starts as a docingest JSON report does (which a new report may replace)."""
    return _REPORT_HEAD.match(_head(path)) is not None


def is_html_file(path: Path) -> bool:
    """Whether ``path`` starts as a docingest HTML report does (which a new one may replace)."""
    head = _head(path)
    return head.startswith("<!doctype html>") and "<title>docingest " in head


#: With a large run, the analysis sees every file's figures but the chunks of only this many files
#: (those that sent the most tokens).
ANALYSIS_TOP_FILES = 200


def write_run_report(
    stats: StatsCollector,
    path: Path,
    *,
    prices: PriceTable | None = None,
    top_files: int = ANALYSIS_TOP_FILES,
) -> dict[str, Any]:
    """Write the report of a run to ``path`` and return it (what summaries and HTML are made from).

    A small run's report is built in memory. When the collector has stopped holding per-chunk
    details (``StatsCollector.detailed`` is false: a large run), the report is streamed: each
    file's chunks are rebuilt from the ledger through a temporary SQLite index, one file at a
    time, so memory stays flat in corpus size. The report returned then carries every file's
    figures but the chunks of only the ``top_files`` files that sent the most tokens (the
    analysis is computed from that); the file on disk has them all.
    """
    if stats.detailed:
        report = build_report(stats, prices=prices)
        write_report(report, path)
        return report
    from docingest.analyse import apply_analysis
    from docingest.spill import ChunkDetails

    path.parent.mkdir(parents=True, exist_ok=True)
    with ChunkDetails(stats.ledger_paths, directory=path.parent) as details:
        report = stats.report()
        files: dict[str, Any] = report["files"]
        by_tokens = sorted(files, key=lambda p: -int(files[p].get("total_tokens_sent_to_apis") or 0))
        top = set(by_tokens[:top_files])
        for p in top:
            files[p]["chunks"] = details.chunks(p)
        apply_analysis(report, prices=prices)
        fd, tmp = _temp_beside(path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("{")
                for n, (key, value) in enumerate(report.items()):
                    fh.write(("," if n else "") + f"\n{json.dumps(key)}: ")
                    if key != "files":
                        fh.write(json.dumps(value, ensure_ascii=False))
                        continue
                    fh.write("{")
                    for m, (p, view) in enumerate(sorted(value.items())):
                        if p not in top:
                            view = {**view, "chunks": details.chunks(p)}
                        fh.write(("," if m else "") + f"\n{json.dumps(p, ensure_ascii=False)}: ")
                        fh.write(json.dumps(view, ensure_ascii=False))
                    fh.write("}")
                fh.write("\n}\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return report
