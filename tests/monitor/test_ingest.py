"""POST /monitor/api/events over HTTP against the real app: validation, idempotency, auth, limits."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from common.events import Event
from monitor.bus import EVENTS
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage.schema import JOB_EVENT, event_time_ns
from monitor.web.context import get_context
from tests.servers import AppServer

TOKEN = "s3cret-token"


def event(**overrides: object) -> dict:
    base = Event(
        job_id="job-1",
        host="node-a",
        gpu="0",
        kind="stage",
        stage="denoising_step",
        step=3,
        total_steps=10,
        started_at="2024-05-01T12:00:00.000000Z",
        duration_s=0.25,
        params={"resolution": 512, "num_frames": 16, "steps": 10, "guidance_scale": 9.0, "fps": 8, "seed": 7},
        prompt='a fox, in "snow"\nat dusk',
    ).to_dict()
    return {**base, "event_id": str(uuid.uuid4()), **overrides}


def config(tmp_path: Path, **overrides: object) -> MonitorConfig:
    return replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name="node-a",
        **overrides,
    )


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[str, object]]:
    app = create_app(config(tmp_path))
    server = AppServer(app).start()
    yield server.url, app
    server.stop()
    get_context(app).close()


def stored(app: object) -> list:
    ctx = get_context(app)  # type: ignore[arg-type]
    assert ctx.writer.flush()
    return ctx.store.query_points(JOB_EVENT, 0, 2**62)


def post(url: str, body: object, **kwargs: object) -> requests.Response:
    return requests.post(f"{url}/monitor/api/events", json=body, timeout=10, **kwargs)


def test_a_batch_is_stored_once_even_when_replayed(monitor: tuple[str, object]) -> None:
    url, app = monitor
    batch = [event(step=i) for i in range(5)]
    first = post(url, {"events": batch})
    assert first.status_code == 200
    assert first.json() == {"accepted": 5, "duplicates": 0}
    replay = post(url, batch)  # a bare list is accepted too
    assert replay.json() == {"accepted": 0, "duplicates": 5}
    points = stored(app)
    assert len(points) == 5
    assert {p.fields["step"] for p in points} == set(range(5))


def test_a_replay_after_the_recent_ids_are_forgotten_is_still_stored_once(monitor: tuple[str, object]) -> None:
    url, app = monitor
    batch = [event(step=i) for i in range(3)]
    post(url, batch)
    get_context(app).ingest.recent_ids = type(get_context(app).ingest.recent_ids)()  # a monitor restart forgets them
    assert post(url, batch).json() == {"accepted": 3, "duplicates": 0}
    assert len(stored(app)) == 3  # the store's own idempotency: same series, same time


def test_the_event_becomes_a_job_event_point(monitor: tuple[str, object]) -> None:
    url, app = monitor
    sent = event()
    post(url, [sent])
    (point,) = stored(app)
    assert point.tags == {"host": "node-a", "gpu": "0", "kind": "stage", "stage": "denoising_step"}
    assert point.fields["job_id"] == "job-1"
    assert point.fields["prompt"] == sent["prompt"]
    assert point.fields["guidance_scale"] == 9.0
    assert point.fields["resolution"] == 512
    assert point.time_ns == event_time_ns(Event.from_dict(sent))
    assert point.time_ns // 1000 == (1714564800 * 1_000_000 + 250_000)  # started_at + duration_s


@pytest.mark.parametrize(
    ("body", "index", "needle"),
    [
        ([event(), event(kind="nope")], 1, "'kind'"),
        ([event(event_id="not-a-uuid")], 0, "'event_id'"),
        ([event(started_at="yesterday")], 0, "'started_at'"),
        ([event(duration_s=-1)], 0, "'duration_s'"),
        ([event(), event(), {**event(), "colour": "red"}], 2, "unknown field"),
        ([event(), "not an object"], 1, "JSON object"),
    ],
)
def test_a_bad_event_is_refused_with_its_index_and_nothing_is_stored(
    monitor: tuple[str, object], body: list, index: int, needle: str
) -> None:
    url, app = monitor
    response = post(url, {"events": body})
    assert response.status_code == 400
    assert response.json()["index"] == index
    assert needle in response.json()["error"]
    assert stored(app) == []


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"not json", "must be JSON"),
        (b'{"events": 3}', "events"),
        (b'{"other": []}', "events"),
    ],
)
def test_a_malformed_body_is_refused_with_json(monitor: tuple[str, object], data: bytes, needle: str) -> None:
    url, _ = monitor
    response = requests.post(
        f"{url}/monitor/api/events", data=data, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert needle in response.json()["error"]


def test_too_many_events_or_bytes_are_refused(monitor: tuple[str, object]) -> None:
    url, _ = monitor
    too_many = post(url, [event() for _ in range(1001)])
    assert too_many.status_code == 400
    assert "at most 1000" in too_many.json()["error"]
    huge = requests.post(
        f"{url}/monitor/api/events",
        data=b"[" + b" " * (9 * 1024 * 1024) + b"]",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert huge.status_code == 413
    assert "fewer events" in huge.json()["error"]


def test_a_configured_token_is_required(tmp_path: Path) -> None:
    app = create_app(config(tmp_path, ingest_token=TOKEN))
    server = AppServer(app).start()
    try:
        assert post(server.url, [event()]).status_code == 401
        wrong = post(server.url, [event()], headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "INGEST_TOKEN" in wrong.json()["error"]
        good = post(server.url, [event()], headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.json() == {"accepted": 1, "duplicates": 0}
    finally:
        server.stop()
        get_context(app).close()


def test_listeners_get_only_new_events_and_a_failing_one_does_not_fail_ingest(monitor: tuple[str, object]) -> None:
    url, app = monitor
    seen: list[str] = []

    def broken(events: object) -> None:
        raise RuntimeError("boom")

    for listener in (broken, lambda events: seen.extend(e.event_id for e in events)):
        get_context(app).bus.subscribe(EVENTS, listener)
    batch = [event(), event()]
    assert post(url, batch).status_code == 200
    assert post(url, batch).status_code == 200
    assert seen == [e["event_id"] for e in batch]


def test_a_stale_batch_served_beside_its_replay_does_not_let_the_replay_publish_first(
    monitor: tuple[str, object],
) -> None:
    # A monitor thawed after a freeze serves, side by side, a post the sender timed out on (its spool's head)
    # and the newer post that replays it with what came after (here the job's end). Listeners must hear the
    # events in the order they happened, whichever request claims them.
    url, app = monitor
    heard: list[str] = []
    first_heard, go_on = threading.Event(), threading.Event()

    def slow(events: object) -> None:  # a listener busy with the stale batch when its replay arrives
        if not first_heard.is_set():
            first_heard.set()
            go_on.wait(10)

    bus = get_context(app).bus  # type: ignore[arg-type]
    bus.subscribe(EVENTS, slow)
    bus.subscribe(EVENTS, lambda events: heard.extend(e.event_id for e in events))
    steps = [event(step=i) for i in (1, 2)]
    end = event(kind="job", stage=None, step=None, total_steps=None, status="succeeded")
    stale = threading.Thread(target=post, args=(url, steps))
    replay = threading.Thread(target=post, args=(url, [*steps, end]))
    stale.start()
    assert first_heard.wait(10)
    replay.start()
    replay.join(1.0)  # unordered, the replay publishes the end now; ordered, it waits for the stale batch
    go_on.set()
    stale.join(10)
    replay.join(10)
    names = {e["event_id"]: name for e, name in zip([*steps, end], ["step 1", "step 2", "end"], strict=True)}
    assert [names[event_id] for event_id in heard] == ["step 1", "step 2", "end"]
