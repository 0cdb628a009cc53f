"""The budget: ``--max-tokens`` and ``--max-cost``, the forecast checked against them before the
first call, and the per-attempt reservation that stops a run before it crosses them.

Tokens counted against ``--max-tokens``: the prompt tokens of every attempt sent (retries
included) plus the completion tokens, reserved at ``max_tokens`` (the most an answer can bill)
until the answer says what it billed. A failed attempt's prompt counts (it was sent), its
completion does not. USD for ``--max-cost`` is priced the same way by :mod:`docingest.cost`, at
the prices of the report (``--price-file`` first).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docingest.errors import BudgetExceeded, ConfigError
from docingest.plan import MAX_EMBEDDING_REQUEST_TOKENS

HOW_TO_LOWER = (
    "lower it with --context none (no context message per chunk), a smaller --summary-tokens, "
    "--include/--exclude to ingest fewer files, or raise the budget"
)


@dataclass(slots=True)
class Reservation:
    prompt_tokens: int
    completion_tokens: int
    model: str | None
    usd: float


Pricer = Callable[[str | None, int, int], float | None]


class TokenBudget:
    """``--max-tokens`` (prompt tokens sent plus completion tokens) and ``--max-cost`` (USD)."""

    def __init__(
        self, *, max_tokens: int | None = None, max_cost: float | None = None, pricer: Pricer | None = None
    ) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost if pricer is not None else None
        self.pricer = pricer
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self.refused: str | None = None  # the first refusal: nothing is sent after it
        self._mutex = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def _usd(self, model: str | None, prompt: int, completion: int) -> float:
        value = self.pricer(model, prompt, completion) if self.pricer is not None else None
        return value or 0.0

    def reserve(self, prompt_tokens: int, completion_tokens: int, model: str | None) -> Reservation:
        """Count an attempt in before it is sent, or raise ``BudgetExceeded`` (and refuse all after)."""
        usd = self._usd(model, prompt_tokens, completion_tokens) if self.max_cost is not None else 0.0
        with self._mutex:
            tokens = self.spent_tokens + prompt_tokens + completion_tokens
            if self.refused is None:
                if self.max_tokens is not None and tokens > self.max_tokens:
                    self.refused = (
                        f"sending {prompt_tokens:,} prompt tokens (+{completion_tokens:,} completion "
                        f"at most) would bring the run to {tokens:,} tokens, over --max-tokens "
                        f"{self.max_tokens:,} ({self.spent_tokens:,} spent)"
                    )
                elif self.max_cost is not None and self.spent_usd + usd > self.max_cost:
                    self.refused = (
                        f"the next request (${usd:.6f} at most) would bring the run to "
                        f"${self.spent_usd + usd:.6f}, over --max-cost ${self.max_cost:.6f}"
                    )
            if self.refused is not None:
                raise BudgetExceeded(self.refused)
            self.spent_tokens = tokens
            self.spent_usd += usd
            return Reservation(prompt_tokens, completion_tokens, model, usd)

    def settle(
        self, reservation: Reservation, *, ok: bool, completion_tokens: int | None, sent: bool = True
    ) -> None:
        """After the answer: a failed attempt has no completion; a billed one costs what it billed;
        one that never left the machine (``sent=False``: connection refused...) costs nothing."""
        actual = reservation.completion_tokens if completion_tokens is None else completion_tokens
        actual = min(actual, reservation.completion_tokens) if ok else 0
        prompt = reservation.prompt_tokens if sent else 0
        usd = 0.0
        if self.max_cost is not None and sent:
            usd = self._usd(reservation.model, prompt, actual)
        with self._mutex:
            self.spent_tokens -= reservation.prompt_tokens - prompt + reservation.completion_tokens - actual
            self.spent_usd -= reservation.usd - usd


@dataclass(slots=True)
class Forecast:
    """The requests a run would send: prompt tokens, the completion tokens they may bring back."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the sum of max_tokens: the most the answers can bill
    usd: float | None = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, model: str, prompt: int, completion: int, budget: TokenBudget) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if budget.pricer is not None and self.usd is not None:
            price = budget.pricer(model, prompt, completion)
            self.usd = None if price is None else self.usd + price

    def as_record(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
            "usd": None if self.usd is None else round(self.usd, 6),
        }

    def over(self, max_tokens: int | None, max_cost: float | None) -> str | None:
        """Why the forecast does not fit the budget (None: it fits)."""
        if max_tokens is not None and self.tokens > max_tokens:
            return (
                f"the forecast is {self.tokens:,} tokens ({self.prompt_tokens:,} prompt tokens in "
                f"{self.requests:,} requests + up to {self.completion_tokens:,} completion tokens), "
                f"over --max-tokens {max_tokens:,}"
            )
        if max_cost is not None and self.usd is not None and self.usd > max_cost:
            return f"the forecast costs up to ${self.usd:.4f}, over --max-cost ${max_cost:.4f}"
        return None


def pricer_for(
    max_cost: float | None, models: Sequence[str], price_file: Path | None = None
) -> Pricer | None:
    """USD of (model, prompt, completion) for --max-cost, at the prices the report uses
    (``price_file`` first, then genai-prices); None when there is no cost budget."""
    if max_cost is None:
        return None
    try:
        from docingest.cost import MTOK, PriceTable
    except ImportError as exc:  # pragma: no cover - cost.py ships with docingest
        raise ConfigError(f"--max-cost needs docingest.cost ({exc}); use --max-tokens instead") from exc
    table = PriceTable.from_file(price_file)
    for model in models:
        if table.price(model) is None:
            raise ConfigError(
                f"--max-cost: no price is known for model {model!r}, so the cost cannot be checked; "
                "give its price with --price-file, or use --max-tokens instead"
            )

    def price(model: str | None, prompt: int, completion: int) -> float | None:
        p = table.price(model)
        return None if p is None else (prompt * p.input + completion * p.output) / MTOK

    return price


def batch_sizes(tokens: list[int], max_inputs: int) -> Iterator[int]:
    """The tokens of each embeddings request :func:`~docingest.plan.batches` would make."""
    count = total = 0
    for n in tokens:
        if count and (count >= max_inputs or total + n > MAX_EMBEDDING_REQUEST_TOKENS):
            yield total
            count = total = 0
        count += 1
        total += n
    if count:
        yield total
