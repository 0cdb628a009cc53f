"""A local HTTP server speaking OpenAI's wire format, for tests, benchmarks and rehearsals.

``POST /v1/chat/completions`` and ``POST /v1/embeddings`` are answered by
:func:`docingest.simulate.respond`, so ``usage`` is counted with docingest's own tokenizer and
a dry run answers exactly like this server. Every request needs ``Authorization: Bearer <key>``
(any non-empty key; keys are never logged).

Each request goes through, in order:

1. authentication (401 without a bearer key);
2. the first injected :class:`Fault` that applies to the request's number (1-based, over all
   requests the server received);
3. the rate limits (``rpm``, ``tpm`` over a sliding 60 s window of the injectable ``clock``;
   a request weighs its prompt tokens plus its ``max_tokens`` for chat, the tokens of its
   inputs for embeddings; rejected requests use no capacity);
4. the simulated API.

``latency`` seconds are waited before every answer, in the request's own thread, so slow
answers do not hold up other connections.

Command line::

    python -m docingest.testing.openai_server --port 8000 --latency-ms 100 --fault 429:every=3
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import random
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, cast, get_args

from docingest import simulate
from docingest.simulate import SimOptions

FaultKind = Literal["429", "500", "503", "timeout", "drop", "malformed", "context_length"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

WINDOW_SECONDS = 60.0

_FAULT_BODIES: dict[str, tuple[int, dict[str, Any]]] = {
    "500": (
        500,
        simulate.error_body(
            "The server had an error while processing your request. Sorry about that!", type="server_error"
        ),
    ),
    "503": (
        503,
        simulate.error_body(
            "The server is overloaded or not ready yet.", type="server_error", code="service_unavailable"
        ),
    ),
}


@dataclass(frozen=True)
class Fault:
    """A failure to inject.

    The fault applies to a request when its number is in ``on``, or is a multiple of ``every``,
    or a draw of a RNG seeded with ``(seed, number)`` falls below ``rate``; with none of the
    three set it applies to every request. ``only`` restricts it to one endpoint
    (``"chat"`` or ``"embeddings"``). ``retry_after`` (seconds) is sent with ``429``; ``delay``
    (seconds) is how long ``timeout`` waits before answering.
    """

    kind: FaultKind
    rate: float | None = None
    on: frozenset[int] = frozenset()
    every: int | None = None
    retry_after: float = 1.0
    delay: float = 30.0
    seed: int = 0
    only: Literal["chat", "embeddings"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {self.rate}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"fault every= must be at least 1, got {self.every}")
        if self.only not in (None, "chat", "embeddings"):
            raise ValueError(f"fault only= must be 'chat' or 'embeddings', got {self.only!r}")

    def applies(self, number: int, path: str = "") -> bool:
        """Whether the request with this 1-based number (and path) gets this fault."""
        if self.only == "chat" and not path.rstrip("/").endswith("chat/completions"):
            return False
        if self.only == "embeddings" and not path.rstrip("/").endswith("embeddings"):
            return False
        if self.rate is None and not self.on and self.every is None:
            return True
        if number in self.on or (self.every is not None and number % self.every == 0):
            return True
        return self.rate is not None and random.Random(f"{self.seed}:{number}").random() < self.rate


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND[:key=value[,key=value]...]``, e.g. ``429:every=3,retry_after=1``.

    Keys: ``rate`` (0..1), ``on`` (request numbers; further numbers follow after commas, as in
    ``drop:on=5,9``), ``every``, ``retry_after``, ``delay``, ``seed``, ``only`` (chat|embeddings).
    """
    kind, _, rest = spec.strip().partition(":")
    values: dict[str, str] = {}
    on: list[int] = []
    last = ""
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            if last != "on":
                raise ValueError(f"bad fault spec {spec!r}: {item!r} is not key=value")
            key, value = "on", item
        key = key.strip().replace("-", "_")
        last = key
        if key == "on":
            on.append(_parse(spec, key, value, int))
        elif key in ("rate", "every", "retry_after", "delay", "seed", "only"):
            values[key] = value.strip()
        else:
            raise ValueError(
                f"bad fault spec {spec!r}: unknown key {key!r} "
                "(use rate, on, every, retry_after, delay, seed, only)"
            )
    if kind not in FAULT_KINDS:
        raise ValueError(f"bad fault spec {spec!r}: kind must be one of {', '.join(FAULT_KINDS)}")
    return Fault(
        kind=cast(FaultKind, kind),
        rate=_parse(spec, "rate", values["rate"], float) if "rate" in values else None,
        on=frozenset(on),
        every=_parse(spec, "every", values["every"], int) if "every" in values else None,
        retry_after=_parse(spec, "retry_after", values.get("retry_after", "1"), float),
        delay=_parse(spec, "delay", values.get("delay", "30"), float),
        seed=_parse(spec, "seed", values.get("seed", "0"), int),
        only=cast(Literal["chat", "embeddings"] | None, values.get("only")),
    )


def _parse(spec: str, key: str, value: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"bad fault spec {spec!r}: {key}={value!r} is not a valid {kind.__name__}") from None


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received (the API key is never kept)."""

    number: int
    method: str
    path: str
    model: str | None
    status: int | None  # None: the connection was dropped without an answer
    usage: dict[str, Any] | None  # the usage the server computed, when it answered 200
    fault: str | None  # the injected fault kind, if any
    rate_limited: bool = False  # a 429 from the server's own rpm/tpm limits
    headers: dict[str, str] = field(default_factory=dict)  # response headers sent


def _duration(seconds: float) -> str:
    """OpenAI's style for reset times: ``120ms``, ``1.5s``, ``2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class RateLimiter:
    """Requests and tokens per minute over a sliding window of ``clock`` time. Thread-safe."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._window = window
        self._events: deque[tuple[float, int]] = deque()  # (time, tokens) of admitted requests
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def acquire(self, tokens: int) -> tuple[bool, float, dict[str, str]]:
        """Admit a request weighing ``tokens``: (admitted, retry-after seconds, ratelimit headers)."""
        with self._lock:
            now = self._clock()
            while self._events and self._events[0][0] <= now - self._window:
                self._events.popleft()
            used_requests = len(self._events)
            used_tokens = sum(t for _, t in self._events)
            wait = 0.0
            if self.rpm is not None and used_requests + 1 > self.rpm:
                # the oldest requests that must leave the window before one more fits
                wait = max(wait, self._events[used_requests - self.rpm][0] + self._window - now)
            if self.tpm is not None and used_tokens + tokens > self.tpm:
                if tokens > self.tpm:
                    wait = max(wait, self._window)
                else:
                    freed = 0
                    for at, t in self._events:
                        freed += t
                        if used_tokens - freed + tokens <= self.tpm:
                            wait = max(wait, at + self._window - now)
                            break
            admitted = wait <= 0
            if admitted:
                self._events.append((now, tokens))
                used_requests += 1
                used_tokens += tokens
            oldest = self._events[0][0] + self._window - now if self._events else 0.0
            headers: dict[str, str] = {}
            if self.rpm is not None:
                headers["x-ratelimit-limit-requests"] = str(self.rpm)
                headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - used_requests))
                headers["x-ratelimit-reset-requests"] = _duration(oldest)
            if self.tpm is not None:
                headers["x-ratelimit-limit-tokens"] = str(self.tpm)
                headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - used_tokens))
                headers["x-ratelimit-reset-tokens"] = _duration(oldest)
            return admitted, wait, headers


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(math.ceil(seconds * 1000))}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.owner.stopping.is_set():
            return  # the client went away, or we are shutting down
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "docingest-openai-sim"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; server.requests is the log

    def do_POST(self) -> None:
        self.server.owner._handle(self)

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class OpenAIServer:
    """The local OpenAI-compatible server, serving from a background thread.

    >>> with OpenAIServer(latency=0.1) as server:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="x")
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        faults: Iterable[Fault] = (),
        options: SimOptions = simulate.DEFAULT_OPTIONS,
        clock: Callable[[], float] = time.monotonic,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"refusing to serve on non-loopback host {host!r}: use 127.0.0.1 or localhost, "
                "or pass allow_remote=True (--allow-remote) to expose the server"
            )
        self.host = host
        self.port = port
        self.latency = latency
        self.faults = tuple(faults)
        self.options = options
        self.limiter = RateLimiter(rpm, tpm, clock=clock)
        self.stopping = threading.Event()
        self._records: list[RequestRecord] = []
        self._count = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes delayed answers, closes open connections, frees the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, for ``openai.OpenAI(base_url=...)``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    # --- the log -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._lock:
            return sorted(self._records, key=lambda r: r.number)

    @property
    def received(self) -> int:
        """How many requests have arrived so far, those still waiting for their answer included."""
        with self._lock:
            return self._count

    def usage_totals(self) -> dict[str, int]:
        """Usage summed over the well-formed 200 answers (faulted requests are not counted)."""
        totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for record in self.requests:
            if record.status == 200 and record.fault is None and record.usage is not None:
                totals["requests"] += 1
                for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    totals[key] += int(record.usage.get(key, 0))
        return totals

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    # --- answering ---------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        with self._lock:
            self._count += 1
            number = self._count
        method = handler.command
        path = handler.path.split("?", 1)[0]
        raw = handler.read_body()
        payload: Any = None
        parse_error = False
        if method == "POST":
            try:
                payload = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError):
                parse_error = True
        model = payload.get("model") if isinstance(payload, dict) else None
        model = model if isinstance(model, str) else None

        def answer(
            status: int | None,
            body: dict[str, Any] | None,
            headers: dict[str, str] | None = None,
            *,
            fault: str | None = None,
            rate_limited: bool = False,
            raw_body: bytes | None = None,
        ) -> None:
            headers = {"x-request-id": f"req_sim_{number}", **(headers or {})}
            usage = body.get("usage") if status == 200 and body is not None else None
            self._record(
                RequestRecord(number, method, path, model, status, usage, fault, rate_limited, headers)
            )
            if status is None:
                handler.close_connection = True
                return
            data = raw_body if raw_body is not None else json.dumps(body).encode()
            handler.send(status, data, headers)

        if not self._authorized(handler.headers.get("authorization")):
            self._wait(self.latency)
            answer(
                401,
                simulate.error_body(
                    "You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    code="invalid_api_key",
                ),
            )
            return
        if method != "POST":
            self._wait(self.latency)
            answer(404, simulate.error_body(f"Invalid URL ({method} {path})"))
            return

        fault = next((f for f in self.faults if f.applies(number, path)), None)
        if fault is not None and fault.kind == "drop":
            self._wait(self.latency)
            answer(None, None, fault="drop")
            return
        if fault is not None and fault.kind == "timeout":
            self._wait(fault.delay)
            if self.stopping.is_set():
                answer(None, None, fault="timeout")
                return

        if parse_error:
            self._wait(self.latency)
            answer(
                400,
                simulate.error_body(
                    "We could not parse the JSON body of your request. (HINT: This likely means you "
                    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                    "but what was sent was not valid JSON.)"
                ),
            )
            return

        counts = simulate.count_request(path, payload) if isinstance(payload, dict) else None
        if fault is not None and fault.kind in ("429", "500", "503", "context_length"):
            self._wait(self.latency)
            if fault.kind == "429":
                answer(429, _rate_limit_body(fault.retry_after), self._fault_429_headers(fault), fault="429")
            elif fault.kind == "context_length":
                window = self.options.context_window(model or "")
                tokens = counts.prompt_tokens if counts and counts.prompt_tokens else window + 1
                answer(400, simulate.context_length_error(window, tokens), fault="context_length")
            else:
                status, body = _FAULT_BODIES[fault.kind]
                answer(status, body, fault=fault.kind)
            return

        limit_headers: dict[str, str] = {}
        if self.limiter.enabled and counts is not None:
            admitted, wait, limit_headers = self.limiter.acquire(counts.rate_limit_tokens)
            if not admitted:
                self._wait(self.latency)
                answer(
                    429, _rate_limit_body(wait), {**limit_headers, **_retry_headers(wait)}, rate_limited=True
                )
                return

        status, body = simulate.respond(
            path,
            payload,
            options=self.options,
            prompt_tokens=counts.prompt_tokens if counts else None,
            input_tokens=counts.input_tokens if counts else None,
        )
        if fault is None or fault.kind != "timeout":
            self._wait(self.latency)
        headers = {**limit_headers, "openai-processing-ms": str(round(self.latency * 1000))}
        if fault is not None and fault.kind == "malformed" and status == 200:
            data = json.dumps(body).encode()
            answer(status, body, headers, fault="malformed", raw_body=data[: len(data) // 2])
            return
        answer(status, body, headers, fault=fault.kind if fault is not None else None)

    def _fault_429_headers(self, fault: Fault) -> dict[str, str]:
        headers = _retry_headers(fault.retry_after)
        reset = _duration(fault.retry_after)
        headers["x-ratelimit-limit-requests"] = str(self.limiter.rpm or 500)
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = reset
        headers["x-ratelimit-limit-tokens"] = str(self.limiter.tpm or 200_000)
        headers["x-ratelimit-remaining-tokens"] = "0"
        headers["x-ratelimit-reset-tokens"] = reset
        return headers

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.stopping.wait(seconds)

    @staticmethod
    def _authorized(header: str | None) -> bool:
        if not header:
            return False
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and bool(key.strip())


def _rate_limit_body(retry_after: float) -> dict[str, Any]:
    return simulate.error_body(
        f"Rate limit reached (docingest simulated server). Please try again in {_duration(retry_after)}.",
        type="requests",
        code="rate_limit_exceeded",
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m docingest.testing.openai_server",
        description="A local OpenAI-compatible server (chat completions and embeddings) for tests, "
        "benchmarks and rehearsals. Usage is counted with docingest's tokenizer.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute limit")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute limit")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault: KIND[:key=value,...], KIND one of "
        f"{', '.join(FAULT_KINDS)}; keys rate, on, every, retry_after, delay, seed, only "
        "(e.g. 429:every=3,retry_after=1  500:rate=0.1  drop:on=5,9)",
    )
    parser.add_argument("--summary-tokens", type=int, default=SimOptions.summary_tokens)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = [parse_fault(spec) for spec in args.fault]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.allow_remote and not is_loopback(args.host):
        parser.error(f"refusing non-loopback --host {args.host!r}: add --allow-remote to expose the server")
    server = OpenAIServer(
        host=args.host,
        port=args.port,
        latency=args.latency_ms / 1000,
        rpm=args.rpm,
        tpm=args.tpm,
        faults=faults,
        options=SimOptions(summary_tokens=args.summary_tokens),
        allow_remote=args.allow_remote,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with server:
        print(f"listening on {server.base_url}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
