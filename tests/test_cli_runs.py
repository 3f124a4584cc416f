"""The `lossplug` command as separate processes: kill and resume, two runs at once, DDP, another loss's checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
QUIET = ["--trainer.enable_progress_bar=false"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lossplug", *args]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    return environment


def _run(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        _command(*args), cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _assert_same_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    assert [list(row.values())[:4] for row in got] == [list(row.values())[:4] for row in expected]
    for row, reference in zip(got, expected, strict=True):
        for key, value in reference.items():
            if value == row[key]:
                continue
            assert float(row[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-9, nan_ok=True), (key, row, reference)


def test_a_run_killed_mid_epoch_and_resumed_gives_the_rows_of_one_never_interrupted(tmp_path: Path) -> None:
    slow = "--trainer.callbacks+=tests.user_project.SlowSteps"
    args = ["fit", "--trainer.max_epochs=4", *QUIET, slow]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    _run(whole, *args)

    process = subprocess.Popen(
        _command(*args), cwd=killed, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = killed / "lightning_logs" / "version_0"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        rows = _rows(run / "per_class_loss.csv") if (run / "per_class_loss.csv").exists() else []
        if (run / "checkpoints" / "last.ckpt").exists() and any(row["epoch"] == "1" for row in rows):
            time.sleep(0.15)  # into epoch 2: a few of its batches, no checkpoint of it yet
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not any(row["epoch"] == "3" for row in _rows(run / "per_class_loss.csv")), "killed after its last epoch"

    checkpoint = run / "checkpoints" / "last.ckpt"
    saved_in = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert saved_in < 3
    resumed = _run(killed, *args, "--ckpt_path", "last")
    assert (
        f"Resuming lightning_logs/version_0 from lightning_logs/version_0/checkpoints/last.ckpt (saved in epoch {saved_in})"
        in " ".join(resumed.stderr.split())
    ), resumed.stderr
    assert (run / "metrics.before_resume.csv").exists()
    assert sorted(path.name for path in (killed / "lightning_logs").iterdir()) == ["version_0"]
    for name in ("per_class_loss.csv", "hardness_histogram.csv"):
        _assert_same_rows(
            _rows(killed / "lightning_logs" / "version_0" / name), _rows(whole / "lightning_logs" / "version_0" / name)
        )


def test_testing_the_last_checkpoint_is_one_new_run_folder(tmp_path: Path) -> None:
    _run(tmp_path, "fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", *QUIET)
    tested = _run(tmp_path, "test", "--ckpt_path", "last", *QUIET)
    assert "Using lightning_logs/version_0/checkpoints/last.ckpt (saved in epoch 0)." in " ".join(tested.stderr.split())
    assert sorted(path.name for path in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert (tmp_path / "lightning_logs" / "version_1" / "metrics.csv").exists()
    assert not (tmp_path / "lightning_logs" / "version_0" / "metrics.before_resume.csv").exists()


def test_ckpt_path_last_without_a_run_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        _command("fit", "--ckpt_path", "last", *QUIET), cwd=tmp_path, env=_environment(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "--ckpt_path last: no run with a last.ckpt under" in result.stderr
    assert not (tmp_path / "lightning_logs").exists() or not list((tmp_path / "lightning_logs").iterdir())


def test_two_runs_started_together_get_their_own_folders(tmp_path: Path) -> None:
    args = _command("fit", "--trainer.max_epochs=2", "--trainer.limit_test_batches=1", *QUIET)
    processes = [
        subprocess.Popen(args, cwd=tmp_path, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    runs = sorted(path.name for path in (tmp_path / "lightning_logs").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        rows = _rows(tmp_path / "lightning_logs" / run / "per_class_loss.csv")
        keys = [(row["epoch"], row["stage"], row["term"], row["class"]) for row in rows]
        assert len(keys) == len(set(keys)) == 2 * 2 * 10  # epochs, stages, classes: nothing twice
        assert b"\0" not in (tmp_path / "lightning_logs" / run / "metrics.csv").read_bytes()


def test_ddp_with_two_processes_exits_zero_with_one_test_summary(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        "fit",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        *QUIET,
        timeout=400,
    )
    assert result.stdout.count("Test split") == 1
    assert sorted(path.name for path in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]


def test_testing_another_loss_s_checkpoint_says_which_loss_it_uses(tmp_path: Path) -> None:
    _run(tmp_path, "fit", "--config", "arcface", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", *QUIET)
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    result = _run(tmp_path, "test", "--config", "ce", "--ckpt_path", str(checkpoint), *QUIET)
    assert "Using the checkpoint's loss ArcFaceLoss (last.ckpt); the configured CrossEntropyLoss is not used." in (
        " ".join(result.stderr.split())
    )
