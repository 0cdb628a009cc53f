"""Per-chunk details of a large run, rebuilt from its ledgers one file at a time.

A collector past ``DETAIL_LIMIT`` chunks keeps only numbers. To write the report's ``chunks``
sections, :class:`ChunkDetails` reads the ledgers once into a temporary SQLite file (each record
under every file it concerns, a call's chunk shares cut down to that file's), then folds one
file's records at a time into a fresh collector: the chunk views are the very ones a detailed
collector makes, and memory holds one file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from docingest.account import StatsCollector
from docingest.ledger import read_ledger

_BATCH = 5_000


def _rows(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    for path in paths:
        for r in read_ledger(path):
            kind = r.get("type")
            if kind == "chunk" or (kind in ("cache_hit", "unsent") and r.get("path") is not None):
                yield r["path"], json.dumps(r, ensure_ascii=False)
            elif kind == "call" and r.get("chunks"):
                by_path: dict[str, list[Any]] = {}
                for share in r["chunks"]:
                    by_path.setdefault(share[0], []).append(share)
                for p, shares in by_path.items():
                    yield p, json.dumps({**r, "chunks": shares}, ensure_ascii=False)


class ChunkDetails:
    """``chunks(path)``: the report's ``chunks`` section of one file, rebuilt from the ledgers."""

    def __init__(self, ledgers: Iterable[Path], *, directory: Path | None = None) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".docingest-chunks-", suffix=".sqlite")
        os.close(fd)
        self._path = Path(name)
        self._db = sqlite3.connect(name)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE r (path TEXT NOT NULL, body TEXT NOT NULL)")
        rows = _rows(ledgers)
        while batch := [row for _, row in zip(range(_BATCH), rows, strict=False)]:
            self._db.executemany("INSERT INTO r VALUES (?, ?)", batch)
        self._db.execute("CREATE INDEX r_path ON r (path)")
        self._db.commit()

    def chunks(self, path: str) -> dict[str, Any]:
        stats = StatsCollector(None, detail_limit=None)
        for (body,) in self._db.execute("SELECT body FROM r WHERE path = ? ORDER BY rowid", (path,)):
            stats._fold(json.loads(body))
        fs = stats.files.get(path)
        if fs is None:
            return {}
        return {str(i): stats.chunk_view(cs) for i, cs in sorted(fs.chunks.items())}

    def close(self) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> ChunkDetails:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
