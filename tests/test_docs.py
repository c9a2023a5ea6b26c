"""The repository's own documents: every alert has a runbook section, and nothing cites a file outside the repo."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def anchors(markdown: str) -> set[str]:
    """Return the anchors GitHub-style renderers give the headings of `markdown`."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")
        out.add(slug)
    return out


def runbook_urls() -> list[tuple[str, str]]:
    """Return (alert, runbook_url) for every rule of both rule files."""
    urls = [
        (r["alert"], r["annotations"].get("runbook_url", "(none)"))
        for r in yaml.safe_load((ROOT / "alerts/rules.yml").read_text())["rules"]
    ]
    prometheus = yaml.safe_load((ROOT / "alerts/prometheus/rules.yml").read_text())
    for group in prometheus["groups"]:
        urls += [(r["alert"], r["annotations"].get("runbook_url", "(none)")) for r in group["rules"] if "alert" in r]
    return urls


@pytest.mark.parametrize(("alert", "url"), runbook_urls())
def test_every_runbook_url_points_to_a_section_of_the_runbooks(alert: str, url: str) -> None:
    path, _, anchor = url.partition("#")
    assert path == "docs/runbooks.md", f"{alert}: {url}"
    assert anchor in anchors(RUNBOOKS.read_text()), f"{alert}: docs/runbooks.md has no section #{anchor}"


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    citing = [
        name
        for name in files
        if (ROOT / name).is_file()
        and name != "tests/test_docs.py"
        and re.search(r"\b(ARCHITECTURE|STYLE)\.md\b", (ROOT / name).read_text(errors="ignore"))
    ]
    assert citing == []
