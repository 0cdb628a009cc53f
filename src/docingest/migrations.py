"""Ordered, named schema migrations for the knowledge base (the habit of simonw/llm).

Each migration is a function that takes the connection and changes the schema. They run in the
order they are declared, each in its own transaction together with the row in ``_migrations``
that records it, so a crash leaves either the whole migration or none of it. Running
``migrate`` again applies only what is missing, which makes it safe to call on every open.

Rules for adding one:
- append a new function decorated with ``@migration`` at the end; never edit or reorder one
  that has shipped, because databases in the wild have already recorded it by name;
- execute one statement per ``conn.execute`` (``executescript`` would commit the transaction
  early);
- ``PRAGMA foreign_keys`` cannot change inside a transaction: a migration that rebuilds a table
  must keep the foreign keys satisfied row by row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from docingest.errors import SchemaError

MigrationFunc = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[MigrationFunc] = []


def migration(func: MigrationFunc) -> MigrationFunc:
    """Register ``func`` as the next migration; its ``__name__`` is the name recorded in the DB."""
    if any(existing.__name__ == func.__name__ for existing in MIGRATIONS):
        raise ValueError(f"duplicate migration name {func.__name__!r}")
    MIGRATIONS.append(func)
    return func


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``conn``, in the order they were applied."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    if exists is None:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY seq")]


def check_known(conn: sqlite3.Connection, known: Sequence[str]) -> list[str]:
    """The migrations ``conn`` has recorded; :class:`SchemaError` when one is not in ``known``."""
    recorded = applied_migrations(conn)
    unknown = [name for name in recorded if name not in known]
    if unknown:
        raise SchemaError(
            f"the knowledge base has schema migrations this docingest does not know ({', '.join(unknown)}): "
            "it was written by a newer version; upgrade docingest or point --db at another file"
        )
    return recorded


def migrate(conn: sqlite3.Connection, migrations: Sequence[MigrationFunc] = MIGRATIONS) -> list[str]:
    """Apply the migrations ``conn`` has not recorded yet, in order; return the names applied.

    ``conn`` must not be inside a transaction. ``migrations`` defaults to the registered list;
    tests pass a prefix of it to build a database as an older docingest left it.
    """
    known = [func.__name__ for func in migrations]
    _execute_in_transaction(
        conn,
        lambda: conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            " seq INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL UNIQUE,"
            " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            ")"
        ),
    )
    check_known(conn, known)
    applied: list[str] = []
    for func in migrations:

        def step(func: MigrationFunc = func) -> None:
            # Checked again inside the write transaction: another process may have just run it.
            done = conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (func.__name__,)).fetchone()
            if done is not None:
                return
            func(conn)
            conn.execute("INSERT INTO _migrations (name) VALUES (?)", (func.__name__,))
            applied.append(func.__name__)

        _execute_in_transaction(conn, step)
    return applied


def _execute_in_transaction(conn: sqlite3.Connection, body: Callable[[], object]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    """Runs, documents, chunks, summaries and embeddings.

    Summaries and embeddings are keyed by a content hash the caller computes (of the model and
    the prompt, or of the model and the input text), so a later run finds what is already done
    and a chunk only links to them. Chunks cascade with their document.
    """
    conn.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            dry_run INTEGER NOT NULL CHECK (dry_run IN (0, 1)),
            source TEXT NOT NULL,
            config TEXT NOT NULL CHECK (json_valid(config)),
            totals TEXT CHECK (totals IS NULL OR json_valid(totals)),
            status TEXT NOT NULL
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE documents (
            path TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            kind TEXT NOT NULL,
            metadata TEXT NOT NULL CHECK (json_valid(metadata)),
            source_tokens INTEGER,
            document_tokens INTEGER,
            chunk_count INTEGER NOT NULL CHECK (chunk_count >= 0),
            updated_run TEXT NOT NULL REFERENCES runs (id)
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE summaries (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            text TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            created_run TEXT NOT NULL REFERENCES runs (id)
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE embeddings (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL CHECK (dim > 0),
            vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),
            created_run TEXT NOT NULL REFERENCES runs (id)
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE chunks (
            path TEXT NOT NULL REFERENCES documents (path) ON DELETE CASCADE,
            idx INTEGER NOT NULL CHECK (idx >= 0),
            text TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            heading_path TEXT NOT NULL CHECK (json_valid(heading_path)),
            start INTEGER NOT NULL,
            end_ INTEGER NOT NULL,
            summary_key TEXT REFERENCES summaries (key),
            embedding_key TEXT REFERENCES embeddings (key),
            PRIMARY KEY (path, idx)
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX chunks_summary_key ON chunks (summary_key)")
    conn.execute("CREATE INDEX chunks_embedding_key ON chunks (embedding_key)")
    conn.execute("CREATE INDEX embeddings_model_dim ON embeddings (model, dim)")
