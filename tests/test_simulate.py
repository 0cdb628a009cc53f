from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from docingest import simulate
from docingest.simulate import SimOptions, count_request, respond
from docingest.tokens import TokenCounter

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"

LONG_TEXTS = [
    "Docingest turns a repository's documentation into a knowledge base. " * 20,
    "Résumé naïve café: 日本語のテキストも数えます。 Ünïcödé everywhere, emoji 🚀🚀 and more. " * 15,
    "def f(x):\n    return {'a': [1, 2, 3], 'b': x ** 2}  # code-ish text\n" * 20,
    # long tokens: the first characters hold fewer tokens than the summary needs
    "x" * 4000,
    base64.b64encode(bytes(range(256)) * 12).decode() + " tail",
]


def chat(content: str, **extra: object) -> dict[str, object]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Summarise the chunk."},
            {"role": "user", "content": content},
        ],
        **extra,
    }


def test_chat_usage_is_exact():
    counter = TokenCounter("o200k_base")
    payload = chat(LONG_TEXTS[0])
    status, body = respond(CHAT, payload)
    assert status == 200
    content = body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] == counter.count_messages(payload["messages"])
    assert body["usage"]["completion_tokens"] == counter.count(content)
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_chat_uses_the_models_encoding():
    payload = {"model": "gpt-4", "messages": [{"role": "user", "content": LONG_TEXTS[1]}]}
    _, body = respond(CHAT, payload)
    assert body["usage"]["prompt_tokens"] == TokenCounter("cl100k_base").count_messages(payload["messages"])


@pytest.mark.parametrize("text", LONG_TEXTS)
@pytest.mark.parametrize(
    ("summary_tokens", "max_tokens", "finish"),
    [(48, None, "stop"), (48, 10, "length"), (20, 48, "stop"), (7, 7, "stop")],
)
def test_summary_is_exactly_min_of_summary_tokens_and_max_tokens(text, summary_tokens, max_tokens, finish):
    counter = TokenCounter("o200k_base")
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    _, body = respond(CHAT, chat(text, **extra), options=SimOptions(summary_tokens=summary_tokens))
    content = body["choices"][0]["message"]["content"]
    expected = summary_tokens if max_tokens is None else min(summary_tokens, max_tokens)
    assert counter.count(content) == expected
    assert body["usage"]["completion_tokens"] == expected
    assert text.startswith(content)
    assert body["choices"][0]["finish_reason"] == finish


def test_max_completion_tokens_is_honoured_like_max_tokens():
    _, body = respond(CHAT, chat(LONG_TEXTS[0], max_completion_tokens=5))
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_short_message_is_answered_whole():
    _, body = respond(CHAT, chat("Just a short note."))
    assert body["choices"][0]["message"]["content"] == "Just a short note."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == TokenCounter("o200k_base").count("Just a short note.")


def test_context_length_exceeded_by_the_prompt():
    messages = [{"role": "user", "content": "token " * 130_000}]
    n = TokenCounter("o200k_base").count_messages(messages)
    assert n > 128_000
    status, body = respond(CHAT, {"model": "gpt-4o-mini", "messages": messages})
    assert status == 400
    assert body == {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages "
            f"resulted in {n} tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def test_context_length_exceeded_by_prompt_plus_max_tokens():
    messages = [{"role": "user", "content": "token " * 5000}]
    n = TokenCounter("cl100k_base").count_messages(messages)
    ok_status, _ = respond(CHAT, {"model": "gpt-4", "messages": messages, "max_tokens": 8192 - n})
    assert ok_status == 200
    status, body = respond(CHAT, {"model": "gpt-4", "messages": messages, "max_tokens": 8192 - n + 1})
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "messages"
    assert "maximum context length is 8192 tokens" in body["error"]["message"]
    assert (
        f"you requested 8193 tokens ({n} in the messages, {8192 - n + 1} in the completion)"
        in (body["error"]["message"])
    )


def test_context_windows_by_model():
    options = SimOptions()
    assert options.context_window("gpt-4o-mini") == 128_000
    assert options.context_window("gpt-4o-2024-08-06") == 128_000
    assert options.context_window("gpt-4.1-mini") == 1_047_576
    assert options.context_window("gpt-4") == 8_192
    assert options.context_window("gpt-3.5-turbo") == 16_385
    assert options.context_window("openai/gpt-5-mini") == 400_000
    assert options.context_window("some-local-model") == 128_000


def test_precomputed_prompt_tokens_are_used():
    _, body = respond(CHAT, chat("hello"), prompt_tokens=1234)
    assert body["usage"]["prompt_tokens"] == 1234


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, None, None),
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, "messages[0].role",
         "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
         "max_tokens", "integer_below_min_value"),
    ],
)  # fmt: skip
def test_invalid_chat_requests(payload, param, code):
    status, body = respond(CHAT, payload)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code


def test_unknown_path_is_404():
    status, body = respond("/v1/completions", {"model": "gpt-4o-mini"})
    assert status == 404
    assert body == {
        "error": {
            "message": "Invalid URL (POST /v1/completions)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_paths_with_and_without_v1():
    assert respond("/chat/completions", chat("x"))[0] == 200
    assert respond("/embeddings", {"model": "text-embedding-3-small", "input": "x"})[0] == 200


def test_chat_is_deterministic():
    a = respond(CHAT, chat(LONG_TEXTS[1]))
    b = respond(CHAT, chat(LONG_TEXTS[1]))
    c = respond(CHAT, chat(LONG_TEXTS[2]))
    assert a == b
    assert a[1]["id"].startswith("chatcmpl-")
    assert a[1]["id"] != c[1]["id"]
    assert a[1]["created"] == simulate.CREATED


# --- embeddings ---------------------------------------------------------------------------


def embed(inputs: object, **extra: object) -> tuple[int, dict]:
    return respond(EMB, {"model": "text-embedding-3-small", "input": inputs, **extra})


def test_embedding_usage_is_exact():
    texts = ["first text", LONG_TEXTS[1], "third, with more words than the first"]
    status, body = embed(texts)
    assert status == 200
    expected = sum(TokenCounter("cl100k_base").count(t) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(d["embedding"]) == 1536 for d in body["data"])
    assert body["object"] == "list"
    assert body["model"] == "text-embedding-3-small"


def test_token_array_inputs_count_as_their_length():
    status, body = embed([[1, 2, 3], [4, 5]])
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 5
    status, body = embed([10, 20, 30, 40])
    assert status == 200
    assert len(body["data"]) == 1
    assert body["usage"]["prompt_tokens"] == 4


def test_embedding_dims_per_model_and_dimensions_parameter():
    status, body = respond(EMB, {"model": "text-embedding-3-large", "input": "x"})
    assert status == 200
    assert len(body["data"][0]["embedding"]) == 3072
    status, body = embed("some words here", dimensions=256)
    assert status == 200
    vec = np.array(body["data"][0]["embedding"])
    assert vec.shape == (256,)
    assert abs(np.linalg.norm(vec) - 1.0) < 1e-6
    status, body = respond(EMB, {"model": "text-embedding-ada-002", "input": "x", "dimensions": 256})
    assert status == 400
    assert body["error"]["param"] == "dimensions"


def test_more_than_2048_inputs_is_rejected():
    status, body = embed(["x"] * 2048)
    assert status == 200
    status, body = embed(["x"] * 2049)
    assert status == 400
    assert body["error"]["code"] == "array_above_max_length"
    assert "maximum length 2048, but got an array with length 2049" in body["error"]["message"]


def test_input_over_8192_tokens_is_rejected():
    assert embed([[7] * 8192])[0] == 200
    status, body = embed([[1, 2], [7] * 8193])
    assert status == 400
    assert body["error"]["code"] is None
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(
        "This model's maximum context length is 8192 tokens, however you requested 8193 tokens"
    )
    text = " hello" * 9000
    n = TokenCounter("cl100k_base").count(text)
    status, body = embed(text)
    assert status == 400
    assert f"you requested {n} tokens" in body["error"]["message"]


def test_request_over_300k_tokens_is_rejected():
    status, body = embed([[7] * 8000] * 37)  # 296,000 tokens
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 296_000
    status, body = embed([[7] * 8000] * 38)  # 304,000 tokens
    assert status == 400
    assert body["error"]["message"] == "Requested 304000 tokens, max 300000 tokens per request"
    assert body["error"]["code"] == "max_tokens_per_request"


@pytest.mark.parametrize("bad", ["", ["a", ""], [], [[]], [1.5], ["a", [1]], None])
def test_empty_or_malformed_input_is_rejected(bad):
    status, body = embed(bad)
    assert status == 400
    assert body["error"]["message"].startswith("'$.input' is invalid.")


def test_base64_decodes_to_the_float_vector():
    texts = ["alpha beta gamma", "Résumé naïve café"]
    _, as_float = embed(texts, encoding_format="float")
    _, as_b64 = embed(texts, encoding_format="base64")
    for f, b in zip(as_float["data"], as_b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.array(f["embedding"], dtype=np.float32).tolist()
        assert isinstance(f["embedding"][0], float)


def test_query_is_closest_to_the_document_it_shares_words_with():
    docs = [
        "Install the package with pip and configure the cache directory for tiktoken files.",
        "Rate limits: the API allows a number of requests per minute and tokens per minute.",
        "Embeddings are stored in SQLite next to the chunks, keyed by content hash.",
        "The HTML report shows the files that cost the most tokens and why.",
    ]
    queries = {
        "what are the rate limits per minute": 1,
        "where are embeddings stored? sqlite": 2,
        "how do I install with pip": 0,
        "which files cost the most tokens in the report": 3,
    }
    _, body = embed(docs + list(queries))
    vectors = np.array([d["embedding"] for d in body["data"]])
    for i, (query, expected) in enumerate(queries.items()):
        scores = vectors[: len(docs)] @ vectors[len(docs) + i]
        assert int(np.argmax(scores)) == expected, query


def test_embeddings_are_deterministic_unit_vectors():
    a = simulate.embed_texts(["one two three", "!!!", "one two three"], 64)
    b = simulate.embed_texts(["one two three"], 64)
    assert a.dtype == np.float32
    assert a[0].tolist() == a[2].tolist() == b[0].tolist()
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert simulate.cosine(a[0], a[0]) == pytest.approx(1.0)


def test_embedding_1000_inputs_of_400_words_is_fast():
    rng = np.random.default_rng(0)
    vocabulary = [f"word{i}" for i in range(8000)]
    texts = [" ".join(rng.choice(vocabulary, 400)) for _ in range(1000)]
    start = time.perf_counter()
    vectors = simulate.embed_texts(texts, 1536)
    elapsed = time.perf_counter() - start
    assert vectors.shape == (1000, 1536)
    assert elapsed < 1.5


def test_count_request_weights_for_rate_limits():
    chat_count = count_request(CHAT, chat("hello", max_tokens=100))
    assert chat_count.prompt_tokens == TokenCounter("o200k_base").count_messages(chat("hello")["messages"])
    assert chat_count.rate_limit_tokens == chat_count.prompt_tokens + 100
    emb_count = count_request(EMB, {"model": "text-embedding-3-small", "input": ["a b", "c d e f"]})
    assert emb_count.input_tokens == tuple(TokenCounter("cl100k_base").count_many(["a b", "c d e f"]))
    assert emb_count.rate_limit_tokens == sum(emb_count.input_tokens)
    assert count_request(CHAT, {"model": "gpt-4o-mini"}).prompt_tokens is None


def test_summary_of_long_texts_is_the_same_as_cutting_the_whole_encoding():
    """The cut reads only the head of a long text; it must give what cutting all of it gives."""
    from docingest.simulate import _cut
    from docingest.tokens import TokenCounter

    counter = TokenCounter("o200k_base")
    texts = [
        "word " * 5000,
        "x" * 40_000,  # long tokens: few tokens per character
        "ünïcödé " * 3000,
        "short text",
        "a" * 12 + " b" * 30,
    ]
    for text in texts:
        for limit in (1, 7, 48):
            content, truncated = _cut(counter, text, limit)
            full = counter.encode(text)
            assert truncated == (len(full) > limit)
            assert text.startswith(content)
            if truncated:
                assert len(counter.encode(content)) == limit
            else:
                assert content == text
