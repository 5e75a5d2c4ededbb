"""Test app for the observability tests: ``vaultq worker obs_app:app``.

Configured through the environment like a deployment: ``VAULTQ_BROKER``/``VAULTQ_KEYS``
(read by :class:`vaultq.App`), ``OBS_APP`` (the app name, one per test) and
``OBS_SPANS`` (when set: the worker exports its finished spans there, one JSON object
per line, from an OpenTelemetry SDK tracer provider with the vaultq ``Tracing``
middleware installed). Tests build the producer side with :func:`build`.

The tasks cover every outcome the metrics count: ``ok`` succeeds, ``boom`` fails for
good, ``flaky`` fails once then succeeds (a retry), ``slow`` times out, ``guarded`` and
``guarded_role`` are allowed at enqueue and denied in the worker; ``hog`` blocks the
worker's event loop (a stuck worker, for the health checks).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import anyio
import msgspec

import vaultq

NEVER_A_LABEL = "role-that-must-never-be-a-label"


class Note(msgspec.Struct, frozen=True):
    text: str
    n: int = 0


def build(
    name: str, *, broker: str | None = None, keyring: vaultq.Keyring | None = None
) -> vaultq.App:
    app = vaultq.App(name, broker=broker, keyring=keyring, backoff=0.05)

    @app.task(name="ok", policy=vaultq.allow_all)
    async def ok(job: Note) -> str:
        return job.text  # the marker comes back in the (sealed) result

    @app.task(name="boom", policy=vaultq.allow_all, retries=0)
    async def boom(job: Note) -> None:
        raise vaultq.Fatal(f"no: {job.text}")

    @app.task(name="flaky", policy=vaultq.allow_all, retries=2)
    async def flaky(job: Note) -> int:
        if vaultq.current_job().attempt == 1:
            raise RuntimeError(f"first attempt fails: {job.text}")
        return job.n

    @app.task(name="slow", policy=vaultq.allow_all, timeout=0.2, retries=0)
    async def slow(job: Note) -> None:
        await anyio.sleep(30)

    @vaultq.rule(name="only_at_enqueue")
    def only_at_enqueue(request: vaultq.PolicyRequest) -> bool:
        return request.stage != "run"

    @app.task(name="guarded", policy=only_at_enqueue)
    async def guarded(job: Note) -> None:
        return None

    # Denied in the worker by a policy with arguments: the metric's policy label is its
    # kind ("any_of"), never the role list (NEVER_A_LABEL) nor the principal's attributes.
    @app.task(
        name="guarded_role",
        policy=vaultq.any_of(only_at_enqueue, vaultq.require_role(NEVER_A_LABEL)),
    )
    async def guarded_role(job: Note) -> None:
        return None

    @app.task(name="hog", policy=vaultq.allow_all, retries=0)
    async def hog(job: Note) -> None:
        # A bug on purpose: a blocking call in a coroutine stalls the worker's event loop
        # (and so its heartbeats) for job.n seconds: what `vaultq health` must catch.
        time.sleep(job.n)  # noqa: ASYNC251

    @app.task(name="sync_ok", policy=vaultq.allow_all)
    def sync_ok(job: Note) -> int:
        return job.n

    return app


class FileExporter:
    """A span exporter writing finished spans as JSON lines (for a worker process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with open(self.path, "a", encoding="utf-8") as fh:
            for span in spans:
                fh.write(json.dumps(span_doc(span)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_doc(span: object) -> dict[str, object]:
    """The parts of a finished SDK span the tests look at."""
    ctx = span.get_span_context()  # type: ignore[attr-defined]
    parent = span.parent  # type: ignore[attr-defined]
    return {
        "name": span.name,  # type: ignore[attr-defined]
        "kind": span.kind.name,  # type: ignore[attr-defined]
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],  # type: ignore[attr-defined]
        "attributes": dict(span.attributes or {}),  # type: ignore[attr-defined]
        "status": span.status.status_code.name,  # type: ignore[attr-defined]
        "description": span.status.description,  # type: ignore[attr-defined]
        "events": [e.name for e in span.events],  # type: ignore[attr-defined]
    }


app = build(os.environ.get("OBS_APP", "obs"))

if os.environ.get("OBS_SPANS"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from vaultq.tracing import Tracing

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["OBS_SPANS"])))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    app.add_middleware(Tracing())
