"""Command line: ``docingest ingest | query | report``. The library raises; this translates."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from docingest import __version__
from docingest.errors import BudgetExceeded, ConfigError, DocingestError

if TYPE_CHECKING:
    from docingest.account import StatsCollector
    from docingest.pipeline import Progress, RunResult

T = TypeVar("T")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", type=Path, metavar="PATH.json", help="write the JSON report here")
    p.add_argument("--html", type=Path, metavar="PATH.html", help="write a self-contained HTML report here")


def _add_price_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--price-file",
        type=Path,
        metavar="PRICES.json",
        help="JSON prices overriding genai-prices, USD per million tokens: "
        '{"model": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docingest",
        description="Ingest documentation into a searchable knowledge base, with an exact ledger "
        "of every token sent to the LLM API.",
    )
    parser.add_argument("--version", action="version", version=f"docingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="ingest a documentation tree (or forecast it with --dry-run)")
    ing.add_argument("source", type=Path, help="a directory or git repository")
    ing.add_argument(
        "--dry-run",
        action="store_true",
        help="make no API call: the transport answers as the API would (also DRY_RUN=true)",
    )
    _add_output_args(ing)
    ing.add_argument(
        "--ledger", type=Path, metavar="PATH.jsonl", help="ledger path (default: beside the report)"
    )
    ing.add_argument("--db", type=Path, default=Path(".docingest/kb.sqlite"), help="knowledge base (SQLite)")
    ing.add_argument("--chat-model", default="gpt-4o-mini")
    ing.add_argument("--embedding-model", default="text-embedding-3-small")
    ing.add_argument("--base-url", help="an OpenAI-compatible API (default: OPENAI_BASE_URL or OpenAI)")
    ing.add_argument("--chunk-tokens", type=int, default=512)
    ing.add_argument("--overlap-tokens", type=int, default=0)
    ing.add_argument("--context", choices=["none", "section", "document"], default="section")
    ing.add_argument("--loader", choices=["smart", "raw"], default="smart")
    ing.add_argument("--include", action="append", default=[], metavar="GLOB")
    ing.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    ing.add_argument("--max-file-bytes", type=int, default=2_000_000)
    ing.add_argument("--summary-tokens", type=int, default=128, help="max_tokens of each summary")
    ing.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: 16)")
    ing.add_argument(
        "--rpm",
        type=int,
        metavar="N",
        help="pace to N requests per minute (x-ratelimit-* headers are also read)",
    )
    ing.add_argument("--tpm", type=int, metavar="N", help="pace to N tokens per minute (prompt + max_tokens)")
    ing.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="budget: prompt tokens sent plus completion tokens; refuse to start when the forecast is "
        "over it, stop before a request would cross it (exit code 3)",
    )
    ing.add_argument("--max-cost", type=float, metavar="USD", help="budget in US dollars, like --max-tokens")
    ing.add_argument("--max-retries", type=int, default=4)
    ing.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    ing.add_argument("--embedding-batch", type=int, default=256, help="inputs per embeddings request")
    _add_price_arg(ing)
    ing.add_argument(
        "--otel",
        action="store_true",
        help="export each call as an OpenTelemetry span to OTEL_EXPORTER_OTLP_ENDPOINT "
        "(automatic when that is set and the otel extra is installed)",
    )

    q = sub.add_parser("query", help="search the knowledge base")
    q.add_argument("text")
    q.add_argument("--db", type=Path, default=Path(".docingest/kb.sqlite"))
    q.add_argument("-k", type=int, default=5, help="how many chunks to show (at least 1)")
    q.add_argument("--embedding-model", default="text-embedding-3-small")
    q.add_argument("--base-url")

    tr = sub.add_parser(
        "trace",
        help="run a Python command unchanged, recording every OpenAI SDK call it makes",
        description="Run COMMAND with every OpenAI SDK client in it recorded (an import hook, no "
        "change to its files), then write the ledger and the report, also when it fails.",
    )
    tr.add_argument(
        "--dry-run",
        action="store_true",
        help="make no API call: the transport answers as the API would (also DRY_RUN=true)",
    )
    _add_output_args(tr)
    tr.add_argument(
        "--ledger", type=Path, metavar="PATH.jsonl", help="ledger path (default: beside the report)"
    )
    tr.add_argument(
        "--otel",
        action="store_true",
        help="export each call as an OpenTelemetry span to OTEL_EXPORTER_OTLP_ENDPOINT "
        "(automatic when that is set and the otel extra is installed)",
    )
    tr.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    rep = sub.add_parser("report", help="rebuild a report from one or more ledgers")
    rep.add_argument("ledgers", type=Path, nargs="+", metavar="LEDGER.jsonl")
    _add_output_args(rep)
    _add_price_arg(rep)

    ana = sub.add_parser(
        "analyze",
        help="explain where the tokens of a run went (several runs: how they grow with size)",
        description="Print the waterfall, cost and findings of each run; with several runs, also how "
        "tokens and calls grow with repository size.",
    )
    ana.add_argument("runs", type=Path, nargs="+", metavar="REPORT.json|LEDGER.jsonl")
    _add_output_args(ana)
    _add_price_arg(ana)

    cmp = sub.add_parser("compare", help="two runs side by side: totals, cost, files that changed most")
    cmp.add_argument("before", type=Path, metavar="BEFORE")
    cmp.add_argument("after", type=Path, metavar="AFTER")
    cmp.add_argument("--top", type=int, default=15, help="files to list")
    cmp.add_argument("--json", type=Path, metavar="PATH.json", help="write the comparison here")
    _add_price_arg(cmp)
    return parser


def _ingest(args: argparse.Namespace, console: Console) -> int:
    from docingest.config import IngestConfig, default_report_path, env_dry_run, redact_url
    from docingest.console import ProgressView, print_summary
    from docingest.cost import PriceTable
    from docingest.pipeline import aingest
    from docingest.report import write_run_report

    config = IngestConfig(
        source=args.source,
        dry_run=args.dry_run or env_dry_run(),
        report=args.report,
        ledger=args.ledger,
        db=args.db,
        chat_model=args.chat_model,
        embedding_model=args.embedding_model,
        base_url=args.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        context=args.context,
        loader=args.loader,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        max_file_bytes=args.max_file_bytes,
        summary_tokens=args.summary_tokens,
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        timeout=args.timeout,
        embedding_batch_size=args.embedding_batch,
        rpm=args.rpm,
        tpm=args.tpm,
        max_tokens=args.max_tokens,
        max_cost=args.max_cost,
        price_file=args.price_file,
    )
    prices = PriceTable.from_file(config.price_file)  # the prices --max-cost was checked with

    def write_outputs(
        stats: StatsCollector, report_path: Path, ledger_path: Path, *, otel: bool
    ) -> dict[str, Any]:
        # streamed from the ledger when the run is too large to hold its chunk details in memory
        report = write_run_report(stats, report_path, prices=prices)
        if otel:
            from docingest.otel import export_if_enabled

            export_if_enabled(ledger_path, explicit=args.otel)
        if args.html:
            from docingest.html import write_html

            write_html(report, args.html)
        print_summary(console, report, report_path=report_path, ledger_path=ledger_path)
        return report

    started: list[StatsCollector] = []  # the run's collector once it has one: an interrupt reports it

    def on_progress(progress: Progress, stats: StatsCollector) -> None:
        if not started:
            started.append(stats)
        view.update(progress, stats)

    terminated: list[int] = []
    result: RunResult | None = None
    with ProgressView(console) as view, contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        result = asyncio.run(_cancel_on_sigterm(aingest(config, on_progress=on_progress), terminated))
    if result is None:  # interrupted: the run's ledger is complete (run_end included)
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        stats = started[0] if started else None
        if stats is None or stats.ledger_path is None:
            console.print(f"{how} before any request was sent", highlight=False)
        else:
            report_path = config.report or default_report_path(stats.run_id)
            write_outputs(stats, report_path, stats.ledger_path, otel=False)
            console.print(
                f"{how}: the ledger {stats.ledger_path} keeps every call made so far, those cut off in "
                "flight included (failed, and counted as sent: the API may have received them), and the "
                f"report {report_path} was written from it; run the same command to go on: finished work "
                "is not sent again",
                highlight=False,
            )
        return 128 + signal.SIGTERM if terminated else 130
    report = write_outputs(result.stats, result.report_path, result.ledger_path, otel=True)
    if result.key_refused:
        console.print(
            f"stopped at the first 401: {result.stopped}, so nothing more was sent; check OPENAI_API_KEY "
            "(a user:password in --base-url replaces it) and run the same command again",
            highlight=False,
        )
        return 4
    if result.stopped is not None:
        console.print(
            f"stopped before the end: {result.stopped}; the work done is stored: run the same command "
            "to go on (the budget counts per run; raise --max-tokens/--max-cost to do more in one run)",
            highlight=False,
        )
        return 3
    agg = report["aggregated"]
    if agg.get("files_loaded", 0) == 0 and config.include:
        console.print(_nothing_included(config.source, config.include, report), highlight=False, markup=False)
        return 2
    if agg.get("files_loaded", 0) == 0:
        console.print(
            f"no documentation files found in {config.source}: docingest selects .md .mdx .markdown .rst "
            ".txt .ipynb"
            + (f" ({agg['files_skipped']} file(s) skipped, listed above)" if agg.get("files_skipped") else "")
            + "; use --include GLOB to select others",
            highlight=False,
        )
        return 2
    if result.failures:
        failed = sum(result.failures.values())
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.failures.items(), key=lambda kv: -kv[1]))
        unreachable = agg["total_successful_calls"] == 0 and all(
            r.startswith(("APIConnectionError", "APITimeoutError")) for r in result.failures
        )
        api = redact_url(config.base_url or "api.openai.com")
        by_type = agg["by_call_type"].values()
        unanswered = agg["total_failed_calls"] - sum(t["calls_not_sent"] for t in by_type)
        if unreachable and unanswered == 0:  # every attempt failed before it left (see sent: false)
            hint = f"no request reached the API at {api}: check --base-url, the network and --timeout"
        elif unreachable:  # sent, but no answer: timed out, or the connection dropped
            how = (
                f"did not answer within --timeout {config.timeout:g} s ({unanswered:,} attempt(s) timed out"
                if all(r.startswith("APITimeoutError") for r in result.failures)
                else f"answered none ({unanswered:,} attempt(s) timed out or lost their connection"
            )
            tokens = sum(t["failed_tokens_sent"] for t in by_type)
            hint = (
                f"the API at {api} {how}; their {tokens:,} tokens count as sent: the API may have received, "
                "and billed, them): check the server, or raise --timeout"
            )
        else:
            hint = (
                "see the findings above and error_details in the report; run the same command to retry "
                "them (finished work is not sent again)"
            )
        console.print(f"{failed:,} request(s) failed for good ({reasons}): {hint}", highlight=False)
        return 4
    return 0


async def _cancel_on_sigterm(work: Awaitable[T], terminated: list[int]) -> T:
    """Await ``work`` with SIGTERM doing what Ctrl-C does under ``asyncio.run``: cancel it, so
    that its cleanup runs (requests in flight recorded, ``run_end`` written, the run's status
    stored). ``terminated`` gets the signal's number. A second SIGTERM is ignored: the cleanup
    is short, and a supervisor that will not wait sends SIGKILL."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_sigterm() -> None:
        if not terminated and task is not None:
            terminated.append(signal.SIGTERM)
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or Windows
        return await work
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _nothing_included(source: Path, include: Sequence[str], report: dict[str, Any]) -> str:
    """Why a run with --include loaded no file: no path matched, or every match was skipped."""
    from docingest.discover import matching

    globs = ", ".join(f"'{glob}'" for glob in include)
    skipped = [s["path"] for s in report.get("skipped_files") or () if s.get("reason") != "dot_directory"]
    matched = matching(include, skipped)
    if matched:
        return (
            f"no file loaded from {source}: the {len(matched)} file(s) the include patterns {globs} match "
            "were all skipped (listed above)"
        )
    return (
        f"no file in {source} matched the include patterns {globs}: --include globs use gitignore syntax "
        "on the path relative to the source, e.g. 'docs/**/*.md' ('*.md' alone matches in every directory)"
    )


def _query(args: argparse.Namespace, console: Console) -> int:
    from docingest.query import search

    hits = search(
        args.text,
        db=args.db,
        k=args.k,
        embedding_model=args.embedding_model,
        base_url=args.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
    )
    if not hits:
        console.print("no embeddings in the knowledge base: run docingest ingest without --dry-run first")
        return 1
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())[:200]
        section = f"  ({' > '.join(hit.heading_path)})" if hit.heading_path else ""
        console.print(
            f"{rank}. {hit.path} #{hit.index}  score {hit.score:.4f}{section}", highlight=False, markup=False
        )
        console.print(f"   {snippet}", highlight=False, markup=False)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from docingest.account import StatsCollector
    from docingest.console import print_summary
    from docingest.cost import PriceTable
    from docingest.report import build_report, write_run_report

    stats = StatsCollector.from_ledger(*args.ledgers)
    prices = PriceTable.from_file(args.price_file)
    if args.report:  # the same path as ingest: streamed from the ledgers for a large run
        report = write_run_report(stats, args.report, prices=prices)
    else:
        report = build_report(stats, prices=prices)
    if args.html:
        from docingest.html import write_html

        write_html(report, args.html)
    print_summary(console, report, report_path=args.report)
    return 0


def _trace(args: argparse.Namespace, console: Console) -> int:
    from docingest.config import env_dry_run
    from docingest.console import print_summary
    from docingest.trace import trace_command

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    result = trace_command(
        command, dry_run=args.dry_run or env_dry_run(), report=args.report, ledger=args.ledger, html=args.html
    )
    from docingest.otel import export_if_enabled

    export_if_enabled(result.ledger_path, explicit=args.otel)
    if result.status != "completed":
        console.print(
            f"the command {result.status} (exit code {result.exit_code}); the ledger keeps "
            "every call it made",
            highlight=False,
        )
    print_summary(console, result.report, report_path=result.report_path, ledger_path=result.ledger_path)
    return result.exit_code


def _analyze(args: argparse.Namespace, console: Console) -> int:
    from docingest.analyse import analyse_runs, load_run
    from docingest.console import print_runs, print_summary
    from docingest.cost import PriceTable
    from docingest.report import write_report

    prices = PriceTable.from_file(args.price_file)
    reports = [load_run(path, prices=prices) for path in args.runs]
    for path, report in zip(args.runs, reports, strict=True):
        console.print(f"== {path}", highlight=False, markup=False)
        print_summary(console, report)
    if len(reports) > 1:
        print_runs(console, analyse_runs(reports, [str(p) for p in args.runs]))
    if args.report:
        write_report(reports[-1], args.report)
    if args.html:
        from docingest.html import write_html

        write_html(reports[-1], args.html)
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    from docingest.analyse import load_run
    from docingest.compare import compare
    from docingest.console import print_compare
    from docingest.cost import PriceTable
    from docingest.report import write_report

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1 (got {args.top})")
    prices = PriceTable.from_file(args.price_file)
    result = compare(load_run(args.before, prices=prices), load_run(args.after, prices=prices), top=args.top)
    print_compare(console, result)
    if args.json:
        write_report(result, args.json)
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    """Outputs that would overwrite each other, an input or a file docingest did not write: refused."""
    from docingest.config import check_outputs
    from docingest.report import is_html_file, is_report_file

    flags = ("report", "html", "ledger", "json") + (("db",) if args.command == "ingest" else ())
    outputs = {f"--{name}": getattr(args, name, None) for name in flags}
    inputs = {"--price-file": getattr(args, "price_file", None)}
    inputs |= {"LEDGER.jsonl": getattr(args, "ledgers", None), "REPORT.json": getattr(args, "runs", None)}
    inputs |= {"BEFORE": getattr(args, "before", None), "AFTER": getattr(args, "after", None)}
    check_outputs(outputs, inputs, replaceable={"--report": is_report_file, "--html": is_html_file})


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = console or Console(stderr=False)
    err = Console(stderr=True, soft_wrap=True)  # a message is never cut into lines
    handlers: dict[str, Any] = {
        "ingest": _ingest,
        "query": _query,
        "report": _report,
        "analyze": _analyze,
        "compare": _compare,
        "trace": _trace,
    }
    try:
        _check_paths(args)
        code: int = handlers[args.command](args, out)
    except BudgetExceeded as exc:
        err.print(Text.assemble(("over budget:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        return 3
    except DocingestError as exc:  # as plain text: markup's escape would still eat the \ of a glob's \[
        err.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:  # a report, ledger or database path that cannot be written
        where = f" {exc.filename}" if exc.filename else ""
        err.print(
            f"[bold red]error:[/bold red] cannot write{escape(where)}: {escape(str(exc.strerror or exc))}; "
            "pass a path in a writable directory (--report, --ledger, --db, --html)",
            highlight=False,
            soft_wrap=True,
        )
        return 2
    except KeyboardInterrupt:  # before a run began (an interrupted run is handled by its command)
        err.print("interrupted", highlight=False)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
