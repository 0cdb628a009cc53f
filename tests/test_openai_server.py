from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx2
import numpy as np
import openai
import pytest

from docingest import simulate
from docingest.simulate import SimOptions
from docingest.testing import Fault, OpenAIServer, parse_fault
from docingest.testing.openai_server import RateLimiter
from docingest.tokens import TokenCounter

MESSAGES = [
    {"role": "system", "content": "Summarise the documentation chunk in one sentence."},
    {"role": "user", "content": "docingest keeps an exact ledger of every token sent to an LLM API. " * 10},
]
TEXTS = ["How do rate limits work?", "Embeddings are stored in SQLite.", "Résumé naïve café 日本語"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as s:
        yield s


def client(server: OpenAIServer, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0, **kwargs)


def chat(c: openai.OpenAI, **extra: object):
    return c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)


def test_chat_round_trip_usage_matches_token_counter(server):
    counter = TokenCounter("o200k_base")
    with client(server) as c:
        response = chat(c, max_tokens=12)
    content = response.choices[0].message.content
    assert response.usage.prompt_tokens == counter.count_messages(MESSAGES)
    assert response.usage.completion_tokens == counter.count(content) == 12
    assert response.choices[0].finish_reason == "length"
    assert MESSAGES[1]["content"].startswith(content)
    [record] = server.requests
    assert (record.number, record.path, record.model, record.status, record.fault) == (
        1,
        "/v1/chat/completions",
        "gpt-4o-mini",
        200,
        None,
    )
    assert server.usage_totals() == {
        "requests": 1,
        "prompt_tokens": counter.count_messages(MESSAGES),
        "completion_tokens": 12,
        "total_tokens": counter.count_messages(MESSAGES) + 12,
    }


def test_embeddings_round_trip_sdk_decodes_base64_to_the_simulated_vectors(server):
    counter = TokenCounter("cl100k_base")
    with client(server) as c:
        response = c.embeddings.create(model="text-embedding-3-small", input=TEXTS)
        small = c.embeddings.create(model="text-embedding-3-small", input="one", dimensions=64)
    assert response.usage.prompt_tokens == sum(counter.count(t) for t in TEXTS)
    assert response.usage.total_tokens == response.usage.prompt_tokens
    expected = simulate.embed_texts(TEXTS, 1536)
    for item, vec in zip(response.data, expected, strict=True):
        assert np.array(item.embedding, dtype=np.float32).tolist() == vec.tolist()
    assert len(small.data[0].embedding) == 64
    assert server.usage_totals()["prompt_tokens"] == response.usage.prompt_tokens + counter.count("one")


def test_async_client_round_trip(server):
    counter = TokenCounter("o200k_base")

    async def run() -> tuple[int, int]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
            chat_response = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            emb_response = await c.embeddings.create(model="text-embedding-3-small", input=TEXTS)
        return chat_response.usage.prompt_tokens, emb_response.usage.prompt_tokens

    prompt_tokens, embedding_tokens = asyncio.run(run())
    assert prompt_tokens == counter.count_messages(MESSAGES)
    assert embedding_tokens == sum(TokenCounter("cl100k_base").count(t) for t in TEXTS)


def test_missing_api_key_is_401_and_keys_are_not_logged(server):
    with httpx2.Client() as http:
        response = http.post(
            f"{server.base_url}/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}
        )
        wrong_scheme = http.post(
            f"{server.base_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"Authorization": "Basic abc"},
        )
    assert response.status_code == 401
    assert wrong_scheme.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "API key" in response.json()["error"]["message"]
    with client(server) as c:
        chat(c)
    assert [r.status for r in server.requests] == [401, 401, 200]
    assert "sk-test-secret" not in repr(server.requests)


def test_unknown_path_and_bad_json(server):
    with httpx2.Client(headers={"Authorization": "Bearer x"}) as http:
        missing = http.post(f"{server.base_url}/completions", json={"model": "gpt-4o-mini"})
        get = http.get(f"{server.base_url}/chat/completions")
        bad = http.post(f"{server.base_url}/chat/completions", content=b"{not json")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    assert get.status_code == 404
    assert bad.status_code == 400
    assert "could not parse the JSON body" in bad.json()["error"]["message"]


def test_keep_alive_connections_are_reused(server):
    with httpx2.Client(headers={"Authorization": "Bearer x"}) as http:
        first = http.post(
            f"{server.base_url}/embeddings", json={"model": "text-embedding-3-small", "input": "a"}
        )
        port = first.extensions["network_stream"].get_extra_info("client_addr")[1]
        second = http.post(
            f"{server.base_url}/embeddings", json={"model": "text-embedding-3-small", "input": "b"}
        )
        assert second.extensions["network_stream"].get_extra_info("client_addr")[1] == port
    assert first.http_version == "HTTP/1.1"


# --- faults -------------------------------------------------------------------------------


def test_parse_fault_grammar():
    assert parse_fault("429:every=3,retry_after=1") == Fault("429", every=3, retry_after=1.0)
    assert parse_fault("500:rate=0.1") == Fault("500", rate=0.1)
    assert parse_fault("drop:on=5,9") == Fault("drop", on=frozenset({5, 9}))
    assert parse_fault("timeout:on=2,delay=5") == Fault("timeout", on=frozenset({2}), delay=5.0)
    assert parse_fault("malformed") == Fault("malformed")
    assert parse_fault("503:rate=0.5,seed=7,only=embeddings") == Fault(
        "503", rate=0.5, seed=7, only="embeddings"
    )
    for bad in ("418", "500:rate=2", "500:every=0", "500:bogus=1", "500:rate=x", "500:5", "drop:only=x"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_fault_selection_by_number_every_and_seeded_rate():
    assert [n for n in range(1, 13) if Fault("500", every=4).applies(n)] == [4, 8, 12]
    assert [n for n in range(1, 13) if Fault("500", on=frozenset({2, 7})).applies(n)] == [2, 7]
    assert all(Fault("500").applies(n) for n in range(1, 5))
    rate = Fault("500", rate=0.25, seed=3)
    hits = [n for n in range(1, 1001) if rate.applies(n)]
    assert hits == [n for n in range(1, 1001) if Fault("500", rate=0.25, seed=3).applies(n)]
    assert 200 < len(hits) < 300
    assert hits != [n for n in range(1, 1001) if Fault("500", rate=0.25, seed=4).applies(n)]
    only = Fault("500", only="embeddings")
    assert only.applies(1, "/v1/embeddings")
    assert not only.applies(1, "/v1/chat/completions")


def test_429_fault_carries_retry_after_and_ratelimit_headers():
    with OpenAIServer(faults=[parse_fault("429:every=2,retry_after=3")]) as server, client(server) as c:
        chat(c)
        with pytest.raises(openai.RateLimitError) as info:
            chat(c)
    headers = info.value.response.headers
    assert headers["retry-after"] == "3"
    assert headers["retry-after-ms"] == "3000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "3s"
    assert info.value.code == "rate_limit_exceeded"
    assert [(r.status, r.fault) for r in server.requests] == [(200, None), (429, "429")]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_error_faults(kind):
    with (
        OpenAIServer(faults=[Fault(kind)]) as server,
        client(server) as c,
        pytest.raises(openai.InternalServerError) as info,
    ):
        chat(c)
    assert info.value.status_code == int(kind)
    assert info.value.type == "server_error"
    assert server.usage_totals()["requests"] == 0


def test_timeout_fault_is_a_client_timeout_and_does_not_block_others_or_shutdown():
    server = OpenAIServer(faults=[parse_fault("timeout:on=1,delay=30")]).start()
    try:
        with client(server, timeout=0.3) as c:
            with pytest.raises(openai.APITimeoutError):
                chat(c)
            assert chat(c).usage.prompt_tokens > 0  # request 2 is answered while request 1 still waits
    finally:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
    assert server.requests[0].fault == "timeout"


def test_drop_fault_is_a_connection_error():
    with OpenAIServer(faults=[parse_fault("drop:on=1")]) as server, client(server) as c:
        with pytest.raises(openai.APIConnectionError) as info:
            chat(c)
        assert not isinstance(info.value, openai.APITimeoutError)
        assert chat(c).usage.prompt_tokens > 0
    assert [r.status for r in server.requests] == [None, 200]


def test_malformed_fault_surfaces_as_a_json_decode_error():
    # The SDK does not wrap an unparsable 200 body: json.JSONDecodeError reaches the caller.
    with (
        OpenAIServer(faults=[parse_fault("malformed:on=1")]) as server,
        client(server) as c,
        pytest.raises(json.JSONDecodeError),
    ):
        chat(c)
    [record] = server.requests
    assert (record.status, record.fault) == (200, "malformed")
    assert server.usage_totals()["requests"] == 0


def test_context_length_fault():
    with (
        OpenAIServer(faults=[Fault("context_length")]) as server,
        client(server) as c,
        pytest.raises(openai.BadRequestError) as info,
    ):
        chat(c)
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 128000 tokens" in info.value.message
    assert server.requests[0].status == 400


# --- rate limits --------------------------------------------------------------------------


def test_rpm_limit_over_a_sliding_window_with_a_fake_clock():
    clock = FakeClock()
    with OpenAIServer(rpm=2, clock=clock) as server, client(server) as c:
        first = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        clock.now += 10
        second = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        assert second.headers["x-ratelimit-reset-requests"] == "50s"
        clock.now += 20
        with pytest.raises(openai.RateLimitError) as info:
            chat(c)
        assert info.value.response.headers["retry-after"] == "30"
        assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        clock.now += 30  # the first request leaves the window
        assert chat(c).usage is not None
        with pytest.raises(openai.RateLimitError):
            chat(c)
    statuses = [(r.status, r.rate_limited) for r in server.requests]
    assert statuses == [(200, False), (200, False), (429, True), (200, False), (429, True)]


def test_tpm_counts_prompt_plus_max_tokens():
    clock = FakeClock()
    prompt = TokenCounter("o200k_base").count_messages(MESSAGES)
    with OpenAIServer(tpm=2 * prompt + 150, clock=clock) as server, client(server) as c:
        ok = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=100
        )
        assert ok.headers["x-ratelimit-remaining-tokens"] == str(prompt + 50)
        with pytest.raises(openai.RateLimitError) as info:
            chat(c, max_tokens=100)  # prompt + 100 > prompt + 50 left
        assert info.value.response.headers["retry-after"] == "60"
        assert chat(c, max_tokens=50).usage is not None
    assert [r.status for r in server.requests] == [200, 429, 200]


def test_rate_limiter_retry_after_for_tokens():
    clock = FakeClock()
    limiter = RateLimiter(None, 100, clock=clock)
    assert limiter.acquire(60)[0]
    clock.now += 15
    assert limiter.acquire(30)[0]
    clock.now += 5
    admitted, wait, headers = limiter.acquire(50)
    assert not admitted
    assert wait == pytest.approx(40.0)  # the first 60 tokens leave the window at t+60
    assert headers["x-ratelimit-remaining-tokens"] == "10"
    assert not RateLimiter(None, 100, clock=clock).acquire(101)[0]


# --- concurrency and the command line -----------------------------------------------------


def test_latency_does_not_serialise_concurrent_requests():
    async def run(base_url: str) -> float:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
            started = time.perf_counter()
            results = await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"request {i}"}]
                    )
                    for i in range(20)
                )
            )
            elapsed = time.perf_counter() - started
        assert len({r.choices[0].message.content for r in results}) == 20
        return elapsed

    with OpenAIServer(latency=0.2) as server:
        elapsed = asyncio.run(run(server.base_url))
    assert 0.2 <= elapsed < 2.0
    assert len(server.requests) == 20


def test_non_loopback_host_is_refused():
    with pytest.raises(ValueError, match="non-loopback"):
        OpenAIServer(host="0.0.0.0")
    result = subprocess.run(
        [sys.executable, "-m", "docingest.testing.openai_server", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr


def test_cli_serves_and_exits_on_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "docingest.testing.openai_server", "--port", "0", "--summary-tokens", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        line = lines.get(timeout=60)
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.removeprefix("listening on ").strip()
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
            response = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert response.usage.completion_tokens == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_options_reach_the_simulation():
    with OpenAIServer(options=SimOptions(summary_tokens=5)) as server, client(server) as c:
        assert chat(c).usage.completion_tokens == 5
