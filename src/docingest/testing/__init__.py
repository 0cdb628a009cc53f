"""Fakes docingest ships for tests and benchmarks: a local OpenAI-compatible server.

Imported lazily, so ``python -m docingest.testing.openai_server`` runs cleanly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docingest.testing.openai_server import Fault, OpenAIServer, RequestRecord, parse_fault

__all__ = ["Fault", "OpenAIServer", "RequestRecord", "parse_fault"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from docingest.testing import openai_server

        return getattr(openai_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
