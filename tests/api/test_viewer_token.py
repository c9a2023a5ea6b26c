"""The viewer token: with VIEWER_TOKEN set, every route that shows a prompt, a clip or a report answers 401 without it.

A script sends it as a bearer token (the admin token passes too); a page signs in once and holds an HttpOnly
cookie. Health, readiness, metrics, the description and the page itself stay open.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from common.auth import VIEWER_COOKIE
from common.events import Event, utc_now_iso
from generator.config import GeneratorConfig
from generator.jobs import Job
from monitor.config import ConfigError, MonitorConfig
from monitor.web.context import get_context
from tests.api.conftest import TOKEN, make_generator_app, make_monitor_app
from tests.generator.conftest import png_bytes
from tests.generator.test_jobs import PARAMS

VIEWER = "v1ewer-token-for-tests"
WRONG = ["", "Bearer", "Bearer wrong", f"Bearer {VIEWER}x", VIEWER, f"Basic {VIEWER}"]
FINISHED_ID = "f" * 32


@pytest.fixture(scope="module")
def generator_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The generator's app with a viewer token and an admin token, one finished job with its clip on disk."""
    root = tmp_path_factory.mktemp("generator-viewer")
    app = make_generator_app(root, admin_token=TOKEN, viewer_token=VIEWER)
    clip = root / "outputs" / FINISHED_ID / "video.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")  # served as bytes: its content does not matter here
    job = Job(FINISHED_ID, "a private prompt", PARAMS, PARAMS, state="succeeded", finished_at=1.0, video_path=str(clip))
    app.extensions["generator"].book.store_finished([job])
    yield app
    app.extensions["generator"].close()


def status_of(client: FlaskClient, path: str, **kwargs: object) -> int:
    """GET `path` and return the status, closing the answer (a clip is an open file until then)."""
    with client.get(path, **kwargs) as answer:
        return answer.status_code


def submit(client: FlaskClient, headers: dict[str, str] | None = None) -> object:
    data = {"prompt": "a fox", "image": (io.BytesIO(png_bytes()), "a.png", "image/png")}
    return client.post("/api/jobs", data=data, headers=headers or {}, content_type="multipart/form-data")


VIEWER_ROUTES = [
    ("GET", "/api/jobs"),
    ("GET", f"/api/jobs/{FINISHED_ID}"),
    ("GET", f"/api/jobs/{FINISHED_ID}/video"),
    ("GET", f"/api/jobs/{FINISHED_ID}/events"),
    ("POST", f"/api/jobs/{FINISHED_ID}/cancel"),
]


@pytest.mark.parametrize(("method", "path"), VIEWER_ROUTES)
def test_routes_that_show_prompts_or_clips_refuse_a_missing_or_wrong_viewer_token(
    generator_app: Flask, method: str, path: str
) -> None:
    client = generator_app.test_client()
    for header in WRONG:
        answer = client.open(path, method=method, headers={"Authorization": header} if header else {})
        assert answer.status_code == 401, (header, answer.status_code)
        assert "VIEWER_TOKEN" in answer.get_json()["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "private prompt" not in answer.get_data(as_text=True)


def test_submitting_needs_the_viewer_token_too(generator_app: Flask) -> None:
    client = generator_app.test_client()
    assert submit(client).status_code == 401
    accepted = submit(client, {"Authorization": f"Bearer {VIEWER}"})
    assert accepted.status_code == 202, accepted.get_json()


@pytest.mark.parametrize("token", [VIEWER, TOKEN], ids=["viewer", "admin"])
def test_the_viewer_or_admin_bearer_token_opens_them(generator_app: Flask, token: str) -> None:
    client = generator_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    listing = client.get("/api/jobs", headers=headers)
    assert listing.status_code == 200
    assert FINISHED_ID in [job["job_id"] for job in listing.get_json()["jobs"]]
    assert client.get(f"/api/jobs/{FINISHED_ID}", headers=headers).get_json()["prompt"] == "a private prompt"
    assert status_of(client, f"/api/jobs/{FINISHED_ID}/video", headers=headers) == 200


def test_a_page_signs_in_once_and_its_cookie_opens_the_clip(generator_app: Flask) -> None:
    client = generator_app.test_client()
    assert client.get("/api/session").status_code == 401
    assert client.post("/api/session", json={"token": "wrong"}).status_code == 401
    assert client.post("/api/session", json={}).status_code == 400
    assert client.post("/api/session", data="{" * 100_000, content_type="application/json").status_code == 400

    signed_in = client.post("/api/session", json={"token": VIEWER})
    assert signed_in.status_code == 200
    cookie = signed_in.headers["Set-Cookie"]
    assert cookie.startswith(f"{VIEWER_COOKIE}=")
    assert VIEWER not in cookie  # the cookie proves the token without holding it
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert client.get("/api/session").get_json() == {"required": True, "signed_in": True}
    assert status_of(client, f"/api/jobs/{FINISHED_ID}/video") == 200  # what a <video src> sends
    assert client.get("/api/jobs").status_code == 200

    assert client.delete("/api/session").status_code == 200
    assert client.get("/api/jobs").status_code == 401


def test_a_forged_cookie_is_refused(generator_app: Flask) -> None:
    client = generator_app.test_client()
    client.set_cookie(VIEWER_COOKIE, VIEWER)  # the token itself is not the proof
    assert client.get("/api/jobs").status_code == 401
    client.set_cookie(VIEWER_COOKIE, "0" * 64)
    assert client.get("/api/jobs").status_code == 401


@pytest.mark.parametrize("path", ["/", "/health", "/ready", "/metrics", "/openapi.json", "/static/app.js"])
def test_what_shows_no_prompt_stays_open(generator_app: Flask, path: str) -> None:
    with generator_app.test_client().get(path) as answer:
        assert answer.status_code in (200, 503), path  # /ready is 503 while no model is loaded
        assert "private prompt" not in answer.get_data(as_text=True)


def test_the_page_knows_it_must_ask_for_the_token(generator_app: Flask, tmp_path: Path) -> None:
    assert '"viewer_token_required": true' in generator_app.test_client().get("/").get_data(as_text=True)
    open_app = make_generator_app(tmp_path)
    try:
        client = open_app.test_client()
        assert '"viewer_token_required": false' in client.get("/").get_data(as_text=True)
        assert client.get("/api/jobs").status_code == 200  # no token set: open, as before
        assert client.get("/api/session").get_json() == {"required": False, "signed_in": True}
    finally:
        open_app.extensions["generator"].close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_public_generator_needs_the_viewer_token(host: str) -> None:
    with pytest.raises(ValueError, match="VIEWER_TOKEN"):
        GeneratorConfig(host=host, admin_token="t").validate()
    GeneratorConfig(host=host, admin_token="t", viewer_token="v").validate()
    GeneratorConfig(host=host, admin_token="t").validate(serves_jobs=False)  # a queue-mode worker: probes only
    GeneratorConfig(host="127.0.0.1").validate()
    assert GeneratorConfig.from_sources([], environ={"I2V_VIEWER_TOKEN": "v"}).viewer_token == "v"
    assert "s3cret" not in repr(GeneratorConfig(viewer_token="s3cret"))


# ---- the monitor -------------------------------------------------------------------------------------------

MONITOR_JOB = "m" * 32


@pytest.fixture(scope="module")
def monitor_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The monitor's app with every token, and one job's events (with a private prompt) stored."""
    app = make_monitor_app(
        tmp_path_factory.mktemp("monitor-viewer"), ingest_token=TOKEN, admin_token=TOKEN, viewer_token=VIEWER
    )
    event = Event(
        job_id=MONITOR_JOB,
        host="api-host",
        gpu="0",
        kind="job",
        status="queued",
        started_at=utc_now_iso(),
        prompt="a private prompt",
    )
    answer = app.test_client().post(
        "/monitor/api/events", json={"events": [event.to_dict()]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200, answer.get_json()
    assert get_context(app).writer.flush(timeout_s=10)
    yield app
    get_context(app).close()


MONITOR_VIEWER_ROUTES = [
    "/monitor/api/jobs",
    f"/monitor/api/jobs/{MONITOR_JOB}",
    f"/monitor/api/jobs/{MONITOR_JOB}/quality",
    f"/monitor/api/jobs/{MONITOR_JOB}/story",
    "/monitor/api/reports/jobs.csv",
    "/monitor/api/reports/gpu.csv",
]


@pytest.mark.parametrize("path", MONITOR_VIEWER_ROUTES)
def test_monitor_routes_that_show_prompts_clips_or_reports_refuse_a_missing_or_wrong_viewer_token(
    monitor_app: Flask, path: str
) -> None:
    client = monitor_app.test_client()
    for header in WRONG:
        with client.get(path, headers={"Authorization": header} if header else {}) as answer:
            assert answer.status_code == 401, (header, answer.status_code)
            assert "VIEWER_TOKEN" in answer.get_json()["error"]
            assert "private prompt" not in answer.get_data(as_text=True)
    assert status_of(client, path, headers={"Authorization": f"Bearer {VIEWER}"}) != 401


def test_the_monitor_shows_prompts_to_a_viewer_by_token_or_by_session(monitor_app: Flask) -> None:
    client = monitor_app.test_client()
    headers = {"Authorization": f"Bearer {VIEWER}"}
    listing = client.get("/monitor/api/jobs", headers=headers).get_json()
    assert [job["prompt"] for job in listing["jobs"]] == ["a private prompt"]
    admin = client.get("/monitor/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.status_code == 200
    assert client.post("/monitor/api/session", json={"token": "wrong"}).status_code == 401
    assert client.post("/monitor/api/session", json={"token": VIEWER}).status_code == 200
    with client.get("/monitor/api/reports/jobs.csv") as report:  # what the dashboard's download link sends
        assert report.status_code == 200
        assert report.get_data(as_text=True).startswith("job_id,")
    client.delete("/monitor/api/session")
    assert client.get("/monitor/api/jobs").status_code == 401


@pytest.mark.parametrize(
    "path", ["/monitor/", "/monitor/api/status", "/monitor/api/alerts", "/monitor/api/summary", "/openapi.json"]
)
def test_what_the_monitor_shows_without_prompts_stays_open(monitor_app: Flask, path: str) -> None:
    with monitor_app.test_client().get(path) as answer:
        assert answer.status_code == 200, (path, answer.get_data(as_text=True)[:300])
        assert "private prompt" not in answer.get_data(as_text=True)


def test_the_dashboard_knows_it_must_ask_for_the_token(monitor_app: Flask) -> None:
    assert '"viewer_token_required": true' in monitor_app.test_client().get("/monitor/").get_data(as_text=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_a_public_monitor_needs_the_viewer_token(host: str) -> None:
    with pytest.raises(ConfigError, match="VIEWER_TOKEN"):
        MonitorConfig(host=host, ingest_token="t", admin_token="t").validate()
    MonitorConfig(host=host, ingest_token="t", admin_token="t", viewer_token="v").validate()
    assert MonitorConfig.from_sources([], environ={"I2V_VIEWER_TOKEN": "v"}).viewer_token == "v"
    assert "s3cret" not in repr(MonitorConfig(viewer_token="s3cret"))
