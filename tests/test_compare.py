"""`lossplug compare`: several configs over several seeds, end to end; and its table against a hand computation."""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path

import pytest

from lossplug.compare import Run, compare, plan, summarize

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # the runs are processes of their own: they import the tests' modules from the repository
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_two_configs_two_seeds_one_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    status = compare(["ce", "focal", "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "out"), *quick])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    out = tmp_path / "out"
    with open(out / "comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["config"] for row in rows] == ["ce", "focal"]
    assert [row["seeds"] for row in rows] == ["2", "2"]
    for row in rows:
        for name in ("accuracy", "macro-F1", "few-shot recall", "ECE"):
            assert 0.0 <= float(row[f"{name} mean"]) <= 1.0
            assert float(row[f"{name} std"]) >= 0.0
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| config | seeds | accuracy | macro-F1 | many-shot recall")
    assert table[2].startswith("| ce | 2 | ")
    assert " ± " in table[2]
    assert (out / "recall_by_frequency.png").stat().st_size > 10_000
    for label in ("ce", "focal"):
        for seed in (0, 1):
            assert (out / "runs" / label / f"seed_{seed}" / "test_metrics.json").exists()
            assert (out / "runs" / label / f"seed_{seed}.log").exists()
    printed = " ".join(captured.out.split())
    assert "Test metrics, mean ± std over seeds" in printed
    assert "focal seed 1: done" in " ".join(captured.err.split())


def test_your_model_and_data(tmp_path: Path) -> None:
    status = compare(
        [
            "poly",
            "--seeds", "1",
            "--out", str(tmp_path / "out"),
            "--model", "tests.user_project.ZooNet",
            "--data", "tests.user_project.ZooData",
            "--trainer.max_epochs=1",
        ]
    )  # fmt: skip
    assert status == 0
    with open(tmp_path / "out" / "comparison.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert row["config"] == "poly"
    assert not math.isnan(float(row["few-shot recall mean"]))  # ZooData's counts give every group classes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ce", "focl"], "--config 'focl' is neither a file nor a shipped config (did you mean `focal`?)"),
        (["ce", "--seeds", "0"], "Expected argument `--seeds` to be an integer >= 1, but got 0."),
        (["ce", "--model.loss.gama=1"], "unknown option `gama`"),
        (["ce", "--trainer.max_epochs", "1", "focal"], "Expected the configs before the --key=value overrides, but got 'focal'"),
    ],
    ids=["unknown-config", "no-seeds", "bad-override", "config-after-overrides"],
)
def test_mistakes_stop_before_any_run(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare([*args, "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert not (tmp_path / "out" / "runs").exists()


def test_plan_names_each_run_and_its_folder(tmp_path: Path) -> None:
    runs, overrides, jobs, out = plan(["ce", "ce", "--seeds", "2", "--out", str(tmp_path), "--trainer.max_epochs=3"])
    assert [(run.label, run.seed) for run in runs] == [("ce", 0), ("ce", 1), ("ce_2", 0), ("ce_2", 1)]
    assert runs[3].folder == tmp_path / "runs" / "ce_2" / "seed_1"
    assert overrides == ["--trainer.max_epochs=3"]
    assert (jobs, out) == (1, tmp_path)


def test_the_table_is_the_mean_and_standard_deviation_over_seeds() -> None:
    accuracies = [0.9, 0.8, 0.7]
    runs = [Run("ce", "ce.yaml", seed, Path(f"runs/ce/seed_{seed}"), {"test/acc": value}) for seed, value in enumerate(accuracies)]
    runs.append(Run("ce", "ce.yaml", 3, Path("runs/ce/seed_3"), error="exit 1"))
    (row,) = summarize(runs)
    assert row["seeds"] == 3  # the failed run is left out
    assert row["accuracy mean"] == pytest.approx(0.8)
    assert row["accuracy std"] == pytest.approx(statistics.stdev(accuracies)) == pytest.approx(0.1)
    assert math.isnan(row["ECE mean"])
