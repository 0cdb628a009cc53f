"""docingest: documentation ingestion with an exact ledger of every token sent to an LLM API.

The names below are loaded on first use, so that ``import docingest`` (done in every process
that ``docingest trace`` records) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from docingest.errors import BudgetExceeded, ConfigError, DocingestError, LedgerError, SourceError

if TYPE_CHECKING:
    from docingest.account import StatsCollector
    from docingest.config import IngestConfig
    from docingest.instrument import (
        async_recording_http_client,
        record_client,
        record_openai_clients,
        recording_http_client,
    )
    from docingest.pipeline import aingest, ingest
    from docingest.trace import trace_command

__all__ = [
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
__version__ = "0.1.0"

_LAZY = {
    "StatsCollector": "docingest.account",
    "IngestConfig": "docingest.pipeline",
    "aingest": "docingest.pipeline",
    "ingest": "docingest.pipeline",
    "async_recording_http_client": "docingest.instrument",
    "record_client": "docingest.instrument",
    "record_openai_clients": "docingest.instrument",
    "recording_http_client": "docingest.instrument",
    "trace_command": "docingest.trace",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'docingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
