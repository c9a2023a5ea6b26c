"""End to end through the monitor's own app: an ingested succeeded-job event is scored, then rated over HTTP.

The wiring here is the one monitor/web/app.py is given (see monitor/web/quality.py): the blueprint, the event
listener, and the scorer writing through the app's writer into the app's store.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from common.events import Event, utc_now_iso
from monitor.bus import EVENTS
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.quality.clip_score import ClipScorer
from monitor.quality.scorer import MEASUREMENT, QualityScorer
from monitor.web import quality as quality_api
from monitor.web.context import get_context

from . import synthetic


def test_a_finished_job_is_scored_stored_and_rated(
    tmp_path: Path, clip_dir: Path, clips: dict[str, Path], input_png: Path
) -> None:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name="node-a",
        outputs_dir=tmp_path / "outputs",
    )
    video = synthetic.job_folder(config.outputs_dir, "job-e2e", clips["smooth"], input_png)
    app = create_app(config)
    ctx = get_context(app)
    # The registration monitor/web/app.py is given:
    scorer = QualityScorer(
        clip=ClipScorer.from_dir(clip_dir), write=ctx.writer.write, host_name=config.host_name,
        outputs_dir=config.outputs_dir,
    )  # fmt: skip
    scorer.start()
    quality_api.init_app(app, scorer)
    ctx.bus.subscribe(EVENTS, scorer.listen)
    try:
        client = app.test_client()
        event = Event(
            job_id="job-e2e", host="node-a", gpu="0", kind="job", status="succeeded", started_at=utc_now_iso(),
            prompt="a cat and a dog", video_path=str(video),
        )  # fmt: skip
        response = client.post("/monitor/api/events", json={"events": [event.to_dict()]})
        assert response.status_code == 200, response.get_json()
        assert scorer.wait_idle(30.0)

        scored = client.get("/monitor/api/jobs/job-e2e/quality").get_json()
        assert scored["status"] == "scored"
        assert scored["clip_score"] is not None
        assert scored["i2v_subject"] is not None
        assert scored["parts_used"] == "clip,smoothness"

        rated = client.post("/monitor/api/jobs/job-e2e/rating", json={"stars": 1}).get_json()
        assert rated["parts_used"] == "clip,smoothness,rating"
        assert rated["combined"] < scored["combined"]

        assert ctx.writer.flush(10.0)
        rows = ctx.store.query_window(MEASUREMENT, ["combined", "rating"], 0, time.time_ns() + 10**12)
        assert [row.tags for row in rows] == [{"host": "node-a", "gpu": "0"}] * 2
        assert [row.max["rating"] for row in rows] == [None, 1]
        assert rows[1].mean["combined"] == rated["combined"]
    finally:
        scorer.stop()
        ctx.close()
