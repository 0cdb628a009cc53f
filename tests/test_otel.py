"""OpenTelemetry: each call a span with the GenAI attributes, in memory and over OTLP/HTTP."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from docingest import StatsCollector, recording_http_client
from docingest.cli import main
from docingest.otel import SpanBridge, export_ledger
from docingest.testing.openai_server import OpenAIServer


def run_pipeline(stats: StatsCollector, base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="k", http_client=recording_http_client(stats)) as client:
        for index, text in enumerate(["first chunk of the guide", "second chunk of the guide"]):
            with stats.chunk("guide.md", index, text=text):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=10
                )
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])


def test_live_spans_carry_genai_attributes_and_chunk() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stats = StatsCollector(None)
    detach = SpanBridge(provider).attach(stats)
    with OpenAIServer() as server:
        run_pipeline(stats, server.base_url)
        usage = server.usage_totals()
    detach()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["chat gpt-4o-mini"] * 2 + ["embeddings text-embedding-3-small"]
    chat = [dict(s.attributes or {}) for s in spans[:2]]
    assert [(a["docingest.chunk.path"], a["docingest.chunk.index"]) for a in chat] == [
        ("guide.md", 0),
        ("guide.md", 1),
    ]
    assert all(
        a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gpt-4o-mini" for a in chat
    )
    embed = dict(spans[2].attributes or {})
    assert embed["gen_ai.operation.name"] == "embeddings"
    assert "gen_ai.usage.output_tokens" not in embed  # embeddings bill no output: unknown, not 0
    assert "docingest.chunk.path" not in embed and embed["docingest.call.site"].startswith("tests")
    total_in = sum(int((s.attributes or {})["gen_ai.usage.input_tokens"]) for s in spans)
    total_out = sum(int((s.attributes or {}).get("gen_ai.usage.output_tokens", 0)) for s in spans)
    assert (total_in, total_out) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert all(
        s.end_time is not None and s.start_time is not None and s.end_time >= s.start_time for s in spans
    )
    provider.shutdown()


class _Receiver(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.server.received.append((self.path, message))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _spans(received: list[tuple[str, ExportTraceServiceRequest]]) -> list[Any]:
    return [
        span
        for _path, message in received
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


def test_ledger_replayed_to_a_local_otlp_http_receiver(
    otlp_receiver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_receiver.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "docs-pipeline")
    ledger = tmp_path / "run.ledger.jsonl"
    stats = StatsCollector(ledger)
    stats.start(dry_run=False)
    with OpenAIServer() as server:
        run_pipeline(stats, server.base_url)
        usage = server.usage_totals()
    stats.finish()
    assert export_ledger(ledger) == 3
    assert {path for path, _ in otlp_receiver.received} == {"/v1/traces"}
    spans = _spans(otlp_receiver.received)
    attrs = [_attrs(s) for s in sorted(spans, key=lambda s: s.start_time_unix_nano)]
    assert [a["gen_ai.operation.name"] for a in attrs] == ["chat", "chat", "embeddings"]
    assert [a.get("docingest.chunk.index") for a in attrs] == [0, 1, None]
    assert sum(a["gen_ai.usage.input_tokens"] for a in attrs) == usage["prompt_tokens"]
    assert sum(a.get("gen_ai.usage.output_tokens", 0) for a in attrs) == usage["completion_tokens"]
    assert all(a["docingest.run_id"] == stats.run_id for a in attrs)
    resource = otlp_receiver.received[0][1].resource_spans[0].resource
    assert {kv.key: kv.value.string_value for kv in resource.attributes}["service.name"] == "docs-pipeline"


def test_trace_exports_when_the_endpoint_is_set(
    otlp_receiver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, ``docingest trace`` exports without --otel."""
    import sys

    script = tmp_path / "one_call.py"
    script.write_text(
        "import openai\nopenai.OpenAI().embeddings.create(model='text-embedding-3-small', input='hello')\n"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_receiver.server_address[1]}")
    monkeypatch.setenv("DRY_RUN", "true")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    code = main(["trace", "--report", str(tmp_path / "r.json"), "--", sys.executable, str(script)])
    assert code == 0
    (span,) = _spans(otlp_receiver.received)
    assert _attrs(span)["gen_ai.operation.name"] == "embeddings"
    assert _attrs(span)["gen_ai.usage.input_tokens"] == 1


def test_an_attempt_that_never_left_is_a_span_that_says_so() -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stats = StatsCollector(None)
    detach = SpanBridge(provider).attach(stats)
    http = recording_http_client(stats)
    with (
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, http_client=http
        ) as c,
        pytest.raises(openai.APIConnectionError),
    ):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    detach()
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["docingest.sent"] is False
    assert attrs["gen_ai.usage.input_tokens"] == 0
    assert attrs["docingest.tokens_not_sent"] == 3 + (3 + 1) + 1  # priming + one message of "hello"
    assert span.status.description and "nothing was sent" in span.status.description
