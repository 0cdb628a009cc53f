"""The public surface of ``import docingest``, pinned."""

from __future__ import annotations

import subprocess
import sys

import docingest


def test_all_is_pinned_and_sorted() -> None:
    assert docingest.__all__ == [
        "BudgetExceeded",
        "ConfigError",
        "DocingestError",
        "IngestConfig",
        "LedgerError",
        "SourceError",
        "StatsCollector",
        "aingest",
        "async_recording_http_client",
        "ingest",
        "record_client",
        "record_openai_clients",
        "recording_http_client",
        "trace_command",
    ]
    assert docingest.__all__ == sorted(docingest.__all__)
    for name in docingest.__all__:
        assert getattr(docingest, name) is not None


def test_import_docingest_stays_light() -> None:
    """Every traced process imports docingest: it must not pull in openai before the script does."""
    code = "import sys, docingest; print('openai' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
