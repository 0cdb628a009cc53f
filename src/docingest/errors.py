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


#: Transport errors raised before the request was written to the connection (connection
#: refused, DNS failure, connect timeout, no free connection in the pool, a proxy that refused the
#: tunnel): the API received nothing. httpx, httpx2 and their httpcore name them alike.
_BEFORE_SENDING = frozenset(
    {"ConnectError", "ConnectTimeout", "PoolTimeout", "ProxyError", "UnsupportedProtocol"}
)
_HTTP_PACKAGES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2"})


def failed_before_sending(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by an HTTP transport) means the request never left the machine.

    A read timeout or a connection dropped after the request was written (``ReadTimeout``,
    ``RemoteProtocolError``, ``ReadError``, ``WriteError``...) does not: the API may have
    received the request, and bill it."""
    return any(
        cls.__name__ in _BEFORE_SENDING and cls.__module__.split(".", 1)[0] in _HTTP_PACKAGES
        for cls in type(exc).__mro__
    )
