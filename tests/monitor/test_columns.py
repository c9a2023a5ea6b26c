"""The column dictionary covers every report's header, is served over HTTP, and docs/reports.md holds it."""

from __future__ import annotations

import re
from pathlib import Path

from monitor.analysis import columns
from monitor.analysis.aggregate import GROUP_KEYS, VALUE_COLUMNS
from monitor.analysis.reports import GPU_COLUMNS, HOST_COLUMNS, JOB_COLUMNS

DOC = Path(__file__).resolve().parents[2] / "docs" / "reports.md"


def test_every_column_of_every_report_is_described_in_header_order() -> None:
    described = {report: [c.name for c in cols] for report, cols in columns.dictionary().items()}
    assert described == {
        "jobs.csv": list(JOB_COLUMNS),
        "gpu.csv": list(GPU_COLUMNS),
        "hosts.csv": list(HOST_COLUMNS),
        "aggregate.csv": [*GROUP_KEYS, *VALUE_COLUMNS],
    }
    for cols in columns.dictionary().values():
        assert all(c.unit and c.meaning for c in cols)


def test_docs_hold_the_dictionary_as_the_code_has_it() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- columns: [^>]*-->\n(.*)<!-- /columns -->", text, flags=re.S)
    assert match is not None, "docs/reports.md lost its columns markers"
    assert match.group(1) == columns.markdown(), "regenerate: python -m monitor report columns"


def test_the_dictionary_is_served_with_the_reports(tmp_path: Path) -> None:
    from dataclasses import replace

    from monitor.compose import create_app
    from monitor.config import MonitorConfig
    from monitor.web.context import get_context

    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/m.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config)
    try:
        body = app.test_client().get("/monitor/api/reports/columns").get_json()
    finally:
        get_context(app).close()
    assert [c["name"] for c in body["jobs.csv"]] == list(JOB_COLUMNS)
    assert body["jobs.csv"][0] == {
        "name": "job_id",
        "unit": "text",
        "meaning": "the generator's job id",
        "blank_when": "",
    }
