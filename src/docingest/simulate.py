"""How the OpenAI API would answer a request: pure functions, no I/O.

Both the dry-run transport and the local test server (``docingest.testing.openai_server``)
answer through :func:`respond`, so a dry run sees exactly what the server, and as far as
docingest can tell the real API, would say: the same ``usage`` (counted with docingest's own
tokenizer), the same ``context_length_exceeded`` errors, the same embedding limits.

Answers are deterministic functions of the request:

- a chat completion's content is the start of the last user message, cut to
  ``min(summary_tokens, max_tokens)`` tokens of the chat model's encoding;
- an embedding is a hashed bag of words (lowercased words and word bigrams, log-damped,
  L2-normalised, float32), so texts that share words are close and search works.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from docingest.tokens import TokenCounter, encoding_name_for_model

#: Context windows (prompt + completion tokens) by model-name prefix; the longest prefix wins.
DEFAULT_CONTEXT_WINDOWS: Mapping[str, int] = MappingProxyType(
    {
        "gpt-5": 400_000,
        "gpt-4.1": 1_047_576,
        "gpt-4o": 128_000,
        "gpt-4o-mini": 128_000,
        "gpt-4-turbo": 128_000,
        "gpt-4-32k": 32_768,
        "gpt-4": 8_192,
        "gpt-3.5-turbo": 16_385,
        "o1": 200_000,
        "o3": 200_000,
        "o4-mini": 200_000,
    }
)
#: Window of a chat model no prefix matches.
UNKNOWN_MODEL_CONTEXT_WINDOW = 128_000

#: Native vector sizes of the embedding models.
DEFAULT_EMBEDDING_DIMS: Mapping[str, int] = MappingProxyType(
    {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    }
)
UNKNOWN_EMBEDDING_DIMS = 1536

#: OpenAI's limits on one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192
MAX_EMBEDDING_REQUEST_TOKENS = 300_000

#: ``created`` timestamp of every simulated completion (2025-01-01T00:00:00Z), fixed for determinism.
CREATED = 1_735_689_600

_BIGRAM_WEIGHT = 1.0
_WORD = re.compile(r"\w+")
#: Words too common to tell texts apart; left out of the vectors as search engines do.
_STOPWORDS = frozenset(
    "a an and are as at be by can do for from has have how i if in is it its of on or that the "
    "this to was we were what when where which will with you your".split()
)


@dataclass(frozen=True)
class SimOptions:
    """Knobs of the simulated API."""

    summary_tokens: int = 48
    context_windows: Mapping[str, int] = field(default_factory=lambda: DEFAULT_CONTEXT_WINDOWS)
    embedding_dims: Mapping[str, int] = field(default_factory=lambda: DEFAULT_EMBEDDING_DIMS)

    def context_window(self, model: str) -> int:
        return _by_prefix(self.context_windows, model, UNKNOWN_MODEL_CONTEXT_WINDOW)

    def embedding_dimensions(self, model: str) -> int:
        return _by_prefix(self.embedding_dims, model, UNKNOWN_EMBEDDING_DIMS)


DEFAULT_OPTIONS = SimOptions()


@dataclass(frozen=True)
class RequestCount:
    """Token counts of a request, taken before answering it.

    ``prompt_tokens`` is set for chat, ``input_tokens`` (one count per input) for embeddings.
    ``rate_limit_tokens`` is what the request weighs against a tokens-per-minute limit:
    the prompt plus the requested ``max_tokens`` for chat (as OpenAI estimates it), the sum
    of the inputs for embeddings.
    """

    prompt_tokens: int | None = None
    input_tokens: tuple[int, ...] | None = None
    max_tokens: int | None = None

    @property
    def rate_limit_tokens(self) -> int:
        if self.input_tokens is not None:
            return sum(self.input_tokens)
        return (self.prompt_tokens or 0) + (self.max_tokens or 0)


def _by_prefix(table: Mapping[str, int], model: str, default: int) -> int:
    base = model.split("/")[-1]
    best = ""
    for prefix in table:
        if base.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return table[best] if best else default


@functools.cache
def _counter(encoding: str) -> TokenCounter:
    return TokenCounter(encoding)


def counter_for(model: str) -> TokenCounter:
    """The (shared, thread-safe) token counter for a model's encoding."""
    return _counter(encoding_name_for_model(model))


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error body in OpenAI's wire format."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _endpoint(path: str) -> str | None:
    path = path.split("?", 1)[0].rstrip("/")
    for endpoint in ("chat/completions", "embeddings"):
        if path == endpoint or path.endswith("/" + endpoint):
            return endpoint
    return None


def count_request(path: str, payload: Mapping[str, Any]) -> RequestCount:
    """Token counts of a request; empty (all ``None``) when the request is malformed."""
    endpoint = _endpoint(path)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("model"), str):
        return RequestCount()
    model: str = payload["model"]
    if endpoint == "chat/completions":
        messages = payload.get("messages")
        if not _valid_messages(messages):
            return RequestCount()
        max_tokens = _max_tokens(payload)
        return RequestCount(
            prompt_tokens=counter_for(model).count_messages(messages),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )
    if endpoint == "embeddings":
        inputs = _embedding_inputs(payload.get("input"))
        if inputs is None:
            return RequestCount()
        return RequestCount(input_tokens=tuple(_count_inputs(model, inputs)))
    return RequestCount()


def respond(
    path: str,
    payload: Mapping[str, Any],
    *,
    options: SimOptions = DEFAULT_OPTIONS,
    prompt_tokens: int | None = None,
    input_tokens: Sequence[int] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body the API would return for a POST to ``path``.

    ``prompt_tokens`` (chat) and ``input_tokens`` (embeddings, one per input) are counts the
    caller already has; when ``None`` they are computed here with the model's tokenizer.
    """
    endpoint = _endpoint(path)
    if endpoint is None:
        return 404, error_body(f"Invalid URL (POST {path})")
    if not isinstance(payload, Mapping):
        return 400, error_body("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return 400, error_body("you must provide a model parameter")
    if endpoint == "chat/completions":
        return _chat(model, payload, options, prompt_tokens)
    return _embeddings(model, payload, options, input_tokens)


# --- chat -------------------------------------------------------------------------------


def _valid_messages(messages: object) -> TypeGuard[list[Mapping[str, Any]]]:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages)
    )


def _max_tokens(payload: Mapping[str, Any]) -> object:
    value = payload.get("max_completion_tokens")
    return payload.get("max_tokens") if value is None else value


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part["text"])
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _chat(
    model: str, payload: Mapping[str, Any], options: SimOptions, prompt_tokens: int | None
) -> tuple[int, dict[str, Any]]:
    messages = payload.get("messages")
    if messages is None:
        return 400, error_body(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        return 400, error_body(
            f"Invalid type for 'messages': expected an array, but got {type(messages).__name__} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        return 400, error_body(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            return 400, error_body(
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
    if payload.get("stream"):
        return 400, error_body(
            "stream=true is not supported by the docingest simulator",
            param="stream",
            code="unsupported_value",
        )
    max_tokens = _max_tokens(payload)
    param = "max_completion_tokens" if payload.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return 400, error_body(
            f"Invalid '{param}': integer below minimum value. Expected a value >= 1, but got "
            f"{max_tokens!r} instead.",
            param=param,
            code="integer_below_min_value",
        )

    counter = counter_for(model)
    prompt = counter.count_messages(messages) if prompt_tokens is None else prompt_tokens
    window = options.context_window(model)
    if prompt > window:
        return 400, context_length_error(window, prompt)
    if max_tokens is not None and prompt + max_tokens > window:
        return 400, error_body(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )

    user_texts = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    source = user_texts[-1] if user_texts else _text_of(messages[-1].get("content"))
    limit = options.summary_tokens if max_tokens is None else min(options.summary_tokens, max_tokens)
    content, truncated = _cut(counter, source, limit)
    completion = counter.count(content)
    cut_by_max_tokens = truncated and max_tokens is not None and max_tokens < options.summary_tokens
    body: dict[str, Any] = {
        "id": "chatcmpl-" + _digest([model, prompt, max_tokens, source])[:29],
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if cut_by_max_tokens else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_docingest_sim",
    }
    return 200, body


def context_length_error(window: int, tokens: int) -> dict[str, Any]:
    """The 400 body of a prompt longer than the model's context window."""
    return error_body(
        f"This model's maximum context length is {window} tokens. However, your messages resulted in "
        f"{tokens} tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def _cut(counter: TokenCounter, text: str, limit: int) -> tuple[str, bool]:
    """The start of ``text`` that re-encodes to exactly ``limit`` tokens (when it is that long).

    A prefix of a token sequence does not always re-encode to the same number of tokens (a cut
    inside a word or a multi-byte character), so nearby cut points are tried.
    """
    # Encode only a head of the text: ~6 characters per token covers prose and code; longer
    # tokens (base64, long words) need more, and a text with fewer than ``limit`` tokens in its
    # first ``16 * limit`` characters is encoded whole.
    for size in (limit * 6 + 64, limit * 16 + 256, len(text)):
        head = text[:size]
        tokens = counter.encode(head)
        whole = len(head) == len(text)
        if whole or len(tokens) > limit + 8:
            break
    if whole and len(tokens) <= limit:
        return text, False
    best = counter.decode(tokens[:limit])
    for k in (limit, *(limit + d for d in (1, -1, 2, -2, 3, -3, 4, -4) if 0 < limit + d < len(tokens))):
        candidate = counter.decode(tokens[:k])
        if "\ufffd" not in candidate and len(counter.encode(candidate)) == limit:
            return candidate, True
    return best, True


def _digest(parts: object) -> str:
    """A deterministic id from what identifies the answer (not the whole prompt: with the whole
    document in every request, hashing it all would cost more than the answer itself)."""
    raw = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


# --- embeddings -------------------------------------------------------------------------

_Input = str | list[int]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _embedding_inputs(raw: object) -> list[_Input] | None:
    """The inputs of an embeddings request, or ``None`` when ``input`` has the wrong shape."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(_is_int(x) for x in raw):
        return [list(raw)]
    if all(isinstance(x, str) for x in raw):
        return list(raw)
    if all(
        isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw
    ):
        return [list(x) for x in raw]
    return None


def _count_inputs(model: str, inputs: Sequence[_Input]) -> list[int]:
    counter = _counter(encoding_name_for_model(model))
    texts = [x for x in inputs if isinstance(x, str)]
    counts = iter(counter.count_many(texts))
    return [next(counts) if isinstance(x, str) else len(x) for x in inputs]


def _invalid_input() -> tuple[int, dict[str, Any]]:
    return 400, error_body(
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
    )


def _embeddings(
    model: str, payload: Mapping[str, Any], options: SimOptions, input_tokens: Sequence[int] | None
) -> tuple[int, dict[str, Any]]:
    raw = payload.get("input")
    if isinstance(raw, list) and len(raw) > MAX_EMBEDDING_INPUTS:
        return 400, error_body(
            f"Invalid 'input': array too long. Expected an array with maximum length "
            f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(raw)} instead.",
            param="input",
            code="array_above_max_length",
        )
    inputs = _embedding_inputs(raw)
    if inputs is None or any(len(x) == 0 for x in inputs):
        return _invalid_input()

    native = options.embedding_dimensions(model)
    dims = payload.get("dimensions")
    if dims is None:
        dims = native
    elif model.split("/")[-1].startswith("text-embedding-ada"):
        return 400, error_body("This model does not support specifying dimensions.", param="dimensions")
    elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= native:
        return 400, error_body(
            f"Invalid value for 'dimensions' = {dims!r}. Must be between 1 and {native}.",
            param="dimensions",
        )
    encoding_format = payload.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        return 400, error_body(
            f"Invalid value for 'encoding_format': {encoding_format!r}. Supported values are 'float' "
            "and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )

    counts = list(input_tokens) if input_tokens is not None else _count_inputs(model, inputs)
    for n in counts:
        if n > MAX_EMBEDDING_INPUT_TOKENS:
            return 400, error_body(
                f"This model's maximum context length is {MAX_EMBEDDING_INPUT_TOKENS} tokens, however you "
                f"requested {n} tokens ({n} in your prompt; 0 for the completion). Please reduce your "
                "prompt; or completion length."
            )
    total = sum(counts)
    if total > MAX_EMBEDDING_REQUEST_TOKENS:
        return 400, error_body(
            f"Requested {total} tokens, max {MAX_EMBEDDING_REQUEST_TOKENS} tokens per request",
            type="max_tokens_per_request",
            code="max_tokens_per_request",
        )

    counter = counter_for(model)
    try:
        texts = [x if isinstance(x, str) else counter.decode(x) for x in inputs]
    except (KeyError, ValueError, OverflowError):
        return _invalid_input()
    vectors = embed_texts(texts, dims)
    data: list[dict[str, Any]] = []
    for i, vec in enumerate(vectors):
        embedding: Any
        if encoding_format == "base64":
            embedding = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return 200, {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


_word_hash_cache: dict[str, int] = {}
_WORD_HASH_CACHE_LIMIT = 1 << 17  # ~20 MB: a docs vocabulary fits; unique ids do not grow memory
_BIGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def _word_hashes(words: list[str]) -> npt.NDArray[np.uint64]:
    """A 64-bit hash per word (never 0), remembered across calls: documents repeat their words."""
    cache = _word_hash_cache
    hashes = np.fromiter(map(cache.get, words, itertools.repeat(0)), dtype=np.uint64, count=len(words))
    missing = hashes == 0
    if missing.any():
        if len(cache) > _WORD_HASH_CACHE_LIMIT:
            cache.clear()
        new_words = list(itertools.compress(words, missing.tolist()))
        fresh = {
            w: int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") | 1
            for w in set(new_words)
        }
        cache.update(fresh)
        hashes[missing] = np.fromiter(
            map(fresh.__getitem__, new_words), dtype=np.uint64, count=len(new_words)
        )
    return hashes


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: spreads the bits of a combined hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def embed_texts(texts: Sequence[str], dims: int) -> npt.NDArray[np.float32]:
    """Deterministic unit vectors for ``texts``, shape ``(len(texts), dims)``, float32.

    Each lowercased word (weight 1) and word bigram (weight 1), stop words left out, is hashed
    to a column and a sign; counts are damped with ``log1p`` and each row is L2-normalised.
    A text without words gets a unit vector on a column chosen by the hash of the whole text.
    """
    n = len(texts)
    per_text = [[w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS] for text in texts]
    lengths = np.fromiter(map(len, per_text), dtype=np.int64, count=n)
    hashes = _word_hashes(list(itertools.chain.from_iterable(per_text)))
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    same_text = rows[:-1] == rows[1:]
    bigrams = _mix(hashes[:-1] * _BIGRAM_MULTIPLIER + hashes[1:])[same_text]
    all_hashes = np.concatenate([hashes, bigrams])
    all_rows = np.concatenate([rows, rows[:-1][same_text]])
    weights = np.concatenate([np.ones(hashes.size), np.full(bigrams.size, _BIGRAM_WEIGHT)])
    weights = np.where((all_hashes >> np.uint64(63)) == 1, -weights, weights)
    columns = (all_hashes % np.uint64(dims)).astype(np.int64)
    flat = np.bincount(all_rows * dims + columns, weights=weights, minlength=n * dims)
    matrix = flat.reshape(n, dims)
    matrix = np.sign(matrix) * np.log1p(np.abs(matrix))
    norms = np.linalg.norm(matrix, axis=1)
    for i in np.flatnonzero(norms == 0).tolist():
        whole = hashlib.blake2b(texts[i].encode(), digest_size=8).digest()
        matrix[i, int.from_bytes(whole, "little") % dims] = 1.0
        norms[i] = 1.0
    unit: npt.NDArray[np.float32] = (matrix / norms[:, None]).astype(np.float32)
    return unit


def cosine(
    a: Sequence[float] | npt.NDArray[np.float32], b: Sequence[float] | npt.NDArray[np.float32]
) -> float:
    """Cosine similarity of two vectors."""
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb) / denom if denom else math.nan
