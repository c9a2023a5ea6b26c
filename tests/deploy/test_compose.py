"""docker-compose.yml: it validates without an engine, every path it mounts or builds from exists, secrets come
only from .env, and the containers run the same `python -m generator` / `python -m monitor` the tests run."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from generator.config import GeneratorConfig
from monitor.config import ConfigError, MonitorConfig
from tests.deploy.compose import COMPOSE_FILE, ENV_EXAMPLE, ROOT, filled_env, load_compose, run_compose_config

SERVICES = {"influxdb", "generator", "monitor", "prometheus", "alertmanager", "grafana", "redis", "worker"}
SECRETS = (
    "I2V_ADMIN_TOKEN",
    "I2V_INGEST_TOKEN",
    "I2V_VIEWER_TOKEN",
    "INFLUXDB_ADMIN_PASSWORD",
    "INFLUXDB_READ_USER_PASSWORD",
    "MONITOR_STORE",
    "GRAFANA_ADMIN_PASSWORD",
)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    """The compose file as `compose config` resolves it with a filled-in .env, and the values filled in."""
    env_file, values = filled_env(tmp_path_factory.mktemp("compose"))
    result = run_compose_config(env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout), values


def _volume(volume: str | dict[str, Any]) -> str:
    """Return a volume as `source:target[:ro]`, from the short form (docker-compose 1.x) or the long (2.x)."""
    if isinstance(volume, str):
        return volume.removesuffix(":rw")
    return f"{volume['source']}:{volume['target']}" + (":ro" if volume.get("read_only") else "")


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_file_validates_with_the_example_env_filled_in(resolved: tuple[dict[str, Any], dict]) -> None:
    config, values = resolved
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name
    # The secrets reached the services that need them, and the two tokens are shared as they must be.
    generator_env, monitor_env = services["generator"]["environment"], services["monitor"]["environment"]
    assert generator_env["I2V_INGEST_TOKEN"] == monitor_env["I2V_INGEST_TOKEN"]
    assert services["generator"]["environment"]["I2V_ADMIN_TOKEN"] == values["I2V_ADMIN_TOKEN"]
    # One viewer token for both: a browser signed in on one page is signed in on the other (same host name).
    assert generator_env["I2V_VIEWER_TOKEN"] == monitor_env["I2V_VIEWER_TOKEN"]
    assert services["monitor"]["environment"]["MONITOR_STORE"] == values["MONITOR_STORE"]
    assert services["influxdb"]["environment"]["INFLUXDB_DB"] == "i2v"
    # Published ports stay on loopback unless I2V_PUBLISH_ADDR says otherwise.
    for name, service in services.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert published.startswith("127.0.0.1:"), (name, port)


def test_generator_and_monitor_share_the_gpus_the_pid_namespace_and_the_clips(
    resolved: tuple[dict[str, Any], dict],
) -> None:
    services = resolved[0]["services"]
    for name in ("generator", "monitor"):
        service = services[name]
        assert service["pid"] == "host", f"{name}: NVML's host PIDs must match the generator's own PID"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    generator_volumes = [_volume(v) for v in services["generator"]["volumes"]]
    monitor_volumes = [_volume(v) for v in services["monitor"]["volumes"]]
    outputs = _flag(services["generator"]["command"], "--outputs")
    assert outputs == _flag(services["monitor"]["command"], "--outputs"), "clips must resolve at the same path"
    assert any(v.startswith("outputs:") and f":{outputs}" in v and not v.endswith(":ro") for v in generator_volumes)
    assert any(v.startswith("outputs:") and v.endswith(f"{outputs}:ro") for v in monitor_volumes), monitor_volumes


def test_compose_refuses_to_start_without_the_secrets() -> None:
    result = run_compose_config(ENV_EXAMPLE)  # the example as committed: every secret empty
    assert result.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", result.stderr), result.stderr


def test_no_secret_is_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be ignored by git"
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tracked.stdout == ""
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    for key in SECRETS:
        assert example[key] == "", f".env.example must leave {key} empty"
    # The compose file only refers to secrets; it never holds a value for one.
    text = COMPOSE_FILE.read_text()
    for key in SECRETS:
        for match in re.finditer(rf"{key}: (.*)", text):
            assert match.group(1).startswith("${"), match.group(0)


def _mount_sources(compose: dict[str, Any]) -> list[tuple[str, str]]:
    named = set(compose.get("volumes") or {})
    sources = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source not in named:
                sources.append((name, source))
    return sources


def test_every_path_the_compose_file_mounts_or_builds_from_exists() -> None:
    compose = load_compose()
    sources = _mount_sources(compose)
    assert sources, "expected bind mounts of the repository's configs"
    for service, source in sources:
        assert source.startswith("./"), f"{service}: mount {source!r} should be relative to the repository"
        assert (ROOT / source).exists(), f"{service} mounts {source}, which does not exist"
    dockerfiles = set()
    for service in compose["services"].values():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            dockerfiles.add(context / service["build"]["dockerfile"])
    assert dockerfiles == {ROOT / "docker" / "Dockerfile"}
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines():
        words = shlex.split(line) if line.startswith("COPY ") else []
        if words and not any(w.startswith("--from") for w in words):
            for source in words[1:-1]:
                assert list(ROOT.glob(source)), f"the Dockerfile copies {source}, which does not exist"
                assert source not in ignored, f".dockerignore leaves {source} out of the build context"


def _service_environ(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def test_the_generator_container_runs_python_m_generator_with_a_config_it_accepts(
    resolved: tuple[dict[str, Any], dict],
) -> None:
    service = resolved[0]["services"]["generator"]
    command = service["command"]
    assert command[:3] == ["python", "-m", "generator"]
    environ = _service_environ(service)
    config = GeneratorConfig.from_sources(command[3:], environ=environ)
    config.validate()
    assert (config.host, config.port, config.monitor_url) == ("0.0.0.0", 7860, "http://monitor:7861")
    assert config.host_name == "gpu-host-1"
    assert f":{config.port}/health" in " ".join(service["healthcheck"]["test"])
    # Compiling is off unless turned on; its caches live on their own volume, so a restart or a new container
    # reuses the kernels once it is.
    acceleration = config.acceleration(on_gpu=True)
    assert not acceleration.compile
    assert f"compile-cache:{acceleration.cache_dir}" in [_volume(v) for v in service["volumes"]]
    assert config.viewer_token == environ["I2V_VIEWER_TOKEN"]
    # Binding 0.0.0.0 is refused without either token: that is why compose requires them.
    for token in ("I2V_ADMIN_TOKEN", "I2V_VIEWER_TOKEN"):
        without_token = GeneratorConfig.from_sources(command[3:], environ={**environ, token: ""})
        with pytest.raises(ValueError, match=token):
            without_token.validate()


def test_the_monitor_container_runs_python_m_monitor_with_a_config_it_accepts(
    resolved: tuple[dict[str, Any], dict],
) -> None:
    service = resolved[0]["services"]["monitor"]
    command = service["command"]
    assert command[:3] == ["python", "-m", "monitor"]
    environ = _service_environ(service)
    config = MonitorConfig.from_sources(command[3:], environ=environ).validate()
    assert (config.host, config.port, config.generator_url) == ("0.0.0.0", 7861, "http://generator:7860")
    assert config.store_url.startswith("influxdb://admin:")
    assert config.store_url.endswith("@influxdb:8086/i2v")
    assert config.host_name == "gpu-host-1"
    assert config.data_dir == Path("/data/monitor")
    assert config.alert_state_path == Path("/data/monitor/alerts-state.json")  # on the monitor's volume
    assert config.alertmanager_urls == ("http://alertmanager:9093",)
    assert config.admin_token == environ["I2V_ADMIN_TOKEN"]
    assert f":{config.port}/monitor/api/status" in " ".join(service["healthcheck"]["test"])
    assert config.viewer_token == environ["I2V_VIEWER_TOKEN"]
    for token in ("I2V_INGEST_TOKEN", "I2V_VIEWER_TOKEN"):
        with pytest.raises(ConfigError, match=token):
            MonitorConfig.from_sources(command[3:], environ={**environ, token: ""}).validate()


def test_queue_mode_adds_redis_with_persistence_and_a_gpu_worker_sharing_the_clips(
    resolved: tuple[dict[str, Any], dict],
) -> None:
    services = resolved[0]["services"]
    for name in ("redis", "worker"):
        assert services[name]["profiles"] == ["queue"], f"{name} runs only with --profile queue"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert any(_volume(v).startswith("redis-data:/data") for v in services["redis"]["volumes"])
    worker = services["worker"]
    command = worker["command"]
    assert command[:4] == ["python", "-m", "generator", "worker"]
    config = GeneratorConfig.from_sources(command[4:], environ=_service_environ(worker))
    config.validate(serves_jobs=False)  # a worker serves probes only: no viewer token
    assert config.queue_url == "redis://redis:6379/0"
    assert config.monitor_url == "http://monitor:7861"
    assert f":{config.port}/ready" in " ".join(worker["healthcheck"]["test"])
    assert config.outputs == Path(_flag(services["generator"]["command"], "--outputs")), "one clip folder"
    assert any(_volume(v) == f"outputs:{config.outputs}" for v in worker["volumes"])
    assert worker["pid"] == "host"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert len(device["device_ids"]) == 1, "one GPU per worker"
    # The generator switches to queue mode from the same .env.
    generator_env = _service_environ(services["generator"])
    assert "GENERATOR_QUEUE_URL" in generator_env
