"""OpenTelemetry export: each recorded call as a span with the GenAI semantic conventions.

Needs the ``otel`` extra (``pip install 'docingest[otel]'``). Two ways:

- live: ``SpanBridge(provider).attach(stats)`` turns every ``call`` record into a span as it is
  recorded (any ``TracerProvider``: the SDK's in-memory exporter, your app's own provider);
- after the run: ``docingest ingest|trace --otel`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set)
  replays the ledger to the OTLP/HTTP endpoint that the standard ``OTEL_EXPORTER_OTLP_*``
  variables name, so the calls land in Langfuse, Phoenix, Jaeger or any collector.

Attributes: ``gen_ai.operation.name`` (``chat`` / ``embeddings``), ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.request.max_tokens``, ``gen_ai.usage.input_tokens`` (the
billed prompt tokens when the API said, else docingest's own count, which is always in
``docingest.prompt_tokens``), ``gen_ai.usage.output_tokens`` (only when billed: unknown is left
out, never 0), ``docingest.chunk.path`` / ``docingest.chunk.index`` (a call carrying several
chunks has ``docingest.chunk.paths`` / ``docingest.chunk.indexes`` instead), the call site and
prompt template of an unattributed call, the status, the attempt, and the run id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docingest.account import StatsCollector
from docingest.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

OPERATIONS = {"chat_summary": "chat", "create_embedding": "embeddings"}
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INSTALL_HINT = "install the otel extra: pip install 'docingest[otel]'"


def otel_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def span_attributes(record: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """The span attributes of one ``call`` ledger record."""
    billed = record.get("billed") or {}
    call_type = str(record.get("call_type"))
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(call_type, call_type),
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "docingest.call_type": call_type,
        "docingest.prompt_tokens": int(record["prompt_tokens"]),
        "docingest.status": str(record.get("status")),
        "docingest.attempt": int(record.get("attempt") or 0),
    }
    if record.get("model"):
        attrs["gen_ai.request.model"] = str(record["model"])
    if record.get("max_tokens") is not None:
        attrs["gen_ai.request.max_tokens"] = int(record["max_tokens"])
    input_tokens = billed.get("prompt_tokens")
    attrs["gen_ai.usage.input_tokens"] = int(
        input_tokens if input_tokens is not None else record["prompt_tokens"]
    )
    if billed.get("completion_tokens") is not None:
        attrs["gen_ai.usage.output_tokens"] = int(billed["completion_tokens"])
    if record.get("http_status") is not None:
        attrs["http.response.status_code"] = int(record["http_status"])
    if record.get("sent") is False:  # the connection failed before the request left: nothing sent
        attrs["docingest.sent"] = False
        attrs["docingest.tokens_not_sent"] = int(record.get("tokens_not_sent") or 0)
    chunks = record.get("chunks") or []
    if len(chunks) == 1:
        attrs["docingest.chunk.path"] = str(chunks[0][0])
        attrs["docingest.chunk.index"] = int(chunks[0][1])
    elif chunks:
        attrs["docingest.chunk.paths"] = [str(c[0]) for c in chunks]
        attrs["docingest.chunk.indexes"] = [int(c[1]) for c in chunks]
    for key, name in (("site", "docingest.call.site"), ("template", "docingest.prompt_template")):
        if record.get(key):
            attrs[name] = str(record[key])
    if run_id:
        attrs["docingest.run_id"] = run_id
    return attrs


class SpanBridge:
    """Turns ``call`` records into spans of ``tracer_provider``."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace

        from docingest import __version__

        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("docingest", __version__)
        self.run_id: str | None = None
        self._base_ns: int | None = None  # wall-clock time of t_s = 0, when replaying

    def emit(self, record: Mapping[str, Any], *, start_ns: int, end_ns: int) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attrs = span_attributes(record, self.run_id)
        name = f"{attrs['gen_ai.operation.name']} {attrs.get('gen_ai.request.model', '')}".strip()
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs, start_time=start_ns)
        if record.get("status") != "Success":
            span.set_attribute("error.type", str(record.get("http_status") or "request_error"))
            span.set_status(Status(StatusCode.ERROR, str(record.get("error_details") or "")))
        span.end(end_time=end_ns)

    def on_record(self, record: Mapping[str, Any]) -> None:
        """Live: called as each record is written (see :meth:`attach`)."""
        if record.get("type") == "run_start":
            self.run_id = record.get("run_id")
        if record.get("type") != "call":
            return
        end = time.time_ns()
        self.emit(record, start_ns=end - int(float(record.get("latency_s") or 0) * 1e9), end_ns=end)

    def attach(self, stats: StatsCollector) -> Callable[[], None]:
        """Emit a span for every call ``stats`` records from now on; returns the detach function."""
        self.run_id = self.run_id or stats.run_id
        return stats.subscribe(self.on_record)

    def replay(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Emit the spans of a finished run's records; the number of spans."""
        count = 0
        for record in records:
            if record.get("type") == "run_start":
                self.run_id = record.get("run_id")
                self._base_ns = _parse_ns(record.get("started_at"))
            if record.get("type") != "call":
                continue
            base = self._base_ns if self._base_ns is not None else time.time_ns()
            start = base + int(float(record.get("t_s") or 0) * 1e9)
            self.emit(record, start_ns=start, end_ns=start + int(float(record.get("latency_s") or 0) * 1e9))
            count += 1
        return count


def _parse_ns(stamp: Any) -> int | None:
    if not isinstance(stamp, str):
        return None
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return None


def otlp_tracer_provider() -> Any:
    """A ``TracerProvider`` exporting over OTLP/HTTP as the standard ``OTEL_*`` variables say."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "docingest"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def otel_requested(explicit: bool = False, environ: Mapping[str, str] = os.environ) -> bool:
    """``--otel``, or an OTLP endpoint in the environment with the extra installed."""
    if explicit:
        return True
    return any(environ.get(v) for v in ENDPOINT_VARS) and otel_available()


def export_ledger(*ledgers: Path) -> int:
    """Send the calls of ``ledgers`` as spans to the OTLP endpoint; the number of spans."""
    from docingest.ledger import read_ledger

    if not otel_available():
        raise ConfigError(f"--otel needs the OpenTelemetry SDK and OTLP exporter: {INSTALL_HINT}")
    provider = otlp_tracer_provider()
    try:
        bridge = SpanBridge(provider)
        return sum(bridge.replay(read_ledger(path)) for path in ledgers)
    finally:
        provider.shutdown()  # flushes


def export_if_enabled(*ledgers: Path, explicit: bool = False) -> int | None:
    """:func:`export_ledger` when :func:`otel_requested`; None when export is off."""
    if not otel_requested(explicit):
        return None
    return export_ledger(*ledgers)
