"""Dry-run wall time and peak memory at scale: 100 MB and 1 GB of generated docs.

    python bench/scale.py                      # generates the corpora under /tmp/docingest-bench
    python bench/scale.py --sizes 100MB        # only one size
    python bench/scale.py --corpus DIR ...     # existing corpora instead

Each dry run is its own ``docingest ingest --dry-run`` process; its peak RSS is the child's
``ru_maxrss`` (the largest resident set it ever had). Results go to ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_corpus import _unit, generate  # noqa: E402

WORK = Path(os.environ.get("DOCINGEST_BENCH_DIR", "/tmp/docingest-bench"))


def corpus_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def dry_run(corpus: Path, out: Path) -> dict[str, object]:
    """One dry run in a fresh process: wall time, peak RSS, and the report's headline figures."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / f"{corpus.name}.json"
    cmd = [sys.executable, "-m", "docingest", "ingest", str(corpus), "--dry-run", "--report", str(report)]
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: measured alone (ru_maxrss of a waited-for child is its own peak)
        os.close(1)
        os.open(os.devnull, os.O_WRONLY)
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dry run of {corpus} failed: {subprocess.list2cmdline(cmd)}")
    with open(report, encoding="utf-8") as fh:  # headline figures: read the start only
        head = fh.read(1 << 20)
    agg_start = head.find('"aggregated"')
    agg = json.JSONDecoder().raw_decode(head, head.index("{", agg_start))[0] if agg_start >= 0 else {}
    return {
        "corpus": str(corpus),
        "bytes": corpus_bytes(corpus),
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "chunks": agg.get("chunks"),
        "api_calls": agg.get("total_api_calls_initiated"),
        "source_tokens": agg.get("source_tokens"),
        "tokens_sent": agg.get("total_tokens_sent_to_apis"),
        "report_mb": round(report.stat().st_size / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["100MB", "1GB"])
    parser.add_argument("--corpus", nargs="*", type=Path, default=[])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    corpora = list(args.corpus)
    for size in args.sizes if not corpora else []:
        target = WORK / f"corpus-{size.lower()}"
        if not target.exists():
            print(f"generating {size} under {target} ...", flush=True)
            generate(target, _unit(size), seed=len(size))
        corpora.append(target)
    rows = []
    for corpus in corpora:
        row = dry_run(corpus, WORK / "scale-reports")
        print(json.dumps(row), flush=True)
        rows.append(row)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        size_ratio = int(b["bytes"]) / int(a["bytes"])  # type: ignore[call-overload]
        print(
            f"size x{size_ratio:.1f}: wall x{float(b['wall_s']) / float(a['wall_s']):.1f}, "  # type: ignore[arg-type]
            f"peak RSS x{float(b['peak_rss_mb']) / float(a['peak_rss_mb']):.2f}"  # type: ignore[arg-type]
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
