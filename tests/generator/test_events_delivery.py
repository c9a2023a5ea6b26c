"""Events emitted while no monitor listens are spooled and all delivered, once each and in order, when one appears."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask import Flask
from werkzeug.serving import make_server

from common.events import Event, EventError
from generator import events as events_module
from generator.events import EventSender
from generator.metrics import GeneratorMetrics
from tests.generator.conftest import GeneratorServer, serve_generator
from tests.servers import free_port, wait_for


class EventReceiver:
    """A minimal monitor stand-in: validates event batches on /monitor/api/events as the monitor does, keeps them."""

    def __init__(self, port: int) -> None:
        self.batches: list[list[dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for index, event in enumerate(body["events"]):
                    try:
                        Event.from_dict(event)
                    except EventError as error:
                        self.answer(400, {"error": str(error), "index": index})
                        return
                receiver.batches.append(body["events"])
                self.answer(200, {"accepted": len(body["events"])})

            def answer(self, status: int, body: dict) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def event_ids(self) -> list[str]:
        return [event["event_id"] for batch in self.batches for event in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EmittedEvents(logging.Handler):
    """Collects the JSON log line the generator writes for every event it emits."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.event)  # type: ignore[attr-defined]  # the event rides on the record


@pytest.fixture
def emitted() -> Iterator[EmittedEvents]:
    handler = EmittedEvents()
    logger = logging.getLogger("generator.event")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_events_spooled_while_the_monitor_is_away_arrive_once_each_in_order(tmp_path, emitted, monkeypatch) -> None:
    # Every refused attempt doubles the sender's wait; capped at 2 s instead of 30 s, the retry that finds the
    # monitor comes within 2 s of its start, not up to 30 s later.
    monkeypatch.setattr(events_module, "BACKOFF_MAX_S", 2.0)
    monitor_port = free_port()
    servers = serve_generator(tmp_path, monitor_url=f"http://127.0.0.1:{monitor_port}")
    generator: GeneratorServer = next(servers)
    try:
        job_id = generator.submit().json()["job_id"]
        assert generator.wait_state(job_id, ("succeeded", "failed"))["state"] == "succeeded"
        wait_for(lambda: generator.runtime.events.pending() == len(emitted.events), 10, "every event spooled")

        receiver = EventReceiver(monitor_port)
        try:
            wait_for(lambda: generator.runtime.events.pending() == 0, 60, "the spool to drain")
            received = receiver.event_ids()
        finally:
            receiver.close()
    finally:
        next(servers, None)

    assert received == [event["event_id"] for event in emitted.events]
    assert len(set(received)) == len(received)
    kinds = [(e["kind"], e["stage"] or e["status"]) for e in emitted.events if e["job_id"] == job_id]
    assert kinds[0] == ("job", "queued")
    assert kinds[1] == ("job", "running")
    assert kinds[-1] == ("job", "succeeded")
    assert [k for k in kinds if k == ("stage", "denoising_step")] == [("stage", "denoising_step")] * 10
    stages = [stage for kind, stage in kinds if kind == "stage" and stage != "denoising_step"]
    assert stages == ["text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export"]
    for event in emitted.events:
        Event.from_dict(event)


def stage_events(count: int) -> list[Event]:
    return [
        Event(job_id="j", host="h", gpu="0", kind="stage", stage="export", started_at="2026-11-23T10:00:00Z")
        for _ in range(count)
    ]


def test_a_refused_event_is_dropped_alone_and_its_neighbours_are_delivered(tmp_path) -> None:
    port = free_port()
    receiver = EventReceiver(port)
    sender = EventSender(f"http://127.0.0.1:{port}", tmp_path / "spool", spool_max_bytes=2**20)
    events = stage_events(5)
    bad = Event(job_id="j", host="h", gpu="0", kind="stage", stage="no-such-stage", started_at="2026-11-23T10:00:00Z")
    try:
        for event in (*events[:2], bad, *events[2:]):
            sender.emit(event)
        assert sender.flush(timeout_s=30)
    finally:
        sender.close()
        receiver.close()

    assert receiver.event_ids() == [event.event_id for event in events]
    metrics = GeneratorMetrics()
    metrics.watch_events(sender)
    assert metrics.registry.get_sample_value("i2v_events_refused_total") == 1
    assert metrics.registry.get_sample_value("i2v_events_dropped_total") == 0


class WrongEndpoint:
    """A real HTTP server that is not a monitor's ingest: a proxy or another service behind MONITOR_URL."""

    def __init__(self) -> None:
        app = Flask("wrong-endpoint")

        @app.get("/monitor/api/events")  # a POST here is 405
        def only_get() -> str:
            return "read-only"

        @app.post("/proxy/monitor/api/events")  # a proxy's own refusal: 400 with no event index
        def proxy_refusal() -> tuple[str, int]:
            return "<html>400 Bad Request</html>", 400

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(
    ("path", "status"),
    [("/extra", 404), ("", 405), ("/proxy", 400)],
    ids=["extra-path-404", "method-405", "400-without-index"],
)
def test_an_answer_that_names_no_bad_event_keeps_the_whole_spool_and_warns_once(
    tmp_path, caplog, path: str, status: int
) -> None:
    wrong = WrongEndpoint()
    events = stage_events(3)
    sender = EventSender(f"http://127.0.0.1:{wrong.port}{path}", tmp_path / "spool", spool_max_bytes=2**20)
    try:
        with caplog.at_level(logging.WARNING, logger="generator.events"):
            for event in events:
                sender.emit(event)
            # Three refused attempts, or (the defect) the spool emptied by treating the refusal as final.
            wait_for(
                lambda: sender.failures_total >= 3 or sender.queued() == sender.pending() == 0,
                30,
                "three refused delivery attempts",
            )
        assert sender.pending() == 3
        assert sender.dropped_total == 0
        assert sender.refused_total == 0
        warnings = [r.getMessage() for r in caplog.records if r.name == "generator.events"]
        assert len(warnings) == 1, warnings  # once for the condition, not once per attempt
        assert f"answered {status}" in warnings[0]
        metrics = GeneratorMetrics()
        metrics.watch_events(sender)
        assert metrics.registry.get_sample_value("i2v_event_delivery_failures_total") >= 3
        assert 0 < sender.spool_fill_ratio() < 1
    finally:
        sender.close()
        wrong.close()

    # The monitor at the right address later: the events kept are all delivered, in order.
    port = free_port()
    receiver = EventReceiver(port)
    fixed = EventSender(f"http://127.0.0.1:{port}", tmp_path / "spool", spool_max_bytes=2**20)
    try:
        assert fixed.flush(timeout_s=30)
    finally:
        fixed.close()
        receiver.close()
    assert receiver.event_ids() == [event.event_id for event in events]
