"""What the terminal shows: progress while a run goes on, a summary table at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from docingest.account import StatsCollector
from docingest.analyse import amplification_text
from docingest.analyse.scaling import explain
from docingest.cost import cost_line, finding_cost
from docingest.pipeline import Progress as RunProgress
from docingest.report import format_figure

_fmt = format_figure


class ProgressView:
    """A rich progress bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(
        self, console: Console, *, get_time: Callable[[], float] = time.monotonic, interval: float = 5.0
    ):
        self.console = console
        self.get_time = get_time
        self.interval = interval
        self._last_line = get_time()
        self.bar: Progress | None = None
        self._files_task: Any = None
        self._calls_task: Any = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                get_time=get_time,
                transient=True,
            )

    def __enter__(self) -> ProgressView:
        if self.bar is not None:
            self.bar.start()
            self._files_task = self.bar.add_task("files", total=None, extra="")
            self._calls_task = self.bar.add_task("calls", total=None, extra="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, progress: RunProgress, stats: StatsCollector) -> None:
        sent = stats.total_tokens_sent
        if self.bar is not None:
            self.bar.update(
                self._files_task,
                total=progress.files_total,
                completed=progress.files_done,
                extra=f"{progress.chunks:,} chunks",
            )
            self.bar.update(
                self._calls_task,
                total=progress.calls_planned or None,
                completed=progress.calls_done,
                extra=f"{sent:,} tokens sent, {stats.total_failed:,} failed",
            )
            return
        now = self.get_time()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.console.print(
                f"files {progress.files_done}/{progress.files_total}  chunks {progress.chunks:,}  "
                f"calls {progress.calls_done:,}/{progress.calls_planned:,}  tokens sent {sent:,}  "
                f"elapsed {stats.elapsed():.1f}s",
                highlight=False,
                soft_wrap=True,  # one line per update in a log, never cut mid-word
            )


def summary_table(report: dict[str, Any]) -> Table:
    agg = report["aggregated"]
    run = report["run"]
    title = "docingest dry run (no API call made)" if run.get("dry_run") else "docingest run"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    # A traced program's run loads no files: its file and chunk figures are meaningless, not zero.
    traced = run.get("mode") == "trace" or not (
        agg.get("files_loaded") or agg.get("files_skipped") or agg.get("chunks")
    )
    file_rows: list[tuple[str, Any]] = [
        ("files loaded / skipped", f"{agg.get('files_loaded', 0):,} / {agg.get('files_skipped', 0):,}"),
        ("chunks", agg.get("chunks")),
        ("source tokens (files as on disk)", agg.get("source_tokens")),
        ("document tokens (after loading)", agg.get("document_tokens")),
        ("raw chunk tokens", agg["total_tokens_from_raw_docs"]),
    ]
    if traced:
        file_rows = [(k, v) for k, v in file_rows if v not in (None, 0, "0 / 0")]
    rows: list[tuple[str, Any]] = [
        *file_rows,
        ("tokens sent to the chat model", agg["total_tokens_sent_to_chat_model"]),
        ("tokens sent to embeddings", agg.get("total_tokens_sent_to_embeddings")),
    ]
    amplification = amplification_text(agg)
    if not (traced and amplification == "unknown"):
        rows.append(("amplification (chat tokens / raw chunk tokens)", amplification))
    for call_type, fig in agg["by_call_type"].items():
        counts = (fig["successful_calls"], fig["failed_calls"], fig.get("retried_calls", 0))
        rows.append((f"{call_type} calls (ok / failed / retried)", " / ".join(f"{n:,}" for n in counts)))
    rows.append(("API calls initiated", agg["total_api_calls_initiated"]))
    summary_tokens = (run.get("config") or {}).get("summary_tokens")
    if run.get("dry_run") and summary_tokens:  # what --max-tokens is checked against
        chat_calls = agg["by_call_type"].get("chat_summary", {}).get("calls", 0)
        worst = agg["total_tokens_sent_to_apis"] + chat_calls * int(summary_tokens)
        rows.append(("forecast for --max-tokens (sent + max completion)", worst))
    if agg.get("billed_prompt_tokens") is not None:
        rows.append(("billed prompt tokens (API usage)", agg["billed_prompt_tokens"]))
    if agg.get("cache_hits"):
        rows.append(
            ("cache hits (tokens saved)", f"{agg['cache_hits']:,} ({agg['tokens_saved_by_cache']:,})")
        )
    if agg.get("files_unchanged"):
        rows.append(("files unchanged (nothing sent)", agg["files_unchanged"]))
    if agg.get("retry_wait_s") or agg.get("rate_limit_wait_s"):
        waits = f"{agg.get('retry_wait_s') or 0:,.2f} s / {agg.get('rate_limit_wait_s') or 0:,.2f} s"
        rows.append(("waited before retries / for rate limits (summed over requests)", waits))
    rows.append(
        ("wall time", f"{agg['wall_time_s']:.2f} s" if agg.get("wall_time_s") is not None else "unknown")
    )
    for label, value in rows:
        table.add_row(label, _fmt(value))
    return table


def print_summary(
    console: Console, report: dict[str, Any], *, report_path: Any = None, ledger_path: Any = None
) -> None:
    console.print(summary_table(report))
    skipped = report.get("skipped_files") or []
    if skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        console.print(
            "skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())), highlight=False
        )
    noted: dict[str, list[str]] = {}
    for path, figures in (report.get("files") or {}).items():
        for note in figures.get("notes") or ():
            noted.setdefault(str(note).split(":", 1)[0], []).append(path)
    for note, paths in sorted(noted.items()):
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        console.print(f"note: {note}: {shown}", highlight=False, markup=False)
    unchanged = report["aggregated"].get("files_unchanged")
    if unchanged:
        loaded = report["aggregated"].get("files_loaded", 0)
        note = " (all of them)" if unchanged == loaded else ""
        console.print(f"files unchanged: {unchanged}{note}", highlight=False)
    print_analysis(console, report)
    if report_path is not None:
        console.print(f"report: {report_path}", highlight=False)
    if ledger_path is not None:
        console.print(f"ledger: {ledger_path}", highlight=False)


def _usd(value: Any) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def waterfall_table(report: dict[str, Any]) -> Table:
    table = Table(title="where the tokens go", title_justify="left", show_header=True)
    table.add_column("step")
    table.add_column("tokens", justify="right")
    table.add_column("running total", justify="right")
    for step in report["waterfall"]["steps"]:
        if step["kind"] in ("start", "subtotal") and not step["tokens"]:
            continue  # e.g. a traced program's run: no file, no chunk token
        bold = step["kind"] != "delta"
        tokens = f"{step['tokens']:,}" if bold else f"{step['tokens']:+,}"
        table.add_row(
            Text(step["label"], style="bold" if bold else ""),
            Text(tokens, style="bold" if bold else ""),
            Text(f"{step['running']:,}", style="dim"),
        )
    return table


def print_analysis(console: Console, report: dict[str, Any]) -> None:
    """The waterfall, the cost and the findings (with their fixes)."""
    if report.get("waterfall"):
        console.print(waterfall_table(report))
    cost = report.get("cost")
    if cost:
        console.print(f"estimated cost: {cost_line(cost)}", highlight=False)
    fit = (report.get("scaling") or {}).get("fit")
    if fit:
        console.print(f"scaling: {explain(fit)}", highlight=False)
    for finding in report.get("findings") or []:
        style = {"high": "bold red", "medium": "yellow", "low": "cyan"}.get(finding["severity"], "dim")
        line = Text()
        line.append(f"{finding['severity']:<6} ", style=style)
        line.append(finding["code"], style="bold")
        if finding.get("tokens") is not None:
            line.append(f"  {finding_cost(finding)}")
        console.print(line)
        console.print(Text("  " + finding.get("summary", "")))
        if finding.get("fix"):
            console.print(Text("  fix: " + finding["fix"], style="green"))


def print_compare(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="before -> after", title_justify="left")
    for name, justify in (("figure", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result["totals"]:
        change = ""
        if row["ratio"] is not None:
            change = f"{row['ratio']:.2f}x"
        elif row["delta"] is not None:
            change = _fmt(row["delta"])
        table.add_row(row["label"], _fmt(row["before"]), _fmt(row["after"]), change)
    console.print(table)
    if result["config_changes"]:
        console.print(
            Text(
                "settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["config_changes"].items())
            )
        )
    files = Table(
        title=f"files whose tokens changed most ({result['files_changed']:,} changed)", title_justify="left"
    )
    for name in ("file", "before", "after", "change"):
        files.add_column(name, justify="left" if name == "file" else "right")
    for f in result["files"]:
        files.add_row(Text(f["path"]), _fmt(f["before"]), _fmt(f["after"]), f"{f['delta']:+,}")
    console.print(files)
    for label, key in (
        ("resolved", "findings_resolved"),
        ("new", "findings_new"),
        ("still there", "findings_kept"),
    ):
        if result[key]:
            console.print(Text(f"findings {label}: {', '.join(result[key])}"))


def print_runs(console: Console, runs: dict[str, Any]) -> None:
    table = Table(title="growth with repository size", title_justify="left")
    for name in ("run", "document tokens", "chunks", "tokens sent", "calls", "sent / document token"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for row in runs["runs"]:
        table.add_row(
            Text(row["name"]),
            _fmt(row["document_tokens"]),
            _fmt(row["chunks"]),
            _fmt(row["tokens_sent"]),
            _fmt(row["calls"]),
            _fmt(row["tokens_per_document_token"]),
        )
    console.print(table)
    for key, label in (("tokens_vs_size", "tokens sent"), ("calls_vs_size", "API calls")):
        fit = runs.get(key)
        if fit:
            spread = f" ± {fit['stderr']:.2f}" if fit.get("stderr") is not None else ""
            console.print(
                f"{label} grow as repository size^{fit['exponent']:.2f}{spread} ({fit['growth']})",
                highlight=False,
            )
