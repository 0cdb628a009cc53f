"""The exceptions docingest raises. The library raises; the CLI translates to messages.

DocingestError
├── ConfigError        a setting is invalid (bad flag, overlap >= chunk size, no API key)
├── SourceError        the source cannot be read at all (missing directory, not a repo)
├── LedgerError        a ledger or report file is unreadable or of another schema
└── BudgetExceeded     the forecast or the run would cross --max-tokens / --max-cost
"""

from __future__ import annotations


class DocingestError(Exception):
    """Base class of every error docingest raises on purpose."""


class ConfigError(DocingestError):
    """A setting is invalid; the message says how to fix it."""


class SourceError(DocingestError):
    """The source tree cannot be read."""


class LedgerError(DocingestError):
    """A ledger or report cannot be read."""


class SchemaError(DocingestError):
    """The database was written by a newer docingest, or is not a docingest knowledge base."""


class BudgetExceeded(DocingestError):
    """The run would spend more than the budget allows."""
