"""The quality routes: read a job's scores, rate its clip."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from monitor.quality.scorer import QualityScorer
from monitor.web.quality import init_app


@pytest.fixture
def scorer(clips: dict[str, Path]) -> QualityScorer:
    """Score one smooth clip (job-ok) and leave one job queued in a stopped scorer (job-queued)."""
    scorer = QualityScorer(clip=None, write=lambda points: None, host_name="h", registry=CollectorRegistry())
    scorer.start()
    scorer.submit("job-ok", clips["smooth"])
    assert scorer.wait_idle(30.0)
    scorer.stop()
    scorer.submit("job-queued", clips["smooth"])
    return scorer


@pytest.fixture
def client(scorer: QualityScorer) -> FlaskClient:
    """Serve the blueprint from a bare app, as monitor/web/app.py registers it."""
    app = Flask(__name__)
    init_app(app, scorer)
    return app.test_client()


def test_get_quality_returns_the_scores(client: FlaskClient) -> None:
    response = client.get("/monitor/api/jobs/job-ok/quality")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "scored"
    assert body["clip_score"] is None
    assert body["clip_reason"] == "no CLIP weights configured"
    assert body["parts_used"] == "smoothness"
    assert 0.0 <= body["combined"] <= 1.0


def test_unknown_job_is_404(client: FlaskClient) -> None:
    assert client.get("/monitor/api/jobs/nope/quality").status_code == 404
    response = client.post("/monitor/api/jobs/nope/rating", json={"stars": 3})
    assert response.status_code == 404
    assert "nope" in response.get_json()["error"]


def test_rating_recomputes_the_combined_score(client: FlaskClient) -> None:
    before = client.get("/monitor/api/jobs/job-ok/quality").get_json()
    response = client.post("/monitor/api/jobs/job-ok/rating", json={"stars": 1})
    assert response.status_code == 200
    after = response.get_json()
    assert after["rating"] == 1
    assert after["parts_used"] == "smoothness,rating"
    assert after["combined"] == pytest.approx(0.3 * before["smoothness"] / 0.5)
    assert client.get("/monitor/api/jobs/job-ok/quality").get_json()["rating"] == 1


def test_rating_a_job_not_yet_scored_is_kept(client: FlaskClient) -> None:
    response = client.post("/monitor/api/jobs/job-queued/rating", json={"stars": 5})
    assert response.status_code == 200
    assert response.get_json()["status"] == "queued"
    assert response.get_json()["rating"] == 5


@pytest.mark.parametrize(
    "body",
    [{"stars": 0}, {"stars": 6}, {"stars": 4.5}, {"stars": "4"}, {"stars": True}, {"stars": None}, {}, [3]],
    ids=["zero", "six", "fraction", "string", "bool", "null", "missing", "list"],
)
def test_rating_outside_1_to_5_is_400_with_a_message(client: FlaskClient, body: object) -> None:
    response = client.post("/monitor/api/jobs/job-ok/rating", json=body)
    assert response.status_code == 400
    assert "1 to 5" in response.get_json()["error"]


def test_rating_without_json_is_400(client: FlaskClient) -> None:
    response = client.post("/monitor/api/jobs/job-ok/rating", data="stars=3")
    assert response.status_code == 400
