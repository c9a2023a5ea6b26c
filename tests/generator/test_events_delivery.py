"""Events emitted while no monitor listens are spooled and all delivered, once each and in order, when one appears."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.events import Event
from tests.generator.conftest import GeneratorServer, serve_generator
from tests.servers import free_port, wait_for


class EventReceiver:
    """A minimal monitor stand-in: accepts event batches on /monitor/api/events and keeps them."""

    def __init__(self, port: int) -> None:
        self.batches: list[list[dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.batches.append(body["events"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"accepted": true}')

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
        self.events.append(json.loads(record.getMessage()))


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


def test_events_spooled_while_the_monitor_is_away_arrive_once_each_in_order(tmp_path, emitted) -> None:
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
