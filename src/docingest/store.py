"""The knowledge base: one SQLite file of runs, documents, chunks, summaries and embeddings.

Summaries and embeddings are keyed by a content hash the caller computes (of the model and the
prompt, of the model and the input text), so a later run asks ``get_summary`` / ``has_embedding``
and skips what is already done; chunks only hold links to them. Every write runs in a
transaction, so a process killed mid-run leaves no half-written document.

Threads: the connection keeps sqlite3's default ``check_same_thread=True``. The pipeline runs
asyncio in a single thread and writes from it; using the same ``KnowledgeBase`` from another
thread (``asyncio.to_thread``, an executor) fails loudly instead of interleaving two
transactions on one connection. Open a second ``KnowledgeBase`` per thread or process instead:
WAL lets readers and one writer work side by side, and ``timeout`` waits out a busy writer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from docingest.errors import ConfigError, SchemaError
from docingest.migrations import MIGRATIONS, check_known, migrate
from docingest.models import Chunk, Document

Vector = Sequence[float] | npt.NDArray[np.floating[Any]]

_FLOAT32_LE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Hit:
    """One result of ``KnowledgeBase.query``: a chunk and its cosine similarity to the query."""

    path: str
    index: int
    score: float
    text: str
    heading_path: tuple[str, ...]
    summary: str | None


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk row as stored, with its links to a summary and an embedding (``None``: not yet)."""

    path: str
    index: int
    text: str
    tokens: int
    sha256: str
    heading_path: tuple[str, ...]
    start: int
    end: int
    summary_key: str | None
    embedding_key: str | None


class KnowledgeBase:
    """A SQLite knowledge base at ``path``, created (with its parent directories) and migrated on open.

    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self, path: Path, *, timeout: float = 5.0, block_rows: int = 4096, readonly: bool = False
    ) -> None:
        """``timeout``: seconds to wait for another writer's lock. ``block_rows``: embeddings
        loaded per block by ``query``, which bounds its memory. ``readonly``: open an existing
        file for reading only (a dry run's forecast reads the cache; it never writes)."""
        if block_rows < 1:
            raise ValueError("block_rows must be at least 1")
        self.path = Path(path)
        self._block_rows = block_rows
        self._depth = 0
        self.readonly = readonly
        try:
            if readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: sqlite3 opens no implicit transactions; transaction() does.
                conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the knowledge base at {self.path}: {exc}; "
                "pass --db with a path in a writable directory"
            ) from exc
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(conn)
            else:  # reads the file: one that is not SQLite fails here, not at its first query
                known = [func.__name__ for func in MIGRATIONS]
                if check_known(conn, known) != known:  # no tables yet: a dry run reads no cache
                    raise ConfigError(f"the knowledge base at {self.path} has not been created yet")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not isinstance(exc, sqlite3.OperationalError):  # not a database, or a damaged one
                raise SchemaError(
                    f"cannot use the knowledge base at {self.path} ({exc}): it is not a docingest "
                    "knowledge base; pass --db with the path of a new file"
                ) from exc
            raise ConfigError(
                f"cannot use the knowledge base at {self.path} ({exc}): if another docingest is "
                "writing to it, wait for it to finish; otherwise pass --db with the path of a new file"
            ) from exc
        except BaseException:
            conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them commit together, or none if the block raises.

        Nests: an inner ``transaction()`` is a savepoint of the outer one. The outermost takes the
        write lock at once (``BEGIN IMMEDIATE``), so it never fails half-way on a busy database.
        """
        depth = self._depth
        savepoint = f"docingest_{depth}"
        self._conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth = depth + 1
        try:
            yield
        except BaseException:
            self._depth = depth
            if depth == 0:
                self._conn.execute("ROLLBACK")
            else:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
            raise
        self._depth = depth
        try:
            self._conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
        except BaseException:
            if depth == 0 and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction: several SELECTs see one state of the database, without the write lock."""
        if self._depth > 0:
            yield
            return
        self._conn.execute("BEGIN")
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self._conn.execute("ROLLBACK")

    # -- runs ------------------------------------------------------------------------------

    def begin_run(
        self, run_id: str, *, started_at: str, source: str, config: Mapping[str, Any], dry_run: bool
    ) -> None:
        """Record a run as ``running``; documents, summaries and embeddings it writes refer to it."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO runs (id, started_at, dry_run, source, config, status)"
                " VALUES (?, ?, ?, ?, ?, 'running')",
                (run_id, started_at, int(dry_run), source, _to_json(config)),
            )

    def finish_run(self, run_id: str, *, finished_at: str, totals: Mapping[str, Any], status: str) -> None:
        with self.transaction():
            cursor = self._conn.execute(
                "UPDATE runs SET finished_at = ?, totals = ?, status = ? WHERE id = ?",
                (finished_at, _to_json(totals), status, run_id),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no run {run_id!r} in the knowledge base: call begin_run first")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row, with ``config`` and ``totals`` decoded and ``dry_run`` as a bool."""
        row = self._conn.execute(
            "SELECT id, started_at, finished_at, dry_run, source, config, totals, status"
            " FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "started_at": row[1],
            "finished_at": row[2],
            "dry_run": bool(row[3]),
            "source": row[4],
            "config": json.loads(row[5]),
            "totals": None if row[6] is None else json.loads(row[6]),
            "status": row[7],
        }

    # -- documents and chunks --------------------------------------------------------------

    def document_sha(self, path: str) -> str | None:
        """The sha256 of the file bytes stored for ``path``, or ``None`` if it is not stored."""
        row = self._conn.execute("SELECT sha256 FROM documents WHERE path = ?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def put_document(
        self,
        doc: Document,
        *,
        chunks: Sequence[Chunk],
        source_tokens: int | None,
        document_tokens: int | None,
        run_id: str,
    ) -> None:
        """Store ``doc`` and replace all its chunks, in one transaction.

        A chunk whose index and sha256 are unchanged keeps its summary and embedding keys; any
        other chunk starts without them. ``run_id`` must have been recorded by ``begin_run``.
        """
        indices = [chunk.index for chunk in chunks]
        if len(set(indices)) != len(indices):
            raise ValueError(f"chunks of {doc.path!r} repeat an index: {sorted(indices)}")
        strays = sorted({chunk.path for chunk in chunks if chunk.path != doc.path})
        if strays:
            raise ValueError(f"chunks of other documents passed with {doc.path!r}: {strays}")
        with self.transaction():
            previous = {
                (idx, sha256): (summary_key, embedding_key)
                for idx, sha256, summary_key, embedding_key in self._conn.execute(
                    "SELECT idx, sha256, summary_key, embedding_key FROM chunks WHERE path = ?", (doc.path,)
                )
            }
            self._conn.execute(
                "INSERT INTO documents"
                " (path, sha256, kind, metadata, source_tokens, document_tokens, chunk_count, updated_run)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, kind = excluded.kind,"
                " metadata = excluded.metadata, source_tokens = excluded.source_tokens,"
                " document_tokens = excluded.document_tokens, chunk_count = excluded.chunk_count,"
                " updated_run = excluded.updated_run",
                (
                    doc.path,
                    doc.sha256,
                    doc.kind,
                    _to_json(doc.metadata),
                    source_tokens,
                    document_tokens,
                    len(chunks),
                    run_id,
                ),
            )
            self._conn.execute("DELETE FROM chunks WHERE path = ?", (doc.path,))
            self._conn.executemany(
                "INSERT INTO chunks (path, idx, text, tokens, sha256, heading_path, start, end_,"
                " summary_key, embedding_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        doc.path,
                        chunk.index,
                        chunk.text,
                        chunk.tokens,
                        chunk.sha256,
                        _to_json(list(chunk.heading_path)),
                        chunk.start,
                        chunk.end,
                        *previous.get((chunk.index, chunk.sha256), (None, None)),
                    )
                    for chunk in chunks
                ],
            )

    def get_chunks(self, path: str) -> list[StoredChunk]:
        """The stored chunks of ``path`` in index order (``[]`` if the document is not stored)."""
        rows = self._conn.execute(
            "SELECT path, idx, text, tokens, sha256, heading_path, start, end_, summary_key, embedding_key"
            " FROM chunks WHERE path = ? ORDER BY idx",
            (path,),
        )
        return [
            StoredChunk(
                path=row[0],
                index=row[1],
                text=row[2],
                tokens=row[3],
                sha256=row[4],
                heading_path=tuple(json.loads(row[5])),
                start=row[6],
                end=row[7],
                summary_key=row[8],
                embedding_key=row[9],
            )
            for row in rows
        ]

    def set_chunk_keys(
        self, path: str, idx: int, *, summary_key: str | None = None, embedding_key: str | None = None
    ) -> None:
        """Link a chunk to a stored summary and/or embedding; a key left ``None`` is not changed.

        The summary or embedding must be stored first (``put_summary``, ``put_embedding``).
        """
        with self.transaction():
            cursor = self._conn.execute(
                "UPDATE chunks SET summary_key = coalesce(?, summary_key),"
                " embedding_key = coalesce(?, embedding_key) WHERE path = ? AND idx = ?",
                (summary_key, embedding_key, path, idx),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no chunk {idx} of {path!r} in the knowledge base")

    def set_document_tokens(self, path: str, source_tokens: int, document_tokens: int) -> None:
        """Record a stored document's source and document tokens (counted after it was stored)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE documents SET source_tokens = ?, document_tokens = ? WHERE path = ?",
                (source_tokens, document_tokens, path),
            )

    def remove_documents_except(self, paths: Collection[str]) -> list[str]:
        """Delete every document (and its chunks) whose path is not in ``paths``; return them sorted."""
        keep = set(paths)
        with self.transaction():
            stored = [row[0] for row in self._conn.execute("SELECT path FROM documents ORDER BY path")]
            removed = [path for path in stored if path not in keep]
            self._conn.executemany("DELETE FROM documents WHERE path = ?", [(path,) for path in removed])
        return removed

    # -- summaries and embeddings ----------------------------------------------------------

    def get_summary(self, key: str) -> str | None:
        row = self._conn.execute("SELECT text FROM summaries WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_summary(
        self,
        key: str,
        *,
        model: str,
        text: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        run_id: str,
    ) -> None:
        """Store a summary under ``key``; if the key is already stored, the first summary stays."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO summaries (key, model, text, prompt_tokens, completion_tokens, created_run)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (key, model, text, prompt_tokens, completion_tokens, run_id),
            )

    def has_embedding(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM embeddings WHERE key = ?", (key,)).fetchone() is not None

    def put_embedding(self, key: str, *, model: str, vector: Vector, run_id: str) -> None:
        """Store a vector as little-endian float32 under ``key``; a key already stored is left as is."""
        array = np.asarray(vector, dtype=_FLOAT32_LE)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"an embedding must be a non-empty 1-D vector, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"embedding {key!r} contains NaN or infinity")
        with self.transaction():
            self._conn.execute(
                "INSERT INTO embeddings (key, model, dim, vector, created_run) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, model, int(array.size), array.tobytes(), run_id),
            )

    def get_embedding(self, key: str) -> npt.NDArray[np.float32] | None:
        """The stored vector, exactly as stored (float32), or ``None``."""
        row = self._conn.execute("SELECT vector FROM embeddings WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[0], dtype=_FLOAT32_LE).astype(np.float32)

    # -- search ----------------------------------------------------------------------------

    def query(self, vector: Vector, *, model: str, k: int = 5) -> list[Hit]:
        """The ``k`` chunks whose ``model`` embedding is most cosine-similar to ``vector``.

        Highest score first; equal scores in path, then index order. ``[]`` when no chunk has an
        embedding of ``model``. Embeddings are read in blocks of ``block_rows``, so memory stays
        bounded whatever the size of the knowledge base.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = np.asarray(vector, dtype=np.float64)
        if query.ndim != 1 or query.size == 0:
            raise ValueError(f"the query must be a non-empty 1-D vector, got shape {query.shape}")
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("the query vector must be finite and not all zeros")
        query /= norm
        with self._snapshot():
            dims = [
                row[0]
                for row in self._conn.execute(
                    "SELECT DISTINCT dim FROM embeddings WHERE model = ? ORDER BY dim",
                    (model,),
                )
            ]
            if not dims:
                return []
            if dims != [query.size]:
                raise ConfigError(
                    f"the query vector has {query.size} dimensions but the knowledge base holds "
                    f"{model!r} embeddings of {', '.join(map(str, dims))} dimensions: embed the query "
                    "with the same model and dimensions the ingest used"
                )
            best = self._top_k(query, model=model, k=k)  # [] if no chunk links to such an embedding
            return [self._hit(path, idx, score) for score, path, idx in best]

    def _top_k(self, query: npt.NDArray[np.float64], *, model: str, k: int) -> list[tuple[float, str, int]]:
        cursor = self._conn.execute(
            "SELECT c.path, c.idx, e.vector FROM chunks AS c JOIN embeddings AS e ON e.key = c.embedding_key"
            " WHERE e.model = ? ORDER BY c.path, c.idx",
            (model,),
        )
        best: list[tuple[float, str, int]] = []
        while rows := cursor.fetchmany(self._block_rows):
            matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype=_FLOAT32_LE)
            matrix = matrix.reshape(len(rows), query.size).astype(np.float64)
            norms = np.linalg.norm(matrix, axis=1)
            dots = matrix @ query
            scores = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
            # Rows arrive in (path, idx) order and the sort is stable, so ties keep that order.
            for i in np.argsort(-scores, kind="stable")[:k]:
                best.append((float(scores[i]), rows[i][0], rows[i][1]))
            best.sort(key=lambda hit: (-hit[0], hit[1], hit[2]))
            del best[k:]
        return best

    def _hit(self, path: str, idx: int, score: float) -> Hit:
        text, heading_path, summary = self._conn.execute(
            "SELECT c.text, c.heading_path, s.text FROM chunks AS c"
            " LEFT JOIN summaries AS s ON s.key = c.summary_key WHERE c.path = ? AND c.idx = ?",
            (path, idx),
        ).fetchone()
        return Hit(path, idx, score, text, tuple(json.loads(heading_path)), summary)

    # -- overview --------------------------------------------------------------------------

    def embedding_models(self) -> dict[str, int]:
        """Chunks linked to an embedding, per embedding model."""
        with self._snapshot():
            rows = self._conn.execute(
                "SELECT e.model, count(*) FROM chunks c JOIN embeddings e ON e.key = c.embedding_key "
                "GROUP BY e.model ORDER BY e.model"
            ).fetchall()
        return {str(model): int(n) for model, n in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table: documents, chunks, summaries, embeddings, runs."""
        with self._snapshot():
            return {
                table: int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("documents", "chunks", "summaries", "embeddings", "runs")
            }


def _to_json(value: Any) -> str:
    # default=str: front matter can hold dates, configs can hold Paths; both read back as strings.
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
