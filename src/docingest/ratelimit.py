"""Client-side pacing and the budget: what decides *when* (and whether) a request may leave.

``RateLimiter`` keeps a sliding window of the requests and tokens admitted over the last
``window`` seconds of an injectable clock, the rule OpenAI-style servers (and docingest's local
server) enforce, so that a paced run goes as fast as the limits allow and meets no 429. A request
weighs what the server counts against a tokens-per-minute limit: the prompt plus ``max_tokens``
for chat, the sum of the inputs for embeddings. Any schedule within a sliding window is also
within a token bucket of the same limit, so the pacing holds for both kinds of server.

The limiter learns from the answers (:meth:`RateLimiter.observe`):

- ``x-ratelimit-limit-*``: the limits themselves when the user set none (the lower one wins);
- ``x-ratelimit-remaining-*``: usage that is not ours (another process on the same key, the run
  killed a minute ago) is counted too, until the matching ``x-ratelimit-reset-*`` (a whole window
  when there is none), so it is not overrun;
- ``retry-after`` / ``retry-after-ms`` of a 429: nobody is admitted until it has passed.

The budget (:class:`docingest.budget.TokenBudget`) is checked per HTTP attempt, retries
included: an attempt that would cross ``--max-tokens`` / ``--max-cost`` is never sent.

``GateTransport`` applies both in front of the recording transport, once per attempt, and puts
the time it waited in ``request.extensions["docingest_rate_limit_wait_s"]`` for the ledger.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import httpx2

from docingest.account import current_call
from docingest.budget import Reservation, TokenBudget
from docingest.errors import BudgetExceeded, failed_before_sending

WINDOW_SECONDS = 60.0
#: Added to the window: a request reaches the server a little after it is admitted here, so an
#: old request leaves the server's window a little after it leaves ours.
DEFAULT_MARGIN_SECONDS = 0.5
WAIT_EXTENSION = "docingest_rate_limit_wait_s"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations (``120ms``, ``1.5s``, ``2m3s``) or plain seconds, in seconds."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds), as the SDK reads them; None if absent."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


class RateLimiter:
    """Requests and tokens per minute, paced on the client (async; one event loop)."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        learn: bool = True,
        window: float = WINDOW_SECONDS,
        margin: float = DEFAULT_MARGIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError("rpm must be at least 1")
        if tpm is not None and tpm < 1:
            raise ValueError("tpm must be at least 1")
        self.rpm = rpm
        self.tpm = tpm
        self.learn = learn
        self.window = window + margin
        self._clock = clock
        self._sleep = sleep
        self._events: deque[tuple[float, int, int]] = deque()  # (time, requests, tokens)
        self._requests = 0
        self._tokens = 0
        # usage the server reports beyond ours: kind -> (until, amount); the latest report wins
        self._external: dict[str, tuple[float, int]] = {}
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._mutex = threading.Lock()  # observe() may be called from any thread
        self.learned: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self._paused_until > 0

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] <= horizon:
            _, requests, tokens = self._events.popleft()
            self._requests -= requests
            self._tokens -= tokens

    def _theirs(self, kind: str, now: float) -> int:
        until, amount = self._external.get(kind, (0.0, 0))
        return amount if until > now else 0

    def usage(self) -> tuple[int, int]:
        """(requests, tokens) in the window now, ours and what the server told us of others'."""
        with self._mutex:
            now = self._clock()
            self._expire(now)
            return (
                self._requests + self._theirs("requests", now),
                self._tokens + self._theirs("tokens", now),
            )

    def delay(self, tokens: int) -> float:
        """Seconds until a request weighing ``tokens`` may be admitted (0: now)."""
        with self._mutex:
            now = self._clock()
            self._expire(now)
            wait = max(0.0, self._paused_until - now)
            used_r = self._requests + self._theirs("requests", now)
            used_t = self._tokens + self._theirs("tokens", now)
            if self.rpm is not None and used_r + 1 > self.rpm:
                wait = max(wait, self._free_at(now, "requests", used_r + 1 - self.rpm))
            if self.tpm is not None and used_t + tokens > self.tpm and used_t > 0:
                # a request heavier than the whole limit goes alone, into an empty window
                need = used_t if tokens > self.tpm else used_t + tokens - self.tpm
                wait = max(wait, self._free_at(now, "tokens", need))
            return wait

    def _free_at(self, now: float, kind: str, need: int) -> float:
        """Seconds until ``need`` requests or tokens have left the window."""
        leaving = [(at + self.window, r if kind == "requests" else t) for at, r, t in self._events]
        if self._theirs(kind, now):
            until, amount = self._external[kind]
            leaving.append((until, amount))
            leaving.sort()
        freed = 0
        for when, amount in leaving:
            freed += amount
            if freed >= need:
                return max(0.0, when - now)
        return self.window

    def _admit(self, tokens: int) -> None:
        with self._mutex:
            now = self._clock()
            self._expire(now)
            self._events.append((now, 1, tokens))
            self._requests += 1
            self._tokens += tokens

    async def acquire(self, tokens: int) -> float:
        """Wait until a request weighing ``tokens`` fits, count it in; return the seconds waited."""
        if not self.enabled:
            self._admit(tokens)
            return 0.0
        if self._lock is None:
            self._lock = asyncio.Lock()
        start = self._clock()
        async with self._lock:  # first come, first served
            while (wait := self.delay(tokens)) > 0:
                await self._sleep(wait)
            self._admit(tokens)
        return self._clock() - start

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` (a 429's ``retry-after``)."""
        with self._mutex:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, status_code: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer's rate-limit headers (see the module docstring)."""
        if status_code == 429:
            seconds = retry_after_seconds(headers)
            if seconds is not None:
                self.pause(seconds)
        if not self.learn:
            return
        for kind in ("requests", "tokens"):
            limit = _int_header(headers, f"x-ratelimit-limit-{kind}")
            remaining = _int_header(headers, f"x-ratelimit-remaining-{kind}")
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if limit is None or limit < 1:
                continue
            with self._mutex:
                current = self.rpm if kind == "requests" else self.tpm
                if current is None or limit < current:
                    self.learned[kind] = limit
                    if kind == "requests":
                        self.rpm = limit
                    else:
                        self.tpm = limit
                if remaining is None:
                    continue
                now = self._clock()
                self._expire(now)
                ours = self._requests if kind == "requests" else self._tokens
                theirs = limit - remaining - ours
                if theirs > 0:
                    self._external[kind] = (now + (self.window if reset is None else reset), theirs)
                else:
                    self._external.pop(kind, None)


def _weigh(request: httpx2.Request) -> tuple[int, int, str | None]:
    """(prompt tokens, max completion tokens, model) of a request, from the planner when it counted."""
    info = current_call.get()
    if info is not None and info.prompt_tokens is not None:
        return info.prompt_tokens, info.max_tokens or 0, info.model
    from docingest.simulate import count_request

    try:
        payload = json.loads(request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return 0, 0, None
    if not isinstance(payload, dict):
        return 0, 0, None
    counts = count_request(request.url.path, payload)
    prompt = sum(counts.input_tokens) if counts.input_tokens is not None else counts.prompt_tokens or 0
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    return prompt, counts.max_tokens or 0, model


def _completion_tokens(response: httpx2.Response) -> int | None:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        usage = json.loads(response.content).get("usage")
    except (ValueError, AttributeError, httpx2.ResponseNotRead):
        return None
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) else None


BudgetRefused = Callable[[httpx2.Request, str], None]


class GateTransport(httpx2.AsyncBaseTransport):
    """Budget check, then rate-limit pacing, then ``inner`` (the recording transport), per attempt."""

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport,
        *,
        limiter: RateLimiter | None = None,
        budget: TokenBudget | None = None,
        on_refused: BudgetRefused | None = None,
    ) -> None:
        self.inner = inner
        self.limiter = limiter
        self.budget = budget
        self.on_refused = on_refused

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        prompt, completion, model = _weigh(request)
        reservation: Reservation | None = None
        if self.budget is not None and self.budget.enabled:
            try:
                reservation = self.budget.reserve(prompt, completion, model)
            except BudgetExceeded as exc:
                if self.on_refused is not None:
                    self.on_refused(request, str(exc))
                raise
        ok = False
        sent = False  # until handed to the recording transport and the network under it
        completion_billed: int | None = None
        try:
            if self.limiter is not None:
                request.extensions[WAIT_EXTENSION] = await self.limiter.acquire(prompt + completion)
            sent = True
            response = await self.inner.handle_async_request(request)
            if self.limiter is not None:
                self.limiter.observe(response.status_code, response.headers)
            ok = 200 <= response.status_code < 300
            if ok and reservation is not None and completion:
                completion_billed = _completion_tokens(response)
            return response
        except BaseException as exc:  # cancelled while waiting for its turn: nothing to bill either
            sent = sent and not failed_before_sending(exc)  # nothing left the machine: nothing to bill
            raise
        finally:
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, ok=ok, completion_tokens=completion_billed, sent=sent)

    async def aclose(self) -> None:
        await self.inner.aclose()
