"""The Grafana dashboards: they parse, use only the provisioned datasources, and their queries work: every
InfluxQL query runs against a real influxd after the monitor's store wrote the points, and returns data; every
PromQL expression parses (promtool) and names metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.events import STAGES, Event
from monitor.alerts.actions import ActionOutcome
from monitor.collection.host import HostSnapshot
from monitor.collection.nvml import GpuSnapshot
from monitor.collection.sampler import gpu_point, host_point
from monitor.quality.scorer import MEASUREMENT as QUALITY
from monitor.quality.scorer import QualityResult
from monitor.storage.base import Point
from monitor.storage.influx import InfluxStore
from monitor.storage.schema import event_to_point, iso_from_us
from tests.deploy.compose import ROOT, load_compose
from tests.deploy.grafana import DASHBOARDS, GRAFANA, concrete, dashboard_queries
from tests.servers import InfluxServer

DATASOURCES = GRAFANA / "provisioning" / "datasources" / "i2v.yml"
DATABASE = "grafana_dashboards"
HOSTS = {"host-a": ("0", "1"), "host-b": ("0",)}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _provisioned() -> dict[str, str]:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return {d["uid"]: d["type"] for d in datasources}


def test_dashboards_parse_and_use_only_the_provisioned_datasources() -> None:
    assert {p.stem for p in DASHBOARDS} == {"i2v-gpus", "i2v-jobs", "i2v-alerts"}
    provisioned = _provisioned()
    assert set(provisioned) == {"i2v-influxdb", "i2v-prometheus", "i2v-alertmanager"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        assert "i2v" in dashboard["tags"]
        references = [node["datasource"] for node in _walk(dashboard) if "datasource" in node]
        assert references, path.name
        for reference in references:
            assert isinstance(reference, dict), f"{path.name}: datasource by name {reference!r}, not by uid"
            assert provisioned.get(reference["uid"]) == reference["type"], f"{path.name}: {reference}"
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert {"host", "gpu"} <= variables, path.name
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"


def test_provisioning_matches_the_compose_mounts_and_services() -> None:
    grafana = load_compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "i2v.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [mounts["./dashboards/grafana/dashboards"]]
    assert mounts["./dashboards/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == mounts["./dashboards/grafana/dashboards"]
    assert (GRAFANA / "dashboards" / Path(home).name).exists()
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    services = load_compose()["services"]
    for datasource in datasources:
        service = datasource["url"].split("//", 1)[1].split(":", 1)[0]
        assert service in services, datasource["url"]
    values = json.dumps(datasources)  # the parsed values: Grafana expands ${...} there, not in comments
    for variable in set(re.findall(r"\$\{(\w+)\}", values)):
        assert variable in grafana["environment"], f"provisioning reads ${{{variable}}}, compose does not pass it"


# ---- InfluxQL against a real influxd ----------------------------------------------------------------------


def _points(now_ns: int) -> list[Point]:
    """A few minutes of what the monitor writes for two hosts: samples, events, quality scores, actions."""
    points: list[Point] = []
    for host, gpus in HOSTS.items():
        for i in range(30):
            t = now_ns - (300 - 10 * i) * 1_000_000_000
            for gpu in gpus:
                snapshot = GpuSnapshot(
                    index=int(gpu),
                    uuid=f"GPU-{host}-{gpu}",
                    name="NVIDIA H100 80GB HBM3",
                    up=True,
                    utilization_ratio=0.5 + i / 100,
                    memory_used_bytes=(20 + i) * 10**9,
                    memory_total_bytes=80 * 10**9,
                    temperature_c=60.0 + i / 2,
                    power_w=300.0,
                    sm_clock_mhz=1980,
                    throttle_reasons=0,
                    ecc_errors_corrected=0,
                    ecc_errors_uncorrected=0,
                    energy_j=1e6 + i,
                    energy_age_s=0.0,
                    processes=(),
                )
                points.append(gpu_point(snapshot, host_name=host, generator_pid=4242, time_ns=t))
            host_snapshot = HostSnapshot(0.25, 10 * 10**9, 64 * 10**9, 4242, 3 * 10**9, 500 * 10**9)
            points.append(host_point(host_snapshot, host_name=host, time_ns=t))
        for gpu in gpus:
            params = {"resolution": 512, "num_frames": 16, "steps": 2, "guidance_scale": 9.0, "fps": 8, "seed": 1}
            for j, status in enumerate(("succeeded", "failed")):
                job = f"{host}-{gpu}-{j}"
                start_us = (now_ns - (200 - 60 * j) * 1_000_000_000) // 1000

                base = {"job_id": job, "host": host, "gpu": gpu, "params": params}
                timeline: list[tuple[float, dict[str, Any]]] = [
                    (0, {"kind": "job", "status": "queued"}),
                    (0.1, {"kind": "job", "status": "running"}),
                    *((1 + k, {"kind": "stage", "stage": s, "duration_s": 0.5}) for k, s in enumerate(STAGES)),
                    *(
                        (20 + k, {"kind": "stage", "stage": "denoising_step", "duration_s": 0.25, "step": k})
                        for k in range(2)
                    ),
                    (30, {"kind": "job", "status": status, "peak_memory_bytes": 30 * 10**9}),
                ]
                if status == "failed":
                    timeline[-1][1].update(error="CUDA out of memory", suggestion="lower the resolution")
                for offset_s, fields in timeline:
                    at = iso_from_us(start_us + round(offset_s * 1_000_000))
                    points.append(event_to_point(Event(**base, **fields, started_at=at)))
                combined = 0.8 if j == 0 else 0.4
                result = QualityResult(
                    job_id=job,
                    gpu=gpu,
                    status="scored",
                    video_path=f"{job}.mp4",
                    clip_score=30.0,
                    clip_score_min=28.0,
                    i2v_subject=0.9,
                    smoothness=0.95,
                    jerk=0.05,
                    temporal_flickering=0.97,
                    dynamic_degree=0.5,
                    static=False,
                    combined=combined,
                    parts_used="clip,smoothness",
                    low_quality=combined < 0.6,
                    scoring_duration_s=1.2,
                )
                points.append(Point(QUALITY, {"host": host, "gpu": gpu}, result.fields(), start_us * 1000 + 40 * 10**9))
        action = ActionOutcome(
            action="cancel_job",
            result="success",
            detail="cancelled",
            alert_id="a1",
            alertname="GpuMemoryHigh",
            labels={"severity": "severe", "host": host, "gpu": gpus[0]},
            job_id=f"{host}-{gpus[0]}-1",
            at=now_ns / 1e9 - 100,
        )
        points.append(action.to_point(host))
    return points


@pytest.fixture(scope="module")
def influx_with_points(influxd: InfluxServer) -> InfluxServer:
    """The session's influxd with the points written through the monitor's InfluxDB store."""
    store = InfluxStore.from_url(influxd.store_url(DATABASE))
    try:
        store.write(_points(time.time_ns()))
    finally:
        store.close()
    return influxd


def _run(server: InfluxServer, query: str) -> list[dict[str, Any]]:
    answer = server.query(query, DATABASE)
    results = answer["results"]
    assert all("error" not in r for r in results), f"{query}\n-> {answer}"
    return [s for r in results for s in r.get("series", [])]


@pytest.mark.parametrize(
    ("name", "query"), dashboard_queries("influxdb"), ids=[n for n, _ in dashboard_queries("influxdb")]
)
def test_influxql_query_runs_against_influxd_and_returns_data(
    influx_with_points: InfluxServer, name: str, query: str
) -> None:
    series = _run(influx_with_points, concrete(query))
    values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
    assert values, f"{name}: no data from {concrete(query)}"


def test_influxql_queries_filter_by_host_and_gpu(influx_with_points: InfluxServer) -> None:
    grouped = [(n, q) for n, q in dashboard_queries("influxdb") if 'GROUP BY time($__interval), "host", "gpu"' in q]
    assert len(grouped) >= 5
    for name, query in grouped:
        series = _run(influx_with_points, concrete(query, host="host-b", gpu="0"))
        assert series, name
        assert {(s["tags"]["host"], s["tags"]["gpu"]) for s in series} == {("host-b", "0")}, name
    gpus = _run(
        influx_with_points, concrete(dict(dashboard_queries("influxdb"))["i2v-gpus: variable gpu"], host="host-a")
    )
    assert sorted(v[1] for s in gpus for v in s["values"]) == ["0", "1"]


# ---- PromQL: parses, and names metrics that exist ---------------------------------------------------------


def test_promql_expressions_parse(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)")
    expressions = dashboard_queries("prometheus")
    assert expressions
    rules = [
        {"record": f"dashboard:query_{i}", "expr": concrete(expr).replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promql_expressions_name_metrics_the_services_export() -> None:
    sources = (
        "\n".join(p.read_text() for p in [*ROOT.glob("generator/**/*.py"), *ROOT.glob("monitor/**/*.py")])
        + (ROOT / "alerts" / "prometheus" / "rules.yml").read_text()
    )
    for name, expr in dashboard_queries("prometheus"):
        for metric in set(re.findall(r"\b(?:[a-z]+:)?i2v_[a-z0-9_:]+|\bALERTS\b", expr)):
            if metric == "ALERTS":
                continue
            base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
            assert f'"{base}"' in sources or f"record: {metric}" in sources, f"{name}: {metric} is exported nowhere"
