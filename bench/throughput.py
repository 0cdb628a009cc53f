"""Throughput under a tokens-per-minute limit, and concurrency against a sequential run.

Runs ``docingest ingest`` (the library entry point, real HTTP) against the local
OpenAI-compatible server with a latency and a TPM limit, twice on the same server settings:
paced with ``--tpm`` at ``--concurrency`` N, then sequentially (concurrency 1). Prints JSON:

- ``tokens_per_minute``: the weight the server admitted (prompt + max_tokens, inputs for
  embeddings: what a TPM limit counts) per minute of wall time;
- ``share_of_limit``: that weight over the most a sliding-window server can admit in that wall
  time when it starts empty (one full window, plus the limit per minute after it), so 100% is
  the best any client can do, and ``share_of_limit_naive`` = tokens per minute / TPM;
- ``http_429``: rate-limit answers (the aim is none);
- the sequential run's wall time and the speedup.

    python bench/throughput.py --corpus ../shared/corpora/langgraph-docs \
        --include 'docs/docs/concepts/**' --tpm 40000 --latency-ms 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from docingest.pipeline import IngestConfig, ingest
from docingest.testing.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def one_run(args: argparse.Namespace, concurrency: int, tpm_client: int | None) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        OpenAIServer(latency=args.latency_ms / 1000, tpm=args.tpm) as server,
    ):
        config = IngestConfig(
            source=args.corpus,
            include=tuple(args.include),
            report=Path(tmp) / "r.json",
            db=Path(tmp) / "kb.sqlite",
            base_url=server.base_url,
            api_key="bench",
            concurrency=concurrency,
            tpm=tpm_client,
            embedding_batch_size=args.embedding_batch,
        )
        start = time.monotonic()
        result = ingest(config)
        wall = time.monotonic() - start
        requests = server.requests
        weight = 0
        for call in (json.loads(line) for line in result.ledger_path.read_text().splitlines()):
            if call["type"] == "call" and call["status"] == "Success":  # what the server's TPM counted
                weight += call["prompt_tokens"] + int(call.get("max_tokens") or 0)
    admitted = [r for r in requests if r.status == 200]
    agg = result.stats.aggregated()
    per_minute = weight / wall * 60
    ceiling = args.tpm * (1 + wall / 60) if args.tpm else None
    return {
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "requests": len(requests),
        "admitted": len(admitted),
        "http_429": sum(1 for r in requests if r.status == 429),
        "failed_calls": agg["total_failed_calls"],
        "tokens_sent": agg["total_tokens_sent_to_apis"],
        "tpm_weight": weight,
        "tokens_per_minute": round(per_minute),
        "share_of_limit": round(weight / ceiling, 4) if ceiling else None,
        "share_of_limit_naive": round(per_minute / args.tpm, 4) if args.tpm else None,
        "rate_limit_wait_s": agg["rate_limit_wait_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "langgraph-docs")
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--tpm", type=int, default=40_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--embedding-batch", type=int, default=32, help="keeps each request under the TPM limit"
    )
    parser.add_argument("--skip-sequential", action="store_true")
    args = parser.parse_args(argv)
    paced = one_run(args, args.concurrency, args.tpm)
    out: dict[str, Any] = {"tpm_limit": args.tpm, "latency_ms": args.latency_ms, "paced": paced}
    if not args.skip_sequential:
        sequential = one_run(args, 1, args.tpm)
        out["sequential"] = sequential
        out["speedup"] = round(sequential["wall_s"] / paced["wall_s"], 2)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
