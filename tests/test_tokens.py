from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docingest import tokens
from docingest.errors import ConfigError


def test_encodings_load_offline_from_verified_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCINGEST_CACHE_DIR", str(tmp_path))
    for name, expected in tokens.EXPECTED_SHA256.items():
        tokens._install_encoding_file(name, tmp_path)
        url = tokens._URL.format(name=name)
        stored = tmp_path / hashlib.sha1(url.encode()).hexdigest()
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == expected


def test_known_token_ids():
    assert tokens.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tokens.get_encoding("o200k_base").encode("hello world") == [24912, 2375]


def test_chat_message_overhead():
    counter = tokens.TokenCounter("o200k_base")
    content = "hello world"
    n = counter.count(content)
    msgs = [{"role": "system", "content": content}, {"role": "user", "content": content, "name": "bob"}]
    expected = 3 + (3 + 1 + n) + (3 + 1 + n + counter.count("bob") + 1)
    assert counter.count_messages(msgs) == expected


def test_unknown_encoding_is_a_config_error():
    with pytest.raises(ConfigError, match="unsupported tokenizer"):
        tokens.get_encoding("p50k_base")


def test_model_to_encoding():
    assert tokens.encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-4-turbo") == "cl100k_base"
    assert tokens.encoding_name_for_model("text-embedding-3-small") == "cl100k_base"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=8))
def test_count_many_matches_count(texts):
    counter = tokens.TokenCounter("o200k_base", cache_size=4)
    batch = counter.count_many(texts)
    assert batch == [len(counter.encode(t)) for t in texts]


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize(
    "text",
    [
        "special-token text is ordinary text: <|endoftext|> <|fim_prefix|> <|im_start|>",
        "a lone surrogate \ud800 and a pair \ud83d\ude00 in one string",
        "NUL \x00 and emoji 🙂 and CJK 日本語",
        "iVBORw0KGgoAAAANSUhEUgAA" * 5000,  # base64, long enough to go to the worker threads
    ],
)
def test_counts_equal_the_length_of_encode_ordinary(encoding, text):
    counter = tokens.TokenCounter(encoding)
    expected = len(tokens.get_encoding(encoding).encode_ordinary(text))
    assert counter.count(text) == expected
    assert tokens.TokenCounter(encoding).count_many([text, text[:100], ""]) == [
        expected,
        len(tokens.get_encoding(encoding).encode_ordinary(text[:100])),
        0,
    ]
