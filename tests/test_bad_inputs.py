"""Bad input never stops a run: each file is reported with its reason and nothing outside is read."""

from __future__ import annotations

import os
from pathlib import Path

from docingest.pipeline import IngestConfig, ingest
from docingest.report import build_report, validate_report

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "langgraph-docs"


def test_a_tree_of_bad_inputs_runs_to_the_end(tmp_path, make_png):
    src = tmp_path / "docs"
    src.mkdir()
    outside = tmp_path / "outside-secret.md"
    outside.write_text("# secret\n\nTOKEN=do-not-read\n")
    (src / "good.md").write_text("# Good\n\nA normal page about docingest.\n")
    (src / "image.md").write_bytes(make_png(16, 16))
    (src / "latin1.md").write_bytes("# Caf\xe9\n\nna\xefve text in latin-1\n".encode("latin-1"))
    (src / "empty.md").write_text("")
    (src / "broken.ipynb").write_text("{ this is not json")
    (src / "huge.txt").write_text("x" * 5_000_000)
    (src / "loop").symlink_to(src, target_is_directory=True)
    (src / "escape.md").symlink_to(outside)

    config = IngestConfig(source=src, dry_run=True, report=tmp_path / "r.json")
    result = ingest(config)
    report = build_report(result.stats)
    validate_report(report)
    assert report["run"]["status"] == "completed"

    skipped = {s["path"]: s["reason"] for s in report["skipped_files"]}
    assert skipped == {
        "image.md": "binary",
        "empty.md": "empty",
        "huge.txt": "too_large",
        "loop": "symlink_loop",
        "escape.md": "symlink_outside",
    }
    files = report["files"]
    assert set(files) == {"good.md", "latin1.md", "broken.ipynb"}
    assert "invalid_utf8_replaced" in files["latin1.md"]["notes"]
    assert any(n.startswith("notebook_unparseable") for n in files["broken.ipynb"]["notes"])
    assert all(f["failed_calls"] == 0 for f in files.values())
    assert "do-not-read" not in result.ledger_path.read_text()
    assert "do-not-read" not in str(report)


def test_unreadable_source_root_is_a_clear_error(tmp_path):
    import pytest

    from docingest.errors import SourceError

    not_dir = tmp_path / "file.md"
    not_dir.write_text("x")
    with pytest.raises(SourceError, match="not a directory"):
        ingest(IngestConfig(source=not_dir, dry_run=True, report=tmp_path / "r.json"))


def test_raw_loader_with_document_context_shows_the_blow_up(tmp_path):
    """The naive pipeline: raw notebooks as text and the whole document in every prompt."""
    src = tmp_path / "docs"
    src.mkdir()
    picks = ["docs/docs/concepts/persistence.md", "docs/docs/how-tos/persistence_redis.ipynb"]
    for rel in picks:
        target = src / Path(rel).name
        target.write_bytes((CORPUS / rel).read_bytes())

    def run(name: str, **kw: object) -> dict:
        config = IngestConfig(source=src, dry_run=True, report=tmp_path / f"{name}.json", **kw)  # type: ignore[arg-type]
        return build_report(ingest(config).stats)["aggregated"]

    default = run("default")
    naive = run("naive", loader="raw", context="document")
    assert default["amplification"] < 3
    assert naive["amplification"] > 20 * default["amplification"]
    assert naive["total_tokens_sent_to_chat_model"] > 30 * default["total_tokens_sent_to_chat_model"]
    # the raw loader keeps notebook JSON, so raw chunk tokens grow too
    assert naive["total_tokens_from_raw_docs"] > default["total_tokens_from_raw_docs"]
    assert os.path.exists(tmp_path / "naive.ledger.jsonl")
