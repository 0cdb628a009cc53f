"""Recording any OpenAI SDK pipeline: yours, LangChain's or LlamaIndex's.

Three ways in, from the most explicit to the least:

- :func:`recording_http_client` / :func:`async_recording_http_client` build the ``http_client``
  to hand to ``openai.OpenAI(http_client=...)``, ``ChatOpenAI(http_client=...,
  http_async_client=...)``, ``OpenAIEmbeddings(...)``, LlamaIndex's ``OpenAI(http_client=...,
  async_http_client=...)`` and ``OpenAIEmbedding(...)``. Requests go through
  :class:`~docingest.transport.RecordingTransport`, over the network or, in a dry run, over
  :class:`~docingest.transport.DryRunTransport`.
- :func:`record_client` records an ``httpx``/``httpx2`` client (or an OpenAI client) that
  already exists, by wrapping that one instance's ``send``.
- :func:`record_openai_clients` records every ``openai.OpenAI`` / ``openai.AsyncOpenAI`` built
  while it is active, the way ``docingest trace`` does for a whole script.

``dry_run=None`` means "as ``DRY_RUN`` says" (``true``, ``1`` or ``yes``). Attribution comes from
:meth:`StatsCollector.chunk <docingest.account.StatsCollector.chunk>`; a call made outside any
chunk is kept in the unattributed bucket with its call site and prompt template.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx2

from docingest.account import StatsCollector
from docingest.simulate import SimOptions
from docingest.transport import (
    AsyncRecordingTransport,
    Counters,
    DryRunTransport,
    RecordingTransport,
    _Recorder,
    simulated_response,
)

__all__ = [
    "async_recording_http_client",
    "record_client",
    "record_openai_clients",
    "recording_http_client",
]

T = TypeVar("T")

# every client docingest already records: never wrapped twice (LangChain shares cached clients)
_RECORDED: weakref.WeakSet[Any] = weakref.WeakSet()
_RECORDED_LOCK = threading.Lock()


def _dry_run(dry_run: bool | None) -> bool:
    if dry_run is not None:
        return dry_run
    from docingest.config import env_dry_run

    return env_dry_run()


def _openai_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The SDK's own client defaults (timeout, redirects), unless the caller set them."""
    import openai

    kwargs.setdefault("timeout", openai.DEFAULT_TIMEOUT)
    kwargs.setdefault("follow_redirects", True)
    return kwargs


def recording_http_client(
    stats: StatsCollector,
    *,
    dry_run: bool | None = None,
    inner: httpx2.BaseTransport | None = None,
    sim_options: SimOptions | None = None,
    counters: Counters | None = None,
    **client_kwargs: Any,
) -> httpx2.Client:
    """An ``httpx2.Client`` that records every request into ``stats``.

    ``inner`` is the transport that really sends (default: the network; in a dry run, the
    simulated API). ``client_kwargs`` go to ``httpx2.Client`` (``timeout``, ``headers``...).
    """
    if inner is None:
        inner = DryRunTransport(sim_options) if _dry_run(dry_run) else httpx2.HTTPTransport(limits=_limits())
    client = httpx2.Client(
        transport=RecordingTransport(inner, stats, counters=counters), **_openai_defaults(client_kwargs)
    )
    _mark(client)
    return client


def async_recording_http_client(
    stats: StatsCollector,
    *,
    dry_run: bool | None = None,
    inner: httpx2.AsyncBaseTransport | None = None,
    sim_options: SimOptions | None = None,
    counters: Counters | None = None,
    **client_kwargs: Any,
) -> httpx2.AsyncClient:
    """The async twin of :func:`recording_http_client` (for ``AsyncOpenAI`` and ``a*`` methods).

    An async client belongs to one event loop: build one per ``asyncio.run``.
    """
    if inner is None:
        inner = (
            DryRunTransport(sim_options) if _dry_run(dry_run) else httpx2.AsyncHTTPTransport(limits=_limits())
        )
    client = httpx2.AsyncClient(
        transport=AsyncRecordingTransport(inner, stats, counters=counters),
        **_openai_defaults(client_kwargs),
    )
    _mark(client)
    return client


def _limits() -> httpx2.Limits:
    import openai

    limits: httpx2.Limits = openai.DEFAULT_CONNECTION_LIMITS
    return limits


def _mark(client: Any) -> bool:
    """Remember ``client`` as recorded; False when it already was."""
    with _RECORDED_LOCK:
        if client in _RECORDED:
            return False
        _RECORDED.add(client)
        return True


def record_client(
    client: T,
    stats: StatsCollector,
    *,
    dry_run: bool | None = None,
    sim_options: SimOptions | None = None,
    counters: Counters | None = None,
) -> T:
    """Record every request of an existing client; returns the same client.

    ``client`` is an ``httpx2.Client``/``AsyncClient`` or an ``httpx`` one (openai 3 accepts
    both). Its transport, proxies and certificates stay as they are: only that instance's
    ``send`` is wrapped. Recording a client twice records it once. In a dry run no request
    leaves: the simulated API answers.
    """
    target: Any = client
    if not hasattr(target, "send") or not hasattr(target, "event_hooks"):
        raise TypeError(f"record_client needs an httpx or httpx2 client, got {type(client).__name__}")
    if not _mark(target):
        return client
    recorder = _Recorder(stats, counters, time.perf_counter)
    dry = _dry_run(dry_run)
    options = sim_options or SimOptions()
    send = target.send
    if _is_async(target):

        @functools.wraps(send)
        async def asend(request: Any, *args: Any, **kwargs: Any) -> Any:
            pending = recorder.before(request)
            try:
                if dry:
                    response = simulated_response(request, options)
                else:
                    response = await send(request, *args, **kwargs)
                    await response.aread()
            except Exception as exc:
                recorder.failed(pending, exc)
                raise
            recorder.answered(pending, response, response.content)
            return response

        target.send = asend
    else:

        @functools.wraps(send)
        def ssend(request: Any, *args: Any, **kwargs: Any) -> Any:
            pending = recorder.before(request)
            try:
                response = simulated_response(request, options) if dry else send(request, *args, **kwargs)
                response.read()
            except Exception as exc:
                recorder.failed(pending, exc)
                raise
            recorder.answered(pending, response, response.content)
            return response

        target.send = ssend
    return client


def _is_async(client: Any) -> bool:
    return type(client).__name__.startswith("Async") or any(
        c.__name__ == "AsyncClient" for c in type(client).__mro__
    )


@contextmanager
def record_openai_clients(
    stats: StatsCollector,
    *,
    dry_run: bool | None = None,
    sim_options: SimOptions | None = None,
) -> Iterator[None]:
    """Record every ``openai.OpenAI`` / ``openai.AsyncOpenAI`` (and subclasses, e.g. Azure)
    constructed inside the block, with no change to the code that builds them.

    A client given no ``http_client`` gets the SDK's default one, recorded; a client given
    one (LangChain always passes its own) has that one recorded with :func:`record_client`.
    Clients built before the block are not recorded.
    """
    undo = install_openai_hook(stats, dry_run=dry_run, sim_options=sim_options)
    try:
        yield
    finally:
        undo()


def install_openai_hook(
    stats: StatsCollector,
    *,
    dry_run: bool | None = None,
    sim_options: SimOptions | None = None,
) -> Callable[[], None]:
    """Wrap ``openai.OpenAI.__init__`` and ``openai.AsyncOpenAI.__init__`` so that every client
    built from now on is recorded; returns the function that unwraps them."""
    openai = importlib.import_module("openai")
    dry = _dry_run(dry_run)
    counters = Counters()
    undo: list[Callable[[], None]] = []
    for cls, default in (
        (openai.OpenAI, openai.DefaultHttpxClient),
        (openai.AsyncOpenAI, openai.DefaultAsyncHttpxClient),
    ):
        original = cls.__init__

        def make(original: Any, default: Any) -> Any:
            @functools.wraps(original)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                http_client = kwargs.get("http_client")
                if http_client is None:
                    http_client = default()
                kwargs["http_client"] = record_client(
                    http_client, stats, dry_run=dry, sim_options=sim_options, counters=counters
                )
                if dry and not kwargs.get("api_key") and not os.environ.get("OPENAI_API_KEY"):
                    kwargs["api_key"] = "dry-run"  # a dry run needs no key, the SDK wants one
                original(self, *args, **kwargs)

            return __init__

        cls.__init__ = make(original, default)
        undo.append(functools.partial(setattr, cls, "__init__", original))

    def unwrap() -> None:
        for step in reversed(undo):
            step()

    return unwrap
