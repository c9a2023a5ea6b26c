"""Configuration users can find: one naming scheme, old names still read (with a warning), README from the code."""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from generator.config import SETTINGS as GENERATOR_SETTINGS
from generator.config import GeneratorConfig
from monitor.config import SETTINGS as MONITOR_SETTINGS
from monitor.config import MonitorConfig

ROOT = Path(__file__).resolve().parents[2]
SCHEME = {
    "generator": re.compile(r"^(GENERATOR|I2V)_[A-Z0-9_]+$"),
    "monitor": re.compile(r"^(MONITOR|I2V)_[A-Z0-9_]+$"),
}


def _settings_table() -> Any:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_are_the_settings_declarations() -> None:
    settings_table = _settings_table()
    text = settings_table.README.read_text()

    assert text.count("<!-- settings:") == 2
    fresh = settings_table.render_readme(text, settings_table.tables())
    assert fresh == text, "README is stale: run python scripts/settings_table.py"
    assert settings_table.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("process", "declared", "config"),
    [("generator", GENERATOR_SETTINGS, GeneratorConfig), ("monitor", MONITOR_SETTINGS, MonitorConfig)],
)
def test_every_variable_follows_the_scheme_and_names_a_real_field(process: str, declared, config) -> None:
    names = {f.name for f in fields(config)}
    for setting in declared:
        assert setting.field in names, setting
        for variable in setting.env:
            assert SCHEME[process].match(variable), f"{variable} breaks the {process}'s naming scheme"
        assert not (setting.secret and setting.flag), f"{setting.field}: a secret must not be a flag (ps shows flags)"
    assert len({s.field for s in declared}) == len(declared)


@pytest.mark.parametrize(
    ("parse", "old", "new", "field", "value"),
    [
        (GeneratorConfig.from_sources, "MONITOR_URL", "GENERATOR_MONITOR_URL", "monitor_url", "http://m:7861"),
        (GeneratorConfig.from_sources, "ADMIN_TOKEN", "I2V_ADMIN_TOKEN", "admin_token", "t0k"),
        (MonitorConfig.from_sources, "GENERATOR_URL", "MONITOR_GENERATOR_URL", "generator_url", "http://g:7860"),
        (
            MonitorConfig.from_sources,
            "ALERTMANAGER_URLS",
            "MONITOR_ALERTMANAGER_URLS",
            "alertmanager_urls",
            ("http://a:9093",),
        ),
        (MonitorConfig.from_sources, "INFLUX_URL", "MONITOR_STORE", "store_url", "influxdb://influx:8086/i2v"),
    ],
)
def test_an_old_name_is_still_read_with_a_warning_and_the_new_one_wins(
    parse,
    old: str,
    new: str,
    field: str,
    value: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = ",".join(value) if isinstance(value, tuple) else value
    if field == "store_url":
        raw = "http://influx:8086/i2v"  # InfluxDB's own URL form, as INFLUX_URL took it

    with caplog.at_level(logging.WARNING, logger="common.settings"):
        old_only = parse([], {old: raw})
    both = parse([], {old: "http://ignored:1", new: raw})

    assert getattr(old_only, field) == value
    assert getattr(both, field) == value
    (warning,) = [r for r in caplog.records if old in r.getMessage()]
    assert new in warning.getMessage()


def test_an_empty_alert_state_setting_keeps_no_state() -> None:
    config = MonitorConfig.from_sources([], {"MONITOR_ALERT_STATE": ""})

    assert config.alert_state_path is None
