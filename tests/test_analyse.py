"""Analysis on small real runs (dry runs of the real pipeline): waterfall, findings, scaling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docingest.account import StatsCollector
from docingest.analyse import analyse_runs, load_run
from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report, validate_report
from docingest.simulate import SimOptions
from docingest.tokens import TokenCounter

COUNTER = TokenCounter("o200k_base")


def markdown_doc(tokens: int, *, seed: str = "w", sections: bool = True) -> str:
    """A Markdown document of about ``tokens`` tokens: paragraphs of distinct sentences, in
    sections of 12 paragraphs (or under the title only)."""
    parts: list[str] = []
    i = 0
    while True:
        if sections and i % 12 == 0:
            parts.append(f"\n## Section {seed} {i // 12}\n\n")
        parts.append(
            f"Option {seed}{i} sets how the scheduler {seed} retries node {i} after a timeout of {i % 97} "
            f"seconds, and logs the attempt under key {seed}-{i * 7}.\n\n"
        )
        i += 1
        if i % 20 == 0 and COUNTER.count("".join(parts)) >= tokens:
            return "# Guide\n" + "".join(parts)


def run(
    tmp_path: Path,
    files: dict[str, str | bytes],
    name: str = "run",
    sim: SimOptions | None = None,
    **config: Any,
) -> dict[str, Any]:
    src = tmp_path / f"{name}-src"
    for rel, content in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    cfg = IngestConfig(source=src, dry_run=True, report=tmp_path / f"{name}.json", **config)
    result = ingest(cfg, sim_options=sim)
    report = build_report(result.stats)
    validate_report(report)
    return report


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, f"no {code} finding in {[f['code'] for f in report['findings']]}"
    return found[0]


def assert_waterfall_exact(report: dict[str, Any]) -> None:
    agg = report["aggregated"]
    steps = report["waterfall"]["steps"]
    running = 0
    for s in steps:
        if s["kind"] == "start":
            running = s["tokens"]
        elif s["kind"] == "delta":
            running += s["tokens"]
        else:
            assert s["tokens"] == running, s
    by = {s["step"]: s["tokens"] for s in steps}
    assert by["tokens_sent"] == agg["total_tokens_sent_to_apis"]
    assert by["raw_chunk_tokens"] == agg["total_tokens_from_raw_docs"]
    if agg.get("document_tokens") is not None:
        assert by["document_tokens"] == agg["document_tokens"]
        assert by["source_tokens"] == agg["source_tokens"]
    assert report["waterfall"]["check"]["exact"]


def test_whole_document_context_is_the_top_finding_with_the_saving_of_section(tmp_path: Path) -> None:
    doc = markdown_doc(20_000, sections=False)
    doc_tokens = COUNTER.count(doc)
    assert 19_500 <= doc_tokens <= 21_000
    files = {"guide.md": doc}
    report = run(tmp_path, files, "doc", chunk_tokens=500, context="document")
    agg = report["aggregated"]
    assert 36 <= agg["chunks"] <= 46
    ratio = agg["total_tokens_sent_to_chat_model"] / doc_tokens
    assert agg["chunks"] - 1 <= ratio <= agg["chunks"] + 2  # about one whole document per chunk
    top = report["findings"][0]
    assert top["code"] == "context_document"
    assert top["severity"] == "high"
    context = next(s["tokens"] for s in report["waterfall"]["steps"] if s["step"] == "context")
    assert top["tokens"] == context
    assert top["tokens"] >= agg["chunks"] * doc_tokens * 0.99
    assert top["cost_usd"] == pytest.approx(top["tokens"] * 0.15 / 1e6, rel=1e-4)
    row = top["evidence"]["files"][0]
    assert (
        row["path"] == "guide.md"
        and row["chunks_x_document_tokens"] == agg["chunks"] * row["document_tokens"]
    )
    # The saving of --context section, computed from the same plan, is what a section run saves.
    section = run(tmp_path, files, "section", chunk_tokens=500, context="section")
    saved = agg["total_tokens_sent_to_chat_model"] - section["aggregated"]["total_tokens_sent_to_chat_model"]
    assert top["evidence"]["saving_with_section_context"] == saved
    assert f"{saved:,}" in top["fix"] and "--context section" in top["fix"]
    assert not [f for f in section["findings"] if f["code"] == "context_document"]
    assert_waterfall_exact(report)
    assert_waterfall_exact(section)


def notebook_with_png(png: bytes) -> str:
    import base64

    cells = [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": ["# Plotting\n", "We draw the latency histogram.\n"],
        },
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": 1,
            "source": ["import matplotlib.pyplot as plt\n", "plt.hist(latencies)\n"],
            "outputs": [
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"image/png": base64.b64encode(png).decode(), "text/plain": ["<Figure>"]},
                }
            ],
        },
    ]
    nb = {
        "cells": cells,
        "metadata": {"language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1)


def test_notebook_base64_output_raw_vs_smart_loader(tmp_path: Path, make_png: Any) -> None:
    nb = notebook_with_png(make_png(120, 120))
    raw = run(tmp_path, {"plot.ipynb": nb}, "raw", loader="raw")
    f = finding(raw, "non_text_payload")
    row = f["evidence"]["files"][0]
    assert row["path"] == "plot.ipynb"
    # Nearly all of the notebook's tokens are the image's base64.
    assert row["payload_share"] > 0.9
    assert row["by_category"]["image_output"] == row["payload_tokens"]
    assert f["tokens"] > 0.9 * raw["aggregated"]["total_tokens_sent_to_apis"]
    assert "--loader smart" in f["fix"]
    smart = run(tmp_path, {"plot.ipynb": nb}, "smart")
    assert (
        smart["aggregated"]["total_tokens_sent_to_apis"]
        < 0.05 * raw["aggregated"]["total_tokens_sent_to_apis"]
    )
    dropped = finding(smart, "loader_dropped_payload")
    assert dropped["severity"] == "info"
    assert dropped["evidence"]["by_category"]["image_output"] == row["by_category"]["image_output"]
    assert not [x for x in smart["findings"] if x["code"] == "non_text_payload"]
    assert_waterfall_exact(raw)
    assert_waterfall_exact(smart)
    step = {s["step"]: s["tokens"] for s in smart["waterfall"]["steps"]}
    assert step["loader_dropped_image_output"] == -row["by_category"]["image_output"]


def test_lockfiles_and_minified_are_skipped_with_tokens_avoided(tmp_path: Path) -> None:
    lock = json.dumps(
        {
            "name": "app",
            "lockfileVersion": 3,
            "packages": {
                f"node_modules/p{i}": {"version": f"1.{i}.0", "integrity": f"sha512-{'ab' * 40}{i}"}
                for i in range(200)
            },
        },
        indent=2,
    )
    poetry = "".join(
        f'[[package]]\nname = "pkg{i}"\nversion = "0.{i}.1"\noptional = false\n\n' for i in range(150)
    )
    minjs = "!function(){" + ";".join(f"var a{i}=function(b){{return b*{i}}}" for i in range(300)) + "}();"
    files = {
        "README.md": "# App\n\nHow to run the app.\n",
        "package-lock.json": lock,
        "poetry.lock": poetry,
        "static/app.min.js": minjs,
    }
    report = run(tmp_path, files)
    skipped = {s["path"]: s for s in report["skipped_files"]}
    assert skipped["package-lock.json"]["reason"] == "lockfile"
    assert skipped["poetry.lock"]["reason"] == "lockfile"
    assert skipped["static/app.min.js"]["reason"] == "minified"
    for path in ("package-lock.json", "poetry.lock", "static/app.min.js"):
        assert skipped[path]["source_tokens"] == COUNTER.count(files[path])
    f = finding(report, "skipped_generated")
    assert f["tokens"] == sum(
        COUNTER.count(files[p]) for p in ("package-lock.json", "poetry.lock", "static/app.min.js")
    )
    assert {r["path"] for r in f["evidence"]["files"]} == {
        "package-lock.json",
        "poetry.lock",
        "static/app.min.js",
    }
    assert report["aggregated"]["files_loaded"] == 1


def test_overlap_factor_about_five_is_a_finding(tmp_path: Path) -> None:
    text = markdown_doc(10_000, sections=False)
    report = run(tmp_path, {"notes.md": text}, chunk_tokens=1000, overlap_tokens=800)
    agg = report["aggregated"]
    factor = agg["total_tokens_from_raw_docs"] / agg["document_tokens"]
    f = finding(report, "chunk_overlap")
    assert f["evidence"]["overlap_factor"] == pytest.approx(factor, abs=1e-3)
    # A stride of 1000 - 800 = 200 tokens repeats each token 5 times, less at the document's ends.
    assert 4.0 <= factor <= 5.2
    assert f["severity"] == "high"
    assert (
        f["evidence"]["repeated_chunk_tokens"] == agg["total_tokens_from_raw_docs"] - agg["document_tokens"]
    )
    assert "--overlap-tokens" in f["fix"]
    assert_waterfall_exact(report)
    no_overlap = run(tmp_path, {"notes.md": text}, "plain", chunk_tokens=1000)
    assert not [x for x in no_overlap["findings"] if x["code"] == "chunk_overlap"]


def test_three_copies_of_a_readme_are_duplicate_content(tmp_path: Path) -> None:
    readme = markdown_doc(1_500, seed="r")
    paths = ["README.md", "docs/README.md", "site/intro/README.md"]
    files: dict[str, str | bytes] = dict.fromkeys(paths, readme)
    files["other.md"] = markdown_doc(800, seed="o")
    report = run(tmp_path, files)
    f = finding(report, "duplicate_content")
    assert f["evidence"]["paths"] == sorted(paths)
    dup_files = f["evidence"]["duplicate_files"]
    assert dup_files[0]["paths"] == sorted(paths)
    # The first copy (in path order) is the original; everything sent for the others is extra.
    extra = sum(report["files"][p]["total_tokens_sent_to_apis"] for p in paths[1:])
    assert extra > 1.9 * report["files"]["README.md"]["raw_chunk_tokens"]
    assert f["tokens"] == extra
    assert dup_files[0]["tokens_sent_for_extra_copies"] == extra
    assert f["evidence"]["chunks"][0]["copies"] == 3
    steps = {s["step"]: s["tokens"] for s in report["waterfall"]["steps"]}
    assert steps["duplicate_content"] == extra
    assert steps["duplicate_chunk_text"] == -2 * report["files"]["README.md"]["raw_chunk_tokens"]
    assert_waterfall_exact(report)


def test_failed_calls_context_window_exceeded(tmp_path: Path) -> None:
    sim = SimOptions(context_windows={"gpt-4o-mini": 1500})
    files: dict[str, str | bytes] = {"big.md": markdown_doc(3_000), "small.md": "# Small\n\nA short page.\n"}
    report = run(tmp_path, files, sim=sim, context="document")
    f = finding(report, "failed_calls")
    failed = report["aggregated"]["by_call_type"]["chat_summary"]
    assert failed["failed_calls"] > 0
    assert f["tokens"] == failed["failed_tokens_sent"]
    assert "context_length_exceeded" in json.dumps(f["evidence"]["by_error"])
    assert {c["path"] for c in f["evidence"]["chunks"]} == {"big.md"}
    assert f["cost_usd"] == 0.0  # the API bills no request it rejects
    chat_cost = report["cost"]["by_call_type"]["chat_summary"]
    assert chat_cost["input_tokens"] == failed["tokens_sent"] - failed["failed_tokens_sent"]
    assert_waterfall_exact(report)


def test_quadratic_scaling_detected_across_files(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        f"d{n}.md": markdown_doc(n, seed=f"s{n}") for n in (300, 800, 2_000, 5_000)
    }
    doc = run(tmp_path, files, "doc", chunk_tokens=200, context="document")
    sec = run(tmp_path, files, "sec", chunk_tokens=200, context="section")
    fit_doc = doc["scaling"]["fit"]
    fit_sec = sec["scaling"]["fit"]
    assert fit_doc["points"] == 4 and fit_doc["exponent"] > 1.6
    assert 0.85 <= fit_sec["exponent"] <= 1.15
    f = finding(doc, "superlinear_scaling")
    assert f["evidence"]["fit"]["exponent"] == fit_doc["exponent"]
    assert not [x for x in sec["findings"] if x["code"] == "superlinear_scaling"]
    # Across runs: a small and a large repository, tokens grow about linearly with size.
    small = run(tmp_path, {"a.md": markdown_doc(1_000, seed="a")}, "small")
    large = run(tmp_path, {f"b{i}.md": markdown_doc(1_000, seed=f"b{i}") for i in range(8)}, "large")
    growth = analyse_runs([large, small], ["large", "small"])
    assert [r["name"] for r in growth["runs"]] == ["small", "large"]
    assert 0.9 <= growth["tokens_vs_size"]["exponent"] <= 1.1
    assert growth["calls_vs_size"]["growth"] == "linear"


def _ledger(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "hand.ledger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_retries_rate_limits_and_billed_mismatch_from_a_ledger(tmp_path: Path) -> None:
    """A ledger in docingest's format (e.g. from another process) is analysed the same way."""
    records: list[dict[str, Any]] = [
        {
            "type": "run_start",
            "run_id": "r1",
            "dry_run": False,
            "chat_model": "gpt-4o-mini",
            "embedding_model": "text-embedding-3-small",
            "config": {"concurrency": 4, "summary_tokens": 100},
        },
        {
            "type": "file",
            "path": "a.md",
            "source_tokens": 300,
            "document_tokens": 300,
            "dropped_tokens": {},
            "chat_plan_tokens": {"none": 360, "section": 400, "document": 660},
        },
    ]
    for i in range(3):
        records.append(
            {"type": "chunk", "path": "a.md", "index": i, "raw_chunk_tokens": 100, "sha256": f"h{i}"}
        )
    seq = 0
    t = 0.0
    for i in range(3):
        attempts = [429, 429, 200] if i == 0 else [200]
        for attempt, status in enumerate(attempts):
            seq += 1
            ok = status == 200
            records.append(
                {
                    "type": "call",
                    "call_type": "chat_summary",
                    "attempt": attempt,
                    "seq": seq,
                    "status": "Success" if ok else "Fail",
                    "http_status": status,
                    "prompt_tokens": 133,
                    "chunks": [["a.md", i, 133]],
                    "t_s": t,
                    "latency_s": 0.5,
                    "billed": {"prompt_tokens": 140, "completion_tokens": 50} if ok else None,
                    **({} if ok else {"error_details": "429 rate_limit_exceeded: slow down"}),
                }
            )
            t += 2.0
    records.append({"type": "run_end", "run_id": "r1", "wall_time_s": t, "status": "completed"})
    path = _ledger(tmp_path, records)
    report = load_run(path)
    validate_report(report)
    retried = finding(report, "retried_calls")
    assert retried["tokens"] == 2 * 133
    assert retried["evidence"]["failed_by_status"] == {"429": 2}
    assert not [f for f in report["findings"] if f["code"] == "failed_calls"]  # the retry succeeded
    mismatch = finding(report, "billed_mismatch")
    assert mismatch["evidence"]["billed_prompt_tokens"] == 3 * 140
    assert mismatch["evidence"]["counted_prompt_tokens"] == 3 * 133
    assert mismatch["evidence"]["relative_difference"] == pytest.approx(7 / 133, abs=1e-4)
    above = finding(report, "calls_above_plan")
    assert above["evidence"]["planned_calls"] == 3 and above["evidence"]["actual_calls"] == 5
    lat = report["latency"]
    assert lat["rate_limited_calls"] == 2
    assert lat["retry_wait_s"] == pytest.approx(3.0)  # two gaps of 1.5 s between attempts
    assert lat["effective_concurrency"] == pytest.approx(2.5 / 8.5, abs=1e-3)
    assert finding(report, "rate_limited")["evidence"]["retry_wait_s"] == pytest.approx(3.0)
    seq_f = [f for f in report["findings"] if f["code"] == "sequential_calls"]
    assert seq_f == []  # only 5 calls: too few to call the run sequential
    steps = {s["step"]: s["tokens"] for s in report["waterfall"]["steps"]}
    assert steps["prompt_template"] == 3 * 20 and steps["context"] == 3 * 13 and steps["retries"] == 2 * 133
    assert_waterfall_exact(report)
    # The cost uses the billed figures: 420 input, 150 output tokens of gpt-4o-mini.
    chat = report["cost"]["by_call_type"]["chat_summary"]
    assert chat["input_tokens"] == 420 and chat["output_tokens"] == 150 and not chat["output_estimated"]
    assert chat["total_usd"] == pytest.approx(420 * 0.15e-6 + 150 * 0.6e-6)


def test_report_command_and_live_report_agree(tmp_path: Path) -> None:
    report = run(
        tmp_path, {"a.md": markdown_doc(1_200), "b.md": markdown_doc(700, seed="b")}, context="document"
    )
    rebuilt = build_report(StatsCollector.from_ledger(tmp_path / "run.ledger.jsonl"))
    for key in ("waterfall", "findings", "scaling", "cost"):
        assert rebuilt[key] == report[key], key


def test_waterfall_stays_exact_for_files_without_chunk_details(tmp_path: Path) -> None:
    """A large run's report carries the chunks of its costliest files only."""
    from docingest.analyse import apply_analysis

    other = markdown_doc(900, seed="b").replace("# Guide", "# Other guide")
    files: dict[str, str | bytes] = {"a.md": markdown_doc(2_000), "b.md": other}
    full = run(tmp_path, files, context="document", chunk_tokens=300)
    slim = json.loads(json.dumps(full))
    for key in ("waterfall", "findings", "scaling", "latency", "cost"):
        slim.pop(key)
    del slim["files"]["b.md"]["chunks"]
    apply_analysis(slim)
    assert slim["waterfall"]["check"]["exact"] and slim["waterfall"]["check"]["unexplained_tokens"] == 0
    assert slim["waterfall"]["check"]["files_without_chunk_details"] == 1
    steps_full = {s["step"]: s["tokens"] for s in full["waterfall"]["steps"]}
    steps_slim = {s["step"]: s["tokens"] for s in slim["waterfall"]["steps"]}
    assert steps_slim == steps_full  # the file's plan splits its tokens exactly as its chunks do
    assert finding(slim, "context_document")["tokens"] == finding(full, "context_document")["tokens"]
