"""The JSONL ledger: one JSON object per line, appended and flushed as things happen.

The ledger is the source of truth of a run. Record types:

- ``run_start``  run id, time, dry_run flag, source, config, models, tokenizer
- ``file``       one loaded file: its token levels, what the loader dropped, notes
- ``chunk``      one chunk: ``raw_chunk_tokens`` and content hash
- ``skip``       a file passed over, with its reason
- ``call``       one HTTP attempt: type, model, status, computed and billed tokens, chunk shares
                 (an attempt that failed before the request left, e.g. connection refused, has
                 ``sent: false``, 0 prompt tokens and chunk shares, and ``tokens_not_sent``)
- ``unsent``     a request the planner refused to send (over an API limit), with its reason
- ``cache_hit``  work found already done (same model, prompt and input) and not sent again
- ``run_end``    end time, wall time, status

A killed run leaves every record written before the kill; a torn last line is ignored on read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from docingest.errors import LedgerError

LEDGER_VERSION = 1


class LedgerWriter:
    """Appends records to a JSONL file, flushing each one to the OS before returning."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._fsync = fsync

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._fh is None:
                raise LedgerError(f"ledger {self.path} is closed")
            self._fh.write(line + "\n")
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_ledger(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a ledger; a torn final line (killed writer) is skipped."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from exc
    with fh:
        pending: str | None = None
        lineno = 0
        for raw in fh:
            if pending is not None:
                hint = (
                    f": it looks like a report; its ledger is {path.with_suffix('')}.ledger.jsonl"
                    if lineno == 1 and pending.startswith("{") and path.suffix == ".json"
                    else "; is this a docingest ledger?"
                )
                raise LedgerError(f"{path}:{lineno}: not a JSON record{hint}")
            lineno += 1
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if not raw.endswith("\n"):  # torn last line of a killed run
                    return
                pending = line
                continue
            if not isinstance(record, dict) or "type" not in record:
                raise LedgerError(f"{path}:{lineno}: not a docingest ledger record")
            yield record
        # a bad line followed by nothing is a torn write that happened to end in a newline
