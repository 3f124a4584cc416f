"""Resuming: the CSVs go on without duplicate or missing rows, from any checkpoint, in the run's own files only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from callback_helpers import (
    TABLE_LOGITS,
    TABLE_TARGET,
    DigitsMLP,
    ResumableLoader,
    StopAfterCheckpoint,
    TableData,
    TableModel,
    digits_loader,
    make_trainer,
    read_csv,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import CrossEntropyLoss, FocalLoss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1], [-1.0, 3.0, 0.0], [1.0, 2.0, 3.0]])
TARGET = torch.tensor([0, 1, 1, 2])
FILES = ("per_class_loss.csv", "hardness_histogram.csv")


def _callbacks(diagnostics: Path | None = None) -> list[Any]:
    return [
        PerClassLossMonitor(verbose=False),
        HardnessHistogram(dirpath=None if diagnostics is None else str(diagnostics), verbose=False, plot=False),
    ]


def _keys(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((row["epoch"], row["stage"]) for row in rows))


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_from_a_checkpoint_continues_both_csvs(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    monitor, histogram = _callbacks(tmp_path / "diagnostics")
    first = make_trainer(
        tmp_path,
        [monitor, histogram, ModelCheckpoint(dirpath=checkpoints, filename="{epoch}", save_top_k=-1)],
        max_epochs=2,
        enable_checkpointing=True,
    )
    first.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2))
    first_rows = read_csv(monitor.csv_path)
    assert _keys(first_rows) == [("0", "train"), ("0", "validate"), ("1", "train"), ("1", "validate")]

    # from the end of epoch 0: epoch 1 runs again (its rows are replaced, not repeated), then epoch 2
    monitor, histogram = _callbacks(tmp_path / "diagnostics")
    second = make_trainer(
        tmp_path,
        [monitor, histogram, ModelCheckpoint(dirpath=tmp_path / "checkpoints-resumed")],
        max_epochs=3,
        enable_checkpointing=True,
    )
    second.fit(
        TableModel(CrossEntropyLoss(), LOGITS),
        datamodule=TableData(TARGET, batch_size=2),
        ckpt_path=checkpoints / "epoch=0.ckpt",
    )
    assert second.log_dir != first.log_dir  # a new logger version: the monitor's rows are copied into it
    expected = [(str(epoch), stage) for epoch in range(3) for stage in ("train", "validate")]
    rows = read_csv(monitor.csv_path)
    assert _keys(rows) == expected
    assert rows[:12] == first_rows  # nothing is learned, so epoch 1 is the same again
    assert read_csv(first.log_dir + "/per_class_loss.csv") == first_rows  # the first run's file is untouched
    histogram_rows = read_csv(histogram.csv_path)
    assert _keys(histogram_rows) == expected  # the same file: cut back after epoch 0, then continued
    assert len(histogram_rows) == 6 * 11
    assert sorted(histogram.history[("train", "all")]) == [0, 1, 2]  # the PNG shows the restored epochs too


def _table_run(
    root: Path, checkpoint: ModelCheckpoint | None, stop: bool, ckpt_path: str | None = None, **kwargs: Any
) -> list[Any]:
    """Three epochs of TableModel (train and validate), logging into ``root``/lightning_logs/version_0."""
    callbacks = [*([StopAfterCheckpoint()] if stop else []), *_callbacks(), *([checkpoint] if checkpoint else [])]
    trainer = make_trainer(
        root, callbacks, max_epochs=3, logger=CSVLogger(root, version=0), enable_checkpointing=checkpoint is not None,
        num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip
    loader = ResumableLoader(TableData(TABLE_TARGET, batch_size=2).train_dataloader())
    val = TableData(TABLE_TARGET, batch_size=3).val_dataloader()
    model = TableModel(FocalLoss(gamma=2.0), TABLE_LOGITS)
    if stop:
        with pytest.raises(RuntimeError, match="stopped after checkpoint"):
            trainer.fit(model, train_dataloaders=loader, val_dataloaders=val)
    else:
        trainer.fit(model, train_dataloaders=loader, val_dataloaders=val, ckpt_path=ckpt_path)
    return callbacks


@pytest.mark.parametrize(
    ("checkpoint", "options"),
    [
        # ModelCheckpoint saves at the end of the validation, before the training epoch ends
        ({"save_on_train_epoch_end": False}, {}),
        # ... in the middle of the training epoch, with a validation finished in it
        ({}, {"val_check_interval": 0.5}),
        # every few steps, mid-epoch (the loader is resumable, so the epoch goes on where it stopped)
        ({"every_n_train_steps": 3, "save_top_k": -1}, {}),
    ],
    ids=["validation-end", "mid-epoch-validation", "every-n-steps"],
)
def test_a_run_stopped_after_a_checkpoint_and_resumed_writes_what_an_uninterrupted_run_writes(
    tmp_path: Path, checkpoint: dict[str, Any], options: dict[str, Any]
) -> None:
    _table_run(tmp_path / "whole", None, stop=False, **options)
    directory = tmp_path / "resumed" / "checkpoints"
    _table_run(tmp_path / "resumed", ModelCheckpoint(dirpath=directory, **checkpoint), stop=True, **options)
    (saved,) = os.listdir(directory)
    # the same log directory: the resumed run cuts its files back to the checkpoint and goes on
    _table_run(tmp_path / "resumed", None, stop=False, ckpt_path=str(directory / saved), **options)
    for name in FILES:
        whole = read_csv(tmp_path / "whole" / "lightning_logs" / "version_0" / name)
        resumed = read_csv(tmp_path / "resumed" / "lightning_logs" / "version_0" / name)
        assert resumed == whole, name


def test_a_learning_model_resumed_mid_epoch_writes_what_an_uninterrupted_run_writes(tmp_path: Path) -> None:
    def run(root: Path, callbacks: list[Any], ckpt_path: str | None = None) -> None:
        L.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=2, logger=CSVLogger(root, version=0),
                               enable_checkpointing=True, num_sanity_val_steps=0)  # fmt: skip
        loader, val = ResumableLoader(digits_loader(256, shuffle=False)), digits_loader(512, shuffle=False)
        trainer.fit(DigitsMLP(FocalLoss(gamma=2.0)), train_dataloaders=loader, val_dataloaders=val, ckpt_path=ckpt_path)

    run(tmp_path / "whole", _callbacks())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=4)
    with pytest.raises(RuntimeError, match="stopped after checkpoint"):
        run(tmp_path / "resumed", [StopAfterCheckpoint(), *_callbacks(), checkpoint])
    run(tmp_path / "resumed", _callbacks(), ckpt_path=str(tmp_path / "checkpoints" / os.listdir(tmp_path / "checkpoints")[0]))
    for name in FILES:
        whole = read_csv(tmp_path / "whole" / "lightning_logs" / "version_0" / name)
        resumed = read_csv(tmp_path / "resumed" / "lightning_logs" / "version_0" / name)
        assert [(row["epoch"], row["stage"], row["count"]) for row in resumed] == [
            (row["epoch"], row["stage"], row["count"]) for row in whole
        ]
        for got, expected in zip(resumed, whole, strict=True):
            for column in ("loss_sum", "loss_mean", "share", "loss_share"):
                if column in expected:
                    assert float(got[column]) == pytest.approx(float(expected[column]), rel=1e-5, nan_ok=True)


def _fit_to_epoch_1(root: Path) -> tuple[PerClassLossMonitor, Path]:
    monitor = PerClassLossMonitor(verbose=False, stages=["train"])
    checkpoints = root / "checkpoints"
    trainer = make_trainer(
        root, [monitor, ModelCheckpoint(dirpath=checkpoints, filename="{epoch}", save_top_k=-1)],
        max_epochs=2, enable_checkpointing=True, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2))
    return monitor, checkpoints / "epoch=0.ckpt"


def _resume(root: Path, ckpt_path: Path) -> PerClassLossMonitor:
    monitor = PerClassLossMonitor(verbose=False, stages=["train"])
    trainer = make_trainer(root, [monitor], max_epochs=2, limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2), ckpt_path=ckpt_path)
    return monitor


def test_the_checkpoint_records_the_absolute_path_and_a_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monitor, checkpoint = _fit_to_epoch_1(Path("relative"))  # a relative root directory
    state = next(value for key, value in torch.load(checkpoint, weights_only=False)["callbacks"].items() if "PerClass" in key)
    csv = state["csv"]
    assert csv["path"] == str(tmp_path / "relative" / "lightning_logs" / "version_0" / "per_class_loss.csv")
    assert csv["written"] == [[0, "train"]]
    epoch_0 = Path(csv["path"]).read_bytes()[: csv["size"]]
    assert epoch_0.decode().splitlines()[-1].startswith("0,train,total,2,")
    import hashlib

    assert csv["sha256"] == hashlib.sha256(epoch_0).hexdigest()
    assert monitor.csv_path == csv["path"]


def test_a_resume_from_another_working_directory_reads_its_own_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # two runs with the same relative layout in two working directories
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        _fit_to_epoch_1(Path("run"))
    relative = Path("run/lightning_logs/version_0/per_class_loss.csv")
    expected = read_csv(relative)[:3]  # epoch 0 of run two
    monkeypatch.chdir(tmp_path / "one")
    relative.write_text("epoch,stage\n")  # run one's file, at the path run two's checkpoint names relatively
    checkpoint = tmp_path / "two" / "run" / "checkpoints" / "epoch=0.ckpt"
    monitor = _resume(Path("run"), checkpoint)
    rows = read_csv(monitor.csv_path)
    assert monitor.csv_path == str(tmp_path / "one" / "run" / "lightning_logs" / "version_1" / "per_class_loss.csv")
    assert rows[:3] == expected  # run two's own rows, copied
    assert _keys(rows) == [("0", "train"), ("1", "train")]
    # run two's file changed since its checkpoint: not read, and the new file starts afresh
    (tmp_path / "two" / relative).write_text("epoch,stage\n")
    with pytest.warns(UserWarning, match=r"holds other rows than the checkpoint recorded.*epochs \[0\] are missing"):
        monitor = _resume(Path("run"), checkpoint)
    assert _keys(read_csv(monitor.csv_path)) == [("1", "train")]


def test_a_csv_that_is_gone_is_started_afresh_with_a_warning(tmp_path: Path) -> None:
    monitor, checkpoint = _fit_to_epoch_1(tmp_path)
    assert monitor.csv_path is not None
    os.remove(monitor.csv_path)
    with pytest.warns(UserWarning, match=r"is gone or holds other rows.*epochs \[0\] are missing"):
        resumed = _resume(tmp_path, checkpoint)
    assert _keys(read_csv(resumed.csv_path)) == [("1", "train")]


def test_state_dict_round_trip() -> None:
    monitor = PerClassLossMonitor(stages=["train"])
    assert monitor.state_key == "PerClassLossMonitor{'stages': ['train'], 'dirpath': None}"
    assert monitor.state_key != HardnessHistogram(stages=["train"]).state_key
    assert monitor.state_dict() == {"csv": None, "finished": [], "partial": {}}


def test_a_callback_used_again_starts_a_new_csv(tmp_path: Path) -> None:
    histogram = HardnessHistogram(stages=["train"], plot=False, verbose=False)
    for run, epochs in (("first", 2), ("second", 1)):
        trainer = make_trainer(tmp_path / run, [histogram], max_epochs=epochs, limit_val_batches=0)
        trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2))
    assert histogram.csv_path == str(tmp_path / "second" / "lightning_logs" / "version_0" / "hardness_histogram.csv")
    assert _keys(read_csv(histogram.csv_path)) == [("0", "train")]
    assert sorted(histogram.history[("train", "all")]) == [0]
