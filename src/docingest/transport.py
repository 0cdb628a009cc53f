"""The seam: httpx2 transports under the official OpenAI SDK.

``RecordingTransport`` / ``AsyncRecordingTransport`` wrap any inner transport and write one
ledger record per HTTP attempt (retries made by the SDK pass through here one by one), with the
prompt tokens counted *before* the request leaves; an attempt that never left (connection
refused, DNS failure, connect timeout) is recorded with ``sent: false`` and no token sent; one
cut off by an interrupt (Ctrl-C, SIGTERM, a cancelled task) is a failed attempt counted as sent,
or as not sent when httpx2's transport had not begun to write it (waiting for a connection).
``DryRunTransport`` answers in place of the network with what the API would answer
(``docingest.simulate``), errors included, so a dry run runs every line of the SDK's request
building and response parsing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import site
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from docingest.account import CallInfo, ChunkShare, StatsCollector, current_call, current_chunk
from docingest.errors import LedgerError, failed_before_sending
from docingest.ratelimit import WAIT_EXTENSION
from docingest.simulate import SimOptions, respond
from docingest.tokens import TokenCounter, encoding_name_for_model

_DROP_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}
_SKIP_FRAMES = (
    os.sep + "openai" + os.sep,
    os.sep + "httpx2" + os.sep,
    os.sep + "httpx" + os.sep,
    os.sep + "httpcore2" + os.sep,
    os.sep + "httpcore" + os.sep,
    os.sep + "anyio" + os.sep,
    os.sep + "asyncio" + os.sep,
    os.sep + "concurrent" + os.sep,
    os.sep + "threading.py",
    os.sep + "contextlib.py",
    os.sep + "docingest" + os.sep,
    os.sep + "langchain",
    os.sep + "llama_index",
    os.sep + "tenacity" + os.sep,
    os.sep + "pydantic" + os.sep,
    "<frozen ",
)


NOT_SENT_NOTE = "nothing was sent: the connection failed before the request left this machine"
MAYBE_BILLED_NOTE = "counted as sent: the API may have received the request, and billed it"
INTERRUPTED = "interrupted in flight (Ctrl-C, SIGTERM or a cancelled task)"
INTERRUPTED_UNSENT = (
    "interrupted while waiting for a connection (Ctrl-C, SIGTERM or a cancelled task): nothing was "
    "sent, the request had not left this machine"
)


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's reason under an HTTP library's error, e.g. ``[Errno 111] Connection
    refused`` under anyio's ``All connection attempts failed``."""
    found: OSError | None = None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            found = cause
        cause = cause.__cause__ or cause.__context__
    if found is None or found.errno is None:
        return None
    reason = os.strerror(found.errno) if found.errno > 0 else found.strerror
    return f"[Errno {found.errno}] {reason}"


def call_type_for(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat_summary"
    if path.endswith("/embeddings"):
        return "create_embedding"
    return path.rstrip("/").rsplit("/", 1)[-1] or "unknown"


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # docingest itself
    return tuple(os.path.join(os.path.abspath(d), "") for d in dirs)


_LIBRARY_DIRS = _library_dirs()


def _short(filename: str) -> str:
    """Relative to the working directory when below it, else absolute."""
    relative = os.path.relpath(filename)
    return os.path.abspath(filename) if relative.startswith(os.pardir) else relative


def caller_site() -> str | None:
    """file:line of the frame that called the SDK: the first frame of the user's own code
    (outside the standard library, installed packages and docingest); failing that (a call made
    from a framework's worker thread), the first frame outside the SDK and the HTTP stack."""
    frame = sys._getframe(1)
    fallback: str | None = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(part in filename for part in _SKIP_FRAMES):
            special = filename.startswith("<")
            where = f"{filename if special else _short(filename)}:{frame.f_lineno}"
            if not special and not os.path.abspath(filename).startswith(_LIBRARY_DIRS):
                return where
            fallback = fallback or where
        frame = frame.f_back  # type: ignore[assignment]
    return fallback


_MASKS = (
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|`[^`\n]*`"), "<str>"),
    (
        re.compile(r"[\w.-]*[/\\][\w./\\-]+|\b[\w-]+\.(?:md|mdx|rst|txt|py|ipynb|json|ya?ml|html?)\b"),
        "<path>",
    ),
    (re.compile(r"\d+(?:[.,]\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)
TEMPLATE_PREFIX = 60


def prompt_template(call_type: str, payload: Mapping[str, Any]) -> str | None:
    """The request's prompt with its varying parts removed, to group calls that no chunk claims.

    For chat, each message gives ``role: first line``, cut at 60 characters, with URLs, quoted
    strings, paths and numbers masked; the text past the first line (usually the document) is
    dropped. Embeddings have no template beyond the model. Two calls built from the same
    f-string usually share a template; different steps of a pipeline usually do not.
    """
    model = payload.get("model")
    if call_type == "create_embedding":
        return f"embeddings {model}"
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return None
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        text = str(content or "").strip().split("\n", 1)[0]
        for pattern, mask in _MASKS:
            text = pattern.sub(mask, text)
        text = text.strip()
        if len(text) > TEMPLATE_PREFIX:
            text = text[:TEMPLATE_PREFIX].rstrip() + "…"
        parts.append(f"{message.get('role', '?')}: {text}")
    return " | ".join(parts) or None


class Counters:
    """One TokenCounter per encoding, shared by every transport of a run."""

    def __init__(self) -> None:
        self._by_encoding: dict[str, TokenCounter] = {}

    def for_model(self, model: str) -> TokenCounter:
        name = encoding_name_for_model(model)
        counter = self._by_encoding.get(name)
        if counter is None:
            counter = self._by_encoding[name] = TokenCounter(name)
        return counter


@dataclass(slots=True)
class _Pending:
    call_type: str
    model: str | None
    prompt_tokens: int
    chunks: list[ChunkShare]
    site: str | None
    attempt: int
    max_tokens: int | None
    inputs: int | None
    t0: float
    template: str | None = None
    rate_limit_wait: float | None = None
    retry_wait: float | None = None


class _Recorder:
    def __init__(self, stats: StatsCollector, counters: Counters | None, clock: Callable[[], float]) -> None:
        self.stats = stats
        self.counters = counters or Counters()
        self.clock = clock

    def before(self, request: httpx2.Request) -> _Pending:
        info = current_call.get()
        inputs: int | None = None
        payload: dict[str, Any] = {}
        if info is not None and info.prompt_tokens is not None:
            # the planner counted already: no need to parse a body that may be megabytes long
            call_type, model, prompt_tokens = info.call_type, info.model, info.prompt_tokens
            max_tokens: Any = info.max_tokens
            if info.input_tokens is not None:
                inputs = len(info.input_tokens)
        else:
            payload = _json_body(request)
            model = payload.get("model") if isinstance(payload.get("model"), str) else None
            call_type = info.call_type if info else call_type_for(request.url.path)
            prompt_tokens = self._count(call_type, payload, model or "")
            max_tokens = payload.get("max_tokens", payload.get("max_completion_tokens"))
            if call_type == "create_embedding":
                raw_input = payload.get("input")
                inputs = (
                    len(raw_input) if isinstance(raw_input, list) and not _is_token_list(raw_input) else 1
                )
        chunks = list(info.chunks) if info and info.chunks else []
        site = info.site if info else None
        template: str | None = None
        if not chunks:
            where = current_chunk.get()
            if where is not None:
                chunks = [ChunkShare(where[0], where[1], prompt_tokens)]
            else:
                site = site or caller_site()
                template = prompt_template(call_type, payload) if info is None else None
        t0 = self.clock()
        waited = request.extensions.get(WAIT_EXTENSION)
        rate_limit_wait = float(waited) if isinstance(waited, int | float) else None
        attempt = int(request.headers.get("x-stainless-retry-count", "0") or 0)
        retry_wait: float | None = None
        if info is not None and attempt > 0 and info.last_attempt_end is not None:
            # the gap since the previous attempt ended: the SDK's backoff or retry-after
            retry_wait = max(0.0, t0 - info.last_attempt_end - (rate_limit_wait or 0.0))
        return _Pending(
            call_type=call_type,
            model=model,
            prompt_tokens=prompt_tokens,
            chunks=chunks,
            site=site,
            attempt=attempt,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            inputs=inputs,
            t0=t0,
            template=template,
            rate_limit_wait=rate_limit_wait,
            retry_wait=retry_wait,
        )

    def _count(self, call_type: str, payload: Mapping[str, Any], model: str) -> int:
        counter = self.counters.for_model(model or "gpt-4o-mini")
        if call_type == "chat_summary":
            messages = payload.get("messages")
            return counter.count_messages(messages) if isinstance(messages, list) else 0
        if call_type == "create_embedding":
            raw = payload.get("input")
            if isinstance(raw, str):
                return counter.count(raw)
            if isinstance(raw, list):
                if _is_token_list(raw):
                    return len(raw)
                return sum(len(x) if isinstance(x, list) else counter.count(str(x)) for x in raw)
        return 0

    def failed(self, pending: _Pending, exc: BaseException, *, left: bool = True) -> None:
        """Record an attempt that got no HTTP answer (refused, dropped, timed out, or abandoned
        by an interrupt while the inner transport had it).

        One that failed before the request left (see ``failed_before_sending``) sent no token:
        its record says ``sent: false``, with 0 prompt tokens and the request's count in
        ``tokens_not_sent``. One that failed later counts its tokens as sent, and says why.
        ``left=False``: an interrupt came before the request began to be written (see
        ``_Departure``)."""
        sent = not failed_before_sending(exc)
        text, reason = str(exc), _os_reason(exc)
        if reason and reason not in text:
            text = f"{text}: {reason}" if text else reason
        note = MAYBE_BILLED_NOTE if sent else NOT_SENT_NOTE
        error = f"{type(exc).__name__}: {text} ({note})"
        if not isinstance(exc, Exception):  # cancelled, KeyboardInterrupt: no answer
            sent = left
            error = f"{type(exc).__name__}: " + (
                f"{INTERRUPTED} ({MAYBE_BILLED_NOTE})" if left else INTERRUPTED_UNSENT
            )
        # an interrupt that comes after the ledger was closed must still propagate as itself
        with contextlib.suppress(*(() if isinstance(exc, Exception) else (LedgerError,))):
            self.after(pending, status_code=None, body=None, error=error, sent=sent)

    def answered(self, pending: _Pending, response: Any, body: bytes) -> None:
        """Record an attempt that got an HTTP answer (whatever its status)."""
        self.after(pending, status_code=response.status_code, body=body, error=None, headers=response.headers)

    def after(
        self,
        pending: _Pending,
        *,
        status_code: int | None,
        body: bytes | None,
        error: str | None,
        headers: Mapping[str, str] | None = None,
        sent: bool = True,
    ) -> None:
        end = self.clock()
        latency = end - pending.t0
        info = current_call.get()
        if info is not None:
            info.last_attempt_end = end
        billed: dict[str, Any] | None = None
        ok = error is None and status_code is not None and 200 <= status_code < 300
        if body is not None and status_code is not None:
            parsed = _parse_json(body, headers)
            if parsed is None and ok:
                ok, error = False, "malformed JSON in a 2xx response"
            elif isinstance(parsed, dict):
                usage = parsed.get("usage")
                simulated = headers is not None and "x-docingest-dry-run" in headers
                if isinstance(usage, dict) and not simulated:  # a dry run has no bill
                    billed = {k: v for k, v in usage.items() if isinstance(v, int)}
                    details = usage.get("prompt_tokens_details")
                    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                        billed["cached_tokens"] = details["cached_tokens"]
                if not ok:
                    err = parsed.get("error")
                    if isinstance(err, dict):
                        code = err.get("code") or err.get("type")
                        error = (
                            f"{status_code} {code}: {err.get('message')}" if code else f"{status_code}: {err}"
                        )
            if not ok and error is None:
                error = f"HTTP {status_code}: {body[:300].decode('utf-8', 'replace')}"
        record: dict[str, Any] = {
            "type": "call",
            "call_type": pending.call_type,
            "model": pending.model,
            "attempt": pending.attempt,
            "status": "Success" if ok else "Fail",
            "http_status": status_code,
            "prompt_tokens": pending.prompt_tokens if sent else 0,
            "chunks": [[c.path, c.index, c.tokens if sent else 0] for c in pending.chunks],
            "t_s": round(pending.t0 - self.stats._t0, 6),
            "latency_s": round(latency, 6),
            "billed": billed,
        }
        if not sent:
            record["sent"] = False
            record["tokens_not_sent"] = pending.prompt_tokens
        if pending.max_tokens is not None:
            record["max_tokens"] = pending.max_tokens
        if pending.inputs is not None:
            record["inputs"] = pending.inputs
        if pending.site:
            record["site"] = pending.site
        if pending.template:
            record["template"] = pending.template
        if error:
            record["error_details"] = error
        if headers is not None and "retry-after" in headers:
            record["retry_after"] = headers["retry-after"]
        if pending.rate_limit_wait:
            record["rate_limit_wait_s"] = round(pending.rate_limit_wait, 6)
        if pending.retry_wait is not None:
            record["retry_wait_s"] = round(pending.retry_wait, 6)
        if ok and info is not None and info.deferred is not None:
            # the caller writes it once the result is stored (see CallInfo.deferred)
            info.deferred.append(record)
            return
        self.stats.record(record)


def _is_token_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(x, int) for x in value)


def _json_body(request: httpx2.Request) -> dict[str, Any]:
    try:
        data = json.loads(request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_json(body: bytes, headers: Mapping[str, str] | None) -> Any:
    ctype = (headers or {}).get("content-type", "application/json")
    try:
        if "text/event-stream" in ctype:  # streamed chat: the usage, if any, is in the last event
            last: Any = {}
            for line in body.decode("utf-8", "replace").splitlines():
                if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                    event = json.loads(line[5:])
                    if isinstance(event, dict) and event.get("usage"):
                        last = event
            return last
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _rebuild(response: httpx2.Response, body: bytes, request: httpx2.Request) -> httpx2.Response:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROP_HEADERS]
    return httpx2.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=request,
        extensions={k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")},
    )


class RecordingTransport(httpx2.BaseTransport):
    """Records every request sent through ``inner`` (sync clients)."""

    def __init__(
        self,
        inner: httpx2.BaseTransport,
        stats: StatsCollector,
        *,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self._rec = _Recorder(stats, counters, clock)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        pending = self._rec.before(request)
        try:
            response = self.inner.handle_request(request)
            body = response.read()
            response.close()
        except BaseException as exc:  # an interrupt too: the ledger keeps the attempt
            self._rec.failed(pending, exc)
            raise
        self._rec.answered(pending, response, body)
        return _rebuild(response, body, request)

    def close(self) -> None:
        self.inner.close()


class _Departure:
    """Whether httpx2's own transport began to write a request (its ``trace`` events; the
    request's own trace callback, if any, still gets them): an attempt interrupted before that,
    waiting for a free connection or connecting, never left this machine."""

    __slots__ = ("_inner", "started")

    def __init__(self, request: httpx2.Request) -> None:
        self.started = False
        self._inner = request.extensions.get("trace")
        request.extensions["trace"] = self

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith(".send_request_headers.started"):
            self.started = True
        if self._inner is not None:
            await self._inner(name, info)


class AsyncRecordingTransport(httpx2.AsyncBaseTransport):
    """Records every request sent through ``inner`` (async clients)."""

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport,
        stats: StatsCollector,
        *,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self._rec = _Recorder(stats, counters, clock)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        pending = self._rec.before(request)
        departure = _Departure(request) if isinstance(self.inner, httpx2.AsyncHTTPTransport) else None
        try:
            response = await self.inner.handle_async_request(request)
            body = await response.aread()
            await response.aclose()
        except BaseException as exc:  # an interrupt too: the ledger keeps the attempt
            self._rec.failed(pending, exc, left=departure is None or departure.started)
            raise
        self._rec.answered(pending, response, body)
        return _rebuild(response, body, request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def simulated_response(request: Any, options: SimOptions) -> Any:
    """What the API would answer ``request``, as a response of the request's own HTTP library
    (``httpx2``, or ``httpx`` for clients built on it: both have the same API)."""
    info: CallInfo | None = current_call.get()
    http = sys.modules[type(request).__module__.split(".", 1)[0]]
    try:
        payload = json.loads(request.read() or b"{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        error = {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}}
        return http.Response(400, json=error, request=request)
    status, body = respond(
        request.url.path,
        payload,
        options=options,
        prompt_tokens=info.prompt_tokens if info else None,
        input_tokens=info.input_tokens if info else None,
    )
    return http.Response(status, json=body, headers={"x-docingest-dry-run": "true"}, request=request)


class DryRunTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Answers every request as the OpenAI API would, without any network."""

    def __init__(self, options: SimOptions | None = None) -> None:
        self.options = options or SimOptions()

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = simulated_response(request, self.options)
        return response

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._answer(request)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._answer(request)
