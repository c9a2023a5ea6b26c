"""`python -m monitor report`: it names the store it read, takes --data-dir, refuses a store that does not exist,
and reads times as users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.__main__ import main as monitor_main
from monitor.analysis.job_summary import JobSummarizer
from monitor.storage import open_store
from monitor.web import params

from .test_reports import scenario

NOW_NS = 1_800_000_000 * 10**9


def make_store(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{data_dir}/monitor.db"
    store = open_store(url)
    JobSummarizer(store.write, store).listen(scenario())
    store.close()
    return url


def test_the_report_names_the_store_it_read_from_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(tmp_path / "data")
    out = tmp_path / "jobs.csv"
    argv = ["report", "jobs", "--data-dir", str(tmp_path / "data"), "--since", "2024-05-01", "--until", "2024-05-02"]
    assert monitor_main([*argv, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"4 jobs row(s) from sqlite:///{tmp_path}/data/monitor.db to {out}" in err


@pytest.mark.parametrize("flag", ["--store", "--data-dir"])
def test_a_store_that_does_not_exist_is_refused_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    missing = tmp_path / "typo"
    value = f"sqlite:///{missing}/monitor.db" if flag == "--store" else str(missing)
    assert monitor_main(["report", "jobs", flag, value]) == 2
    assert f"no store at {missing}/monitor.db" in capsys.readouterr().err
    assert not missing.exists()


def test_until_alone_means_everything_up_to_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "data")
    assert monitor_main(["report", "jobs", "--data-dir", str(tmp_path / "data"), "--until", "2024-05-02"]) == 0
    assert "4 jobs row(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected_s"),
    [
        ("2024-05-01", 1_714_521_600),
        ("2024-05-01T10:00:00Z", 1_714_557_600),
        ("2024-05-01t10:00:00z", 1_714_557_600),
        ("2024-05-01T12:00:00+02:00", 1_714_557_600),
        ("1714557600", 1_714_557_600),
        ("1714557600.25", 1_714_557_600.25),
        ("24h", 1_800_000_000 - 86_400),
        ("now", 1_800_000_000),
    ],
)
def test_times_are_read_as_users_write_them(text: str, expected_s: float) -> None:
    assert params.time_ns(text, "24h", NOW_NS, "since") == round(expected_s * 10**6) * 1000


@pytest.mark.parametrize("text", ["yesterday", "12", "2024-13-01", "2024-05-01T10:00:00"])
def test_an_unreadable_time_says_every_form_it_takes(text: str) -> None:
    with pytest.raises(params.BadRequest, match="a date \\(2024-05-01, midnight UTC\\) or epoch seconds"):
        params.time_ns(text, "24h", NOW_NS, "since")
