"""A job's progress pushed as Server-Sent Events (resumable), and the submitter's rating token, on a real generator.

One tiny job runs to its end (the first test follows it); the others are cancelled while queued or running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from common import job_token
from generator import progress
from tests.generator.conftest import GeneratorServer, serve_generator

ADMIN_TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeneratorServer]:
    """A tiny-model generator without a monitor, with an admin token."""
    yield from serve_generator(tmp_path_factory.mktemp("progress"), admin_token=ADMIN_TOKEN)


def read_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream into its events (comments and `retry` kept as their own kinds)."""
    event: dict[str, Any] = {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(": ")
            event[name] = value


def stream(generator: GeneratorServer, job_id: str, last_event_id: str | None = None) -> requests.Response:
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    return requests.get(f"{generator.url}/api/jobs/{job_id}/events", headers=headers, stream=True, timeout=300)


@pytest.fixture(scope="module")
def submitted(generator: GeneratorServer) -> dict[str, Any]:
    """The answer to the one submission that runs to its end."""
    return generator.submit().json()


def cancel(generator: GeneratorServer, job_id: str) -> None:
    requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", headers=ADMIN, timeout=10)
    generator.wait_state(job_id, ("succeeded", "failed", "cancelled"))


def test_a_jobs_progress_is_pushed_until_it_ends_and_a_resumed_stream_repeats_nothing(
    generator: GeneratorServer, submitted: dict[str, Any]
) -> None:
    job_id = submitted["job_id"]
    with stream(generator, job_id) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-store"
        received = [e for e in read_events(response) if "event" in e]
    kinds = [e["event"] for e in received]
    states = [e["id"].split(".")[0] for e in received if e["event"] == "state"]
    assert states[-1] == "succeeded"
    assert states == sorted(set(states), key=states.index)  # each state once, in order
    assert "running" in states
    ids = [e["id"] for e in received]
    assert len(ids) == len(set(ids))  # no status sent twice
    steps = [int(e["id"].split(".")[1]) for e in received if e["id"].startswith("running")]
    assert steps == sorted(steps)
    assert steps[-1] == 10
    assert kinds.count("progress") >= 5  # a step at a time (the stream polls every 0.25 s; steps take longer)
    last = json.loads(received[-1]["data"])
    assert last["state"] == "succeeded"
    assert last["video_url"] == f"/api/jobs/{job_id}/video"
    assert last["progress"]["step"] == 10

    # Reconnecting with the last id seen: the job is over and the client knew it, so 204 (EventSource stops).
    assert stream(generator, job_id, received[-1]["id"]).status_code == 204
    # With an earlier id, the present status comes at once, and the stream ends with it.
    with stream(generator, job_id, received[0]["id"]) as resumed:
        again = [e for e in read_events(resumed) if "event" in e]
    assert [e["id"] for e in again] == [received[-1]["id"]]
    assert again[0]["event"] == "state"
    # Polling still works for simple clients.
    assert generator.job(job_id)["state"] == "succeeded"


def test_a_full_house_of_streams_answers_503_and_unknown_jobs_404(generator: GeneratorServer) -> None:
    job_id = generator.submit().json()["job_id"]
    slots: progress.StreamSlots = generator.app.extensions["progress_streams"]
    taken = 0
    while slots.take():
        taken += 1
    try:
        refused = stream(generator, job_id)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "poll GET /api/jobs/<id> instead" in refused.json()["error"]
    finally:
        for _ in range(taken):
            slots.give_back()
    assert stream(generator, "no-such-job").status_code == 404
    cancel(generator, job_id)
    with stream(generator, job_id) as ended:  # a stream of an ended job sends its end and closes
        assert [e["event"] for e in read_events(ended) if "event" in e] == ["state"]
    assert slots.open == 0  # every stream gave its slot back


def test_the_event_stream_keeps_alive_and_ends_after_its_longest_span() -> None:
    now = {"s": 0.0}
    key = {"value": "running.3.0.0"}

    def sleep(seconds: float) -> None:
        now["s"] += seconds

    text = list(
        progress.events(
            lambda: key["value"],
            lambda: {"state": "running"},
            "running.2.0.0",
            poll_s=1.0,
            keepalive_s=15.0,
            max_s=40.0,
            clock=lambda: now["s"],
            sleep=sleep,
        )
    )
    assert text[0] == "retry: 2000\n\n"
    assert text[1].startswith("event: progress\nid: running.3.0.0\n")  # newer than the client's: sent at once
    assert text[2:] == [": keepalive\n\n", ": keepalive\n\n"]  # then quiet: a comment each 15 s, until 40 s


def test_only_the_submitter_rates_only_their_job(generator: GeneratorServer, submitted: dict[str, Any]) -> None:
    first = submitted
    second = generator.submit().json()
    token = first["rating_token"]
    assert token == job_token.job_token(job_token.key_from_admin_token(ADMIN_TOKEN), first["job_id"])
    assert "rating_token" not in generator.job(first["job_id"])  # given once, at submission
    url = f"{generator.url}/api/jobs/{first['job_id']}/rating"

    def rate(stars: object, auth: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        return requests.post(url, json={"stars": stars}, headers=headers, timeout=10)

    for auth in (None, "forged", second["rating_token"]):
        refused = rate(4, auth)
        assert refused.status_code == 401
        assert "rating_token" in refused.json()["error"]
    for stars in (0, 6, 2.5, "5", True):
        assert rate(stars, token).status_code == 400
    early = requests.post(  # the second job is queued or running: there is no clip yet
        f"{generator.url}/api/jobs/{second['job_id']}/rating",
        json={"stars": 4},
        headers={"Authorization": f"Bearer {second['rating_token']}"},
        timeout=10,
    )
    assert early.status_code == 409
    assert "only a finished clip can be rated" in early.json()["error"]
    cancel(generator, second["job_id"])
    generator.wait_state(first["job_id"], ("succeeded",))
    no_monitor = rate(4, token)
    assert no_monitor.status_code == 503
    assert "--monitor-url" in no_monitor.json()["error"]
    assert rate(4, ADMIN_TOKEN).status_code == 503  # the admin token passes the check too
