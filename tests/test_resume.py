"""A run killed with SIGKILL half way is continued by running the same command again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from docingest.ledger import read_ledger
from docingest.testing.openai_server import OpenAIServer

FILES = 40


def write_tree(root: Path) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    for i in range(FILES):
        body = " ".join(f"r{i}w{j}" for j in range(60))
        (src / f"doc{i:02d}.md").write_text(f"# Doc {i}\n\n{body}\n")
    return src


def test_sigkill_half_way_then_the_same_command_finishes_without_paying_twice(tmp_path):
    src = write_tree(tmp_path)
    db = tmp_path / "kb.sqlite"
    with OpenAIServer(latency=0.1) as server:
        command = [
            sys.executable, "-m", "docingest", "ingest", str(src),
            "--db", str(db), "--report", str(tmp_path / "run.json"), "--concurrency", "4",
        ]  # fmt: skip
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"}
        env.pop("DRY_RUN", None)
        killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(server.requests) < FILES // 2:  # half of the summaries answered
            assert killed.poll() is None, killed.stderr.read() if killed.stderr else ""
            assert time.monotonic() < deadline, "the run did not get half way"
            time.sleep(0.005)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        assert killed.returncode == -signal.SIGKILL
        if killed.stderr:
            killed.stderr.close()
        first = tmp_path / "run.ledger.jsonl"
        first_records = list(read_ledger(first))  # intact up to its last record
        assert first_records[0]["type"] == "run_start"
        assert all(r["type"] != "run_end" for r in first_records)
        first_calls = [r for r in first_records if r["type"] == "call"]
        assert 0 < len(first_calls) < FILES + 1

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
    ledgers = sorted(tmp_path.glob("run*.ledger.jsonl"))
    assert len(ledgers) == 2  # the second run wrote its own ledger
    second = next(p for p in ledgers if p != first)
    second_records = list(read_ledger(second))
    assert second_records[-1]["type"] == "run_end" and second_records[-1]["status"] == "completed"
    second_calls = [r for r in second_records if r["type"] == "call"]

    # together, the two ledgers sent each chunk's successful work exactly once
    done = Counter(
        (c[0], c[1], r["call_type"])
        for r in first_calls + second_calls
        if r["status"] == "Success"
        for c in r["chunks"]
    )
    assert len(done) == 2 * FILES
    assert set(done.values()) == {1}, [k for k, v in done.items() if v > 1]
    # the second run only sent what the first had not finished
    hits = [r for r in second_records if r["type"] == "cache_hit"]
    assert len(hits) + sum(len(r["chunks"]) for r in second_calls if r["status"] == "Success") == 2 * FILES

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT count(*), count(summary_key), count(embedding_key) FROM chunks"
        ).fetchone()
        (dupes,) = conn.execute(
            "SELECT count(*) FROM (SELECT path, idx FROM chunks GROUP BY 1, 2 HAVING count(*) > 1)"
        ).fetchone()
        (documents,) = conn.execute("SELECT count(*) FROM documents").fetchone()
        orphans = conn.execute(
            "SELECT count(*) FROM chunks c LEFT JOIN summaries s ON s.key = c.summary_key"
            " WHERE c.summary_key IS NOT NULL AND s.key IS NULL"
        ).fetchone()
    assert rows == (FILES, FILES, FILES)
    assert dupes == 0 and documents == FILES and orphans == (0,)

    # the two ledgers merge into one report
    merged = subprocess.run(
        [
            sys.executable,
            "-m",
            "docingest",
            "report",
            str(first),
            str(second),
            "--report",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert merged.returncode == 0, merged.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["aggregated"]["total_api_calls_initiated"] == len(first_calls) + len(second_calls)
