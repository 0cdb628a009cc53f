from __future__ import annotations

import datetime
import hashlib
import math
import sqlite3
import struct
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docingest.errors import ConfigError
from docingest.migrations import MIGRATIONS, SchemaError, applied_migrations, migrate
from docingest.models import Chunk, Document
from docingest.store import Hit, KnowledgeBase

RUN = "run-1"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_doc(path: str, texts: list[str], **metadata: object) -> tuple[Document, list[Chunk]]:
    body = "\n\n".join(texts)
    doc = Document(
        path=path, kind="markdown", text=body, source_text=body, sha256=sha(body), metadata=dict(metadata)
    )
    chunks = []
    offset = 0
    for i, text in enumerate(texts):
        chunks.append(
            Chunk(
                path=path,
                index=i,
                text=text,
                tokens=len(text.split()),
                sha256=sha(text),
                heading_path=("Guide", f"Part {i}"),
                start=offset,
                end=offset + len(text),
            )
        )
        offset += len(text) + 2
    return doc, chunks


@pytest.fixture
def kb(tmp_path):
    with KnowledgeBase(tmp_path / "nested" / "dir" / "kb.sqlite") as kb:
        kb.begin_run(RUN, started_at="2025-01-01T00:00:00Z", source="docs", config={}, dry_run=False)
        yield kb


def put(kb: KnowledgeBase, path: str, texts: list[str]) -> list[Chunk]:
    doc, chunks = make_doc(path, texts)
    kb.put_document(doc, chunks=chunks, source_tokens=100, document_tokens=90, run_id=RUN)
    return chunks


def raw(kb: KnowledgeBase, sql: str) -> list[Any]:
    """Read what is committed, through a connection of its own."""
    with closing(sqlite3.connect(kb.path)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def connect():
    """sqlite3.connect in autocommit mode, closed after the test."""
    conns: list[sqlite3.Connection] = []

    def _connect(path: Path) -> sqlite3.Connection:
        conns.append(sqlite3.connect(path, isolation_level=None))
        return conns[-1]

    yield _connect
    for conn in conns:
        conn.close()


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
    ).fetchall()


# -- migrations -----------------------------------------------------------------------------


def test_migrate_blank_database_then_rerun_is_a_no_op(tmp_path, connect):
    conn = connect(tmp_path / "blank.sqlite")
    assert migrate(conn) == [m.__name__ for m in MIGRATIONS]
    assert applied_migrations(conn) == ["m001_initial"]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"_migrations", "runs", "documents", "chunks", "summaries", "embeddings"}
    before = schema(conn)
    assert migrate(conn) == []
    assert schema(conn) == before
    assert conn.execute("SELECT count(*) FROM _migrations").fetchone() == (len(MIGRATIONS),)


@pytest.mark.parametrize("n", range(len(MIGRATIONS) + 1))
def test_database_at_migration_n_upgrades_to_the_same_schema_as_a_blank_one(tmp_path, connect, n):
    fresh = connect(tmp_path / "fresh.sqlite")
    migrate(fresh)
    old = connect(tmp_path / "old.sqlite")
    assert migrate(old, MIGRATIONS[:n]) == [m.__name__ for m in MIGRATIONS[:n]]
    assert migrate(old) == [m.__name__ for m in MIGRATIONS[n:]]
    assert schema(old) == schema(fresh)
    assert applied_migrations(old) == applied_migrations(fresh)


def test_upgrade_keeps_data_and_runs_only_the_missing_migrations(tmp_path, connect):
    calls: list[str] = []

    def m001_notes(conn):
        calls.append("m001_notes")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")

    def m002_note_author(conn):
        calls.append("m002_note_author")
        conn.execute("ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'unknown'")

    conn = connect(tmp_path / "kb.sqlite")
    assert migrate(conn, [m001_notes]) == ["m001_notes"]
    conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    assert migrate(conn, [m001_notes, m002_note_author]) == ["m002_note_author"]
    assert calls == ["m001_notes", "m002_note_author"]
    assert conn.execute("SELECT body, author FROM notes").fetchall() == [("kept", "unknown")]


def test_failing_migration_leaves_nothing_behind(tmp_path, connect):
    def m001_ok(conn):
        conn.execute("CREATE TABLE a (x)")

    def m002_broken(conn):
        conn.execute("CREATE TABLE b (x)")
        raise RuntimeError("boom")

    conn = connect(tmp_path / "kb.sqlite")
    with pytest.raises(RuntimeError, match="boom"):
        migrate(conn, [m001_ok, m002_broken])
    assert applied_migrations(conn) == ["m001_ok"]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"_migrations", "a"}
    assert not conn.in_transaction


def test_database_from_a_newer_version_is_refused(tmp_path, connect):
    def m999_future(conn):
        conn.execute("CREATE TABLE future (x)")

    conn = connect(tmp_path / "kb.sqlite")
    migrate(conn, [*MIGRATIONS, m999_future])
    with pytest.raises(SchemaError, match="m999_future"):
        migrate(conn)


# -- opening --------------------------------------------------------------------------------


def test_open_creates_parent_dirs_and_sets_pragmas(tmp_path):
    path = tmp_path / "a" / "b" / "kb.sqlite"
    with KnowledgeBase(path) as kb:
        assert path.exists()
        conn = kb._conn
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert kb.counts() == {"documents": 0, "chunks": 0, "summaries": 0, "embeddings": 0, "runs": 0}
    # Reopening runs no migration twice.
    with KnowledgeBase(path) as kb:
        assert [row[0] for row in raw(kb, "SELECT name FROM _migrations")] == ["m001_initial"]


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_a_database_is_a_schema_error(tmp_path, readonly):
    path = tmp_path / "kb.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    # not a ConfigError: a dry run (read-only) forecasts without a cache when there is no knowledge base
    # yet (ConfigError), but refuses a file that is not one
    with pytest.raises(SchemaError, match="it is not a docingest knowledge base; pass --db"):
        KnowledgeBase(path, readonly=readonly)
    assert path.read_bytes() == b"this is not sqlite" * 100


# -- runs -----------------------------------------------------------------------------------


def test_runs_round_trip(kb):
    kb.begin_run(
        "run-2",
        started_at="2025-01-02T00:00:00Z",
        source="/src",
        config={"chunk_tokens": 512, "db": kb.path},
        dry_run=True,
    )
    assert kb.get_run("run-2") == {
        "id": "run-2",
        "started_at": "2025-01-02T00:00:00Z",
        "finished_at": None,
        "dry_run": True,
        "source": "/src",
        "config": {"chunk_tokens": 512, "db": str(kb.path)},
        "totals": None,
        "status": "running",
    }
    kb.finish_run("run-2", finished_at="2025-01-02T00:01:00Z", totals={"tokens": 7}, status="success")
    run = kb.get_run("run-2")
    assert run is not None
    assert (run["finished_at"], run["totals"], run["status"]) == (
        "2025-01-02T00:01:00Z",
        {"tokens": 7},
        "success",
    )
    with pytest.raises(KeyError, match="begin_run"):
        kb.finish_run("nope", finished_at="x", totals={}, status="success")
    assert kb.get_run("nope") is None


# -- documents and chunks -------------------------------------------------------------------


def test_put_document_then_replace_keeps_chunk_rows_exact(kb):
    put(kb, "a.md", ["one", "two", "three"])
    assert kb.counts()["chunks"] == 3
    row = raw(
        kb, "SELECT sha256, kind, source_tokens, document_tokens, chunk_count, updated_run FROM documents"
    )[0]
    assert row == (sha("one\n\ntwo\n\nthree"), "markdown", 100, 90, 3, RUN)

    doc, chunks = make_doc("a.md", ["one", "2"])
    kb.put_document(doc, chunks=chunks, source_tokens=None, document_tokens=None, run_id=RUN)
    stored = kb.get_chunks("a.md")
    assert [(c.index, c.text) for c in stored] == [(0, "one"), (1, "2")]
    assert stored[1].heading_path == ("Guide", "Part 1")
    assert (stored[1].start, stored[1].end, stored[1].tokens) == (5, 6, 1)
    assert kb.counts() == {"documents": 1, "chunks": 2, "summaries": 0, "embeddings": 0, "runs": 1}
    assert raw(kb, "SELECT chunk_count, source_tokens FROM documents")[0] == (2, None)
    assert kb.document_sha("a.md") == sha("one\n\n2")
    assert kb.document_sha("missing.md") is None


def test_unchanged_chunk_keeps_its_keys_changed_chunk_loses_them(kb):
    put(kb, "a.md", ["same", "old"])
    for idx in (0, 1):
        kb.put_summary(
            f"s{idx}", model="m", text=f"summary {idx}", prompt_tokens=3, completion_tokens=2, run_id=RUN
        )
        kb.put_embedding(f"e{idx}", model="emb", vector=[1.0, float(idx)], run_id=RUN)
        kb.set_chunk_keys("a.md", idx, summary_key=f"s{idx}", embedding_key=f"e{idx}")

    put(kb, "a.md", ["same", "new", "extra"])
    keys = [(c.summary_key, c.embedding_key) for c in kb.get_chunks("a.md")]
    assert keys == [("s0", "e0"), (None, None), (None, None)]
    # Summaries and embeddings themselves stay: they are a cache keyed by content.
    assert kb.get_summary("s1") == "summary 1"
    assert kb.has_embedding("e1")


def test_same_text_at_another_index_does_not_keep_keys(kb):
    put(kb, "a.md", ["x", "y"])
    kb.put_embedding("ey", model="emb", vector=[1.0], run_id=RUN)
    kb.set_chunk_keys("a.md", 1, embedding_key="ey")
    put(kb, "a.md", ["y", "x"])
    assert [c.embedding_key for c in kb.get_chunks("a.md")] == [None, None]


def test_set_chunk_keys_changes_only_the_keys_given(kb):
    put(kb, "a.md", ["x"])
    kb.put_summary("s", model="m", text="S", prompt_tokens=None, completion_tokens=None, run_id=RUN)
    kb.put_embedding("e", model="emb", vector=[1.0], run_id=RUN)
    kb.set_chunk_keys("a.md", 0, summary_key="s")
    kb.set_chunk_keys("a.md", 0, embedding_key="e")
    (chunk,) = kb.get_chunks("a.md")
    assert (chunk.summary_key, chunk.embedding_key) == ("s", "e")
    with pytest.raises(KeyError):
        kb.set_chunk_keys("a.md", 5, summary_key="s")
    with pytest.raises(sqlite3.IntegrityError):  # the summary must be stored first
        kb.set_chunk_keys("a.md", 0, summary_key="not-stored")


def test_put_document_rejects_inconsistent_chunks_and_unknown_runs(kb):
    doc, chunks = make_doc("a.md", ["x", "y"])
    with pytest.raises(ValueError, match="repeat an index"):
        kb.put_document(doc, chunks=[chunks[0], chunks[0]], source_tokens=1, document_tokens=1, run_id=RUN)
    _, other = make_doc("b.md", ["z"])
    with pytest.raises(ValueError, match="other documents"):
        kb.put_document(doc, chunks=other, source_tokens=1, document_tokens=1, run_id=RUN)
    with pytest.raises(sqlite3.IntegrityError):
        kb.put_document(doc, chunks=chunks, source_tokens=1, document_tokens=1, run_id="never-begun")
    assert kb.counts()["documents"] == 0


def test_failed_put_document_leaves_the_previous_version(kb):
    put(kb, "a.md", ["one", "two"])
    doc, chunks = make_doc("a.md", ["three"])
    with pytest.raises(sqlite3.IntegrityError):
        kb.put_document(doc, chunks=chunks, source_tokens=1, document_tokens=1, run_id="never-begun")
    assert [c.text for c in kb.get_chunks("a.md")] == ["one", "two"]
    assert kb.document_sha("a.md") == sha("one\n\ntwo")


def test_metadata_is_stored_as_json(kb):
    doc, chunks = make_doc("a.md", ["x"], title="T", date=datetime.date(2024, 5, 1), tags=["a", "b"])
    kb.put_document(doc, chunks=chunks, source_tokens=1, document_tokens=1, run_id=RUN)
    (metadata,) = raw(kb, "SELECT metadata FROM documents")[0]
    assert metadata == '{"date": "2024-05-01", "tags": ["a", "b"], "title": "T"}'


def test_remove_documents_except_cascades_to_chunks(kb):
    put(kb, "a.md", ["1", "2"])
    put(kb, "b.md", ["3"])
    put(kb, "c.md", ["4", "5", "6"])
    assert kb.remove_documents_except({"b.md", "not-stored.md"}) == ["a.md", "c.md"]
    assert kb.counts()["documents"] == 1
    assert raw(kb, "SELECT path, idx FROM chunks") == [("b.md", 0)]
    assert kb.remove_documents_except(["b.md"]) == []
    assert kb.remove_documents_except([]) == ["b.md"]
    assert kb.counts()["chunks"] == 0


# -- summaries and embeddings ---------------------------------------------------------------


def test_summaries_round_trip_and_first_one_stays(kb):
    assert kb.get_summary("k") is None
    kb.put_summary("k", model="gpt", text="first", prompt_tokens=10, completion_tokens=4, run_id=RUN)
    kb.put_summary("k", model="gpt", text="second", prompt_tokens=10, completion_tokens=5, run_id=RUN)
    assert kb.get_summary("k") == "first"
    assert raw(kb, "SELECT model, prompt_tokens, completion_tokens, created_run FROM summaries") == [
        ("gpt", 10, 4, RUN)
    ]


def test_embeddings_round_trip_bit_exact_float32_little_endian(kb):
    values = np.array([0.1, -2.5e-39, 3.4028235e38, -0.0, 1 / 3], dtype=np.float32)  # a subnormal, max, -0
    kb.put_embedding("e", model="emb", vector=values, run_id=RUN)
    back = kb.get_embedding("e")
    assert back is not None
    assert back.dtype == np.float32
    assert back.tobytes() == values.tobytes()
    blob, dim = raw(kb, "SELECT vector, dim FROM embeddings")[0]
    assert dim == 5
    assert blob == struct.pack("<5f", *values.tolist())
    # A list of Python floats is rounded to float32, the way it is stored.
    kb.put_embedding("f", model="emb", vector=[0.1, 0.2], run_id=RUN)
    back = kb.get_embedding("f")
    assert back is not None
    assert back.tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert kb.get_embedding("missing") is None


def test_put_embedding_is_idempotent(kb):
    assert not kb.has_embedding("e")
    kb.put_embedding("e", model="emb", vector=[1.0, 2.0], run_id=RUN)
    kb.put_embedding("e", model="emb", vector=[9.0, 9.0], run_id=RUN)
    assert kb.has_embedding("e")
    assert kb.counts()["embeddings"] == 1
    back = kb.get_embedding("e")
    assert back is not None
    assert back.tolist() == [1.0, 2.0]


def test_put_embedding_rejects_bad_vectors(kb):
    with pytest.raises(ValueError, match="1-D"):
        kb.put_embedding("e", model="emb", vector=[], run_id=RUN)
    with pytest.raises(ValueError, match="1-D"):
        kb.put_embedding("e", model="emb", vector=np.ones((2, 2)), run_id=RUN)
    with pytest.raises(ValueError, match="NaN"):
        kb.put_embedding("e", model="emb", vector=[1.0, math.nan], run_id=RUN)
    assert kb.counts()["embeddings"] == 0


# -- query ----------------------------------------------------------------------------------


def embed(kb: KnowledgeBase, path: str, idx: int, vector: list[float], *, model: str = "emb") -> None:
    key = f"{model}:{vector}"
    kb.put_embedding(key, model=model, vector=vector, run_id=RUN)
    kb.set_chunk_keys(path, idx, embedding_key=key)


def build_three_docs(kb: KnowledgeBase) -> None:
    put(kb, "a.md", ["alpha"])
    put(kb, "b.md", ["beta zero", "beta one", "beta two"])
    put(kb, "c.md", ["gamma zero", "gamma one"])
    embed(kb, "a.md", 0, [1.0, 0.0, 0.0])
    embed(kb, "b.md", 0, [3.0, 4.0, 0.0])
    embed(kb, "b.md", 1, [0.0, 1.0, 0.0])
    # b.md#2 has no embedding; c.md#1 only one of another model.
    embed(kb, "c.md", 0, [1.0, 1.0, 0.0])
    embed(kb, "c.md", 1, [1.0, 0.0, 0.0], model="other")
    kb.put_summary("sa", model="m", text="about alpha", prompt_tokens=1, completion_tokens=1, run_id=RUN)
    kb.set_chunk_keys("a.md", 0, summary_key="sa")


@pytest.mark.parametrize("block_rows", [1, 2, 4096])
def test_query_ranks_by_cosine_similarity(tmp_path, block_rows):
    with KnowledgeBase(tmp_path / "kb.sqlite", block_rows=block_rows) as kb:
        kb.begin_run(RUN, started_at="t", source="s", config={}, dry_run=False)
        build_three_docs(kb)
        hits = kb.query([2.0, 0.0, 0.0], model="emb", k=10)
        assert [(h.path, h.index) for h in hits] == [("a.md", 0), ("c.md", 0), ("b.md", 0), ("b.md", 1)]
        assert [h.score for h in hits] == pytest.approx([1.0, 1 / math.sqrt(2), 0.6, 0.0], abs=1e-6)
        assert hits[0] == Hit("a.md", 0, hits[0].score, "alpha", ("Guide", "Part 0"), "about alpha")
        assert hits[1].summary is None
        assert [(h.path, h.index) for h in kb.query([0.0, -1.0, 0.0], model="emb", k=2)] == [
            ("a.md", 0),
            ("c.md", 0),
        ]  # scores 0, -0.707: a.md#0 first
        other = kb.query([0.0, 1.0, 0.0], model="other")
        assert [(h.path, h.index, h.score) for h in other] == [("c.md", 1, 0.0)]


@pytest.mark.parametrize("block_rows", [1, 3, 4096])
def test_query_breaks_ties_by_path_then_index(tmp_path, block_rows):
    with KnowledgeBase(tmp_path / "kb.sqlite", block_rows=block_rows) as kb:
        kb.begin_run(RUN, started_at="t", source="s", config={}, dry_run=False)
        put(kb, "z.md", ["same", "same"])
        put(kb, "b.md", ["same", "other"])
        put(kb, "a.md", ["other", "same"])
        # Identical text shares one embedding key, as content hashing makes it.
        for path, idx in [("z.md", 1), ("b.md", 0), ("z.md", 0), ("a.md", 1)]:
            embed(kb, path, idx, [0.5, 0.5])
        embed(kb, "b.md", 1, [0.0, 1.0])
        hits = kb.query([1.0, 1.0], model="emb", k=3)
        assert [(h.path, h.index) for h in hits] == [("a.md", 1), ("b.md", 0), ("z.md", 0)]
        assert [h.score for h in hits] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_query_on_an_empty_knowledge_base_returns_nothing(kb):
    assert kb.query([1.0, 0.0], model="emb") == []
    put(kb, "a.md", ["no embedding yet"])
    assert kb.query([1.0, 0.0], model="emb") == []
    kb.put_embedding("orphan", model="emb", vector=[1.0, 0.0], run_id=RUN)  # linked to no chunk
    assert kb.query([1.0, 0.0], model="emb") == []


def test_query_rejects_mismatched_dimensions_and_bad_arguments(kb):
    build_three_docs(kb)
    with pytest.raises(ConfigError, match="2 dimensions"):
        kb.query([1.0, 0.0], model="emb")
    with pytest.raises(ValueError, match="all zeros"):
        kb.query([0.0, 0.0, 0.0], model="emb")
    with pytest.raises(ValueError, match="k must"):
        kb.query([1.0, 0.0, 0.0], model="emb", k=0)


def test_zero_stored_vector_scores_zero(kb):
    put(kb, "a.md", ["x"])
    embed(kb, "a.md", 0, [0.0, 0.0])
    assert [h.score for h in kb.query([1.0, 0.0], model="emb")] == [0.0]


# -- transactions and concurrency -----------------------------------------------------------


def test_transaction_rollback_on_exception_leaves_db_unchanged(kb):
    put(kb, "a.md", ["one"])
    before = kb.counts()
    with pytest.raises(RuntimeError), kb.transaction():
        put(kb, "b.md", ["two", "three"])
        kb.put_summary("s", model="m", text="t", prompt_tokens=1, completion_tokens=1, run_id=RUN)
        kb.remove_documents_except(["b.md"])
        raise RuntimeError("killed")
    assert kb.counts() == before
    assert kb.document_sha("a.md") is not None
    assert kb.get_summary("s") is None
    assert not kb._conn.in_transaction


def test_nested_transaction_rolls_back_only_the_inner_block(kb):
    with kb.transaction():
        put(kb, "a.md", ["one"])
        with pytest.raises(RuntimeError), kb.transaction():
            put(kb, "b.md", ["two"])
            raise RuntimeError
        put(kb, "c.md", ["three"])
    assert kb.remove_documents_except([]) == ["a.md", "c.md"]


def test_second_connection_sees_committed_data_only(kb, connect):
    other = connect(kb.path)
    with kb.transaction():
        put(kb, "a.md", ["one", "two"])
        # WAL: a reader is not blocked by the open write transaction, and sees the last commit.
        assert other.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
    assert other.execute("SELECT count(*) FROM chunks").fetchone() == (2,)
    with KnowledgeBase(kb.path) as second:
        assert second.document_sha("a.md") == sha("one\n\ntwo")
        assert second.counts()["chunks"] == 2


def test_a_killed_process_leaves_no_half_written_document(tmp_path):
    path = tmp_path / "kb.sqlite"
    with KnowledgeBase(path) as kb:
        kb.begin_run(RUN, started_at="t", source="s", config={}, dry_run=False)
        put(kb, "a.md", ["one", "two"])
    script = f"""
import os, pathlib
from docingest.models import Chunk, Document
from docingest.store import KnowledgeBase
kb = KnowledgeBase(pathlib.Path({str(path)!r}))
doc = Document(path="a.md", kind="markdown", text="new", source_text="new", sha256="new")
chunks = [Chunk(path="a.md", index=i, text="new", tokens=1, sha256="new") for i in range(5)]
with kb.transaction():
    kb.put_document(doc, chunks=chunks, source_tokens=1, document_tokens=1, run_id={RUN!r})
    kb.put_embedding("e", model="emb", vector=[1.0], run_id={RUN!r})
    os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    with KnowledgeBase(path) as kb:
        assert [c.text for c in kb.get_chunks("a.md")] == ["one", "two"]
        assert kb.document_sha("a.md") == sha("one\n\ntwo")
        assert kb.counts()["embeddings"] == 0
