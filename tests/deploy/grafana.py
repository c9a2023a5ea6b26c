"""Helpers for the Grafana tests: where the dashboards are, their queries, and Grafana's variable substitution."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.compose import ROOT

GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def dashboard_queries(kind: str) -> list[tuple[str, str]]:
    """Return (id, query) for every InfluxQL query (`influxdb`) or PromQL expression (`prometheus`)."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        sources: list[tuple[str, dict[str, Any]]] = []
        for panel in dashboard["panels"]:
            sources += [(f"{panel['title']} {t['refId']}", t) for t in panel.get("targets", [])]
        sources += [(f"variable {v['name']}", v) for v in dashboard["templating"]["list"]]
        sources += [(f"annotation {a['name']}", a) for a in dashboard["annotations"]["list"]]
        for name, source in sources:
            if source["datasource"]["type"] != kind:
                continue
            query = source.get("query") if kind == "influxdb" else source.get("expr")
            assert query, f"{path.name}: {name} has no query"
            found.append((f"{path.stem}: {name}", query))
    return found


def concrete(query: str, host: str = "host-a|host-b", gpu: str = "0|1") -> str:
    """Substitute Grafana's variables as it does: the time range, the interval, multi-value regexes."""
    return (
        query.replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "30s")
        .replace("$host", f"({host})")
        .replace("$gpu", f"({gpu})")
    )
