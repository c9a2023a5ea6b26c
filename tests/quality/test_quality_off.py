"""`MONITOR_QUALITY=0`: a monitor that scores no clip and loads no CLIP, and says so when asked for a score."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from common.events import Event, utc_now_iso
from monitor.compose import build_monitor, open_writer
from monitor.config import ConfigError, MonitorConfig
from monitor.storage import open_store
from monitor.web.app import QUALITY_OFF


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ([], {}, True),
        ([], {"MONITOR_QUALITY": "off"}, False),
        ([], {"MONITOR_QUALITY": "0"}, False),
        (["--quality", "no"], {"MONITOR_QUALITY": "1"}, False),
        (["--quality", "ON"], {"MONITOR_QUALITY": "0"}, True),
    ],
)
def test_the_switch_reads_one_or_zero_and_its_words_and_the_flag_wins(
    flags: list[str], environ: dict[str, str], expected: bool
) -> None:
    assert MonitorConfig.from_sources(flags, environ).quality is expected


def test_a_value_that_is_no_switch_is_refused_naming_what_it_takes() -> None:
    with pytest.raises(ConfigError, match=r"MONITOR_QUALITY must be 1 or 0 .*got 'maybe'"):
        MonitorConfig.from_sources([], {"MONITOR_QUALITY": "maybe"})


def test_with_quality_off_no_clip_is_loaded_or_scored_and_its_routes_say_why(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "job-a").mkdir(parents=True)
    (outputs / "job-a" / "video.mp4").write_bytes(b"not read")
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path / 'monitor.db'}",
        data_dir=tmp_path,
        spool_dir=tmp_path / "spool",
        alert_state_path=None,
        outputs_dir=outputs,
        clip_model=tmp_path / "no-such-clip",  # loading it would fail the build: quality off never tries
        generator_url=None,
        quality=False,
    ).validate()
    store = open_store(config.store_url)
    monitor = build_monitor(config, store, open_writer(config, store))
    assert monitor.quality is None
    monitor.start()
    try:
        client = monitor.app.test_client()
        event = Event(
            job_id="job-a", host=config.host_name, gpu="cpu", kind="job", status="succeeded",
            started_at=utc_now_iso(), prompt="a cat", video_path=str(outputs / "job-a" / "video.mp4"),
        )  # fmt: skip
        assert client.post("/monitor/api/events", json={"events": [event.to_dict()]}).status_code == 200

        asked = client.get("/monitor/api/jobs/job-a/quality")
        rated = client.post("/monitor/api/jobs/job-a/rating", json={"stars": 5})
        assert (asked.status_code, asked.get_json()) == (404, {"error": QUALITY_OFF})
        assert (rated.status_code, rated.get_json()) == (404, {"error": QUALITY_OFF})
        assert client.get("/monitor/api/status").get_json()["quality"] is None
        assert "i2v_quality_queue_pending" not in client.get("/metrics").get_data(as_text=True)
    finally:
        monitor.stop()
