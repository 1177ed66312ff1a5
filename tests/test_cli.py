"""The command line as a user runs it: run a small study, list studies, write the report."""

from __future__ import annotations

import base64
import gzip
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from tests import db
from tests.studies import tiny_study


def _write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.usefixtures("ray_session")
def test_run_studies_report(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    study_file = _write(
        tmp_path / "study.yaml", tiny_study("written-name", "sqlite:///ignored.db", tmp_path)
    )

    assert main(["run", str(study_file), "--storage", storage, "--study-name", study_name]) == 0
    out = capsys.readouterr().out
    assert f"study {study_name!r}" in out
    assert "complete" in out and "pruned" in out and "eta" in out  # the progress line
    assert "best val_acc = " in out and "report:" in out

    assert main(["studies", "--storage", storage]) == 0
    listing = capsys.readouterr().out
    assert study_name in listing and "COMPLETE" in listing
    row = next(line for line in listing.splitlines() if line.startswith(study_name))
    study = db.load(storage, study_name)
    assert row.split()[2] == str(len(study.trials)) == "4"

    report = tmp_path / "out" / "report.html"
    assert main(["report", "--study", study_name, "--storage", storage, "-o", str(report)]) == 0
    text = report.read_text()
    # plotly.js is embedded once, gzip-compressed, and nowhere else.
    packed = re.findall(r'<script id="plotly-js-gzip"[^>]*>([^<]*)</script>', text)
    assert len(packed) == 1 and "plotly.js v" not in text
    assert b"plotly.js v" in gzip.decompress(base64.b64decode(packed[0]))[:500]
    for title in (
        "Optimization history",
        "Parameter importance (ped-anova)",  # the heading of a computed importance panel
        "Parallel coordinates",
        "Learning curves",
        "Best trials",
    ):
        assert title in text
    assert "Not computable" not in text  # the heading an importance failure gets
    assert "the first rung: all 4 finished trials" in text
    best = study.best_trial
    assert f"<td>{best.number}</td><td>{best.value:.4f}</td>" in text

    # fANOVA is the alternative evaluator.
    assert (
        main(
            [
                "report",
                "--study",
                study_name,
                "--storage",
                storage,
                "-o",
                str(report),
                "--importance",
                "fanova",
            ]
        )
        == 0
    )
    assert "Importance (fanova)" in report.read_text()


def test_user_errors_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "studies.db"
    storage = f"sqlite:///{db}"
    bad = tiny_study("bad", storage, tmp_path)
    bad["space"]["lr"]["low"] = -1.0
    assert main(["run", str(_write(tmp_path / "bad.yaml", bad))]) == 2
    assert "space.lr.low" in capsys.readouterr().err
    assert not db.exists()

    missing_data = tiny_study("cifar", storage, tmp_path)
    missing_data["dataset"] = {
        "name": "cifar10",
        "data_dir": str(tmp_path / "nodata"),
        "download": False,
    }
    assert main(["run", str(_write(tmp_path / "cifar.yaml", missing_data))]) == 2
    assert "nodata" in capsys.readouterr().err
    assert not db.exists()

    assert main(["studies", "--storage", storage]) == 2
    assert "no study database" in capsys.readouterr().err
    assert not db.exists()

    assert (
        main(
            [
                "run",
                str(
                    _write(
                        tmp_path / "pg.yaml",
                        tiny_study("pg", "postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path),
                    )
                ),
            ]
        )
        == 2
    )
    assert "cannot open storage" in capsys.readouterr().err


def test_report_to_an_unwritable_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="present", storage=storage)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "report.html"  # a folder that is a file
    assert main(["report", "--study", "present", "--storage", storage, "-o", str(target)]) == 2
    assert f"cannot write the report to {target}" in capsys.readouterr().err


def test_report_of_unknown_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="present", storage=storage)
    assert main(["report", "--study", "absent", "--storage", storage, "-o", "x.html"]) == 2
    err = capsys.readouterr().err
    assert "no study named 'absent'" in err and "present" in err


def test_python_dash_m_is_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "search", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ("run", "studies", "report"):
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "search", "run", "does-not-exist.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no study file at does-not-exist.yaml" in result.stderr


def test_states_are_counted_in_the_listing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value in (0.5, 0.9):
        study.add_trial(optuna.trial.create_trial(value=value))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    assert main(["studies", "--storage", storage]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:7] == ["s", "maximize", "3", "2", "0", "1", "0"]
    assert row[7] == "0.9000"
