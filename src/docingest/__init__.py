"""docingest: documentation ingestion with an exact ledger of every token sent to an LLM API."""

from docingest.errors import BudgetExceeded, ConfigError, DocingestError, LedgerError, SourceError

__all__ = ["BudgetExceeded", "ConfigError", "DocingestError", "LedgerError", "SourceError"]
__version__ = "0.1.0"
