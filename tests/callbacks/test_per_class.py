"""PerClassLossMonitor in small real trainings, checked against the per-sample losses computed by hand."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from callback_helpers import (
    TABLE_EMBEDDINGS,
    TABLE_LOGITS,
    TABLE_MULTI_LABEL_TARGET,
    TABLE_TARGET,
    PlainModel,
    TableData,
    TableModel,
    make_trainer,
    read_csv,
    rows_of,
)
from torch import nn

from lossplug.callbacks import PerClassLossMonitor
from lossplug.losses import BinaryCrossEntropyLoss, CenterLoss, CrossEntropyLoss, FocalLoss, WeightedSum

LOGITS = TABLE_LOGITS
TARGET = TABLE_TARGET
NAMES = ["cat", "dog", "eel"]


def _expected(loss: nn.Module) -> tuple[list[int], list[float]]:
    per_sample = loss.evaluate(LOGITS, TARGET).per_sample.tolist()
    counts, sums = [0, 0, 0], [0.0, 0.0, 0.0]
    for value, target in zip(per_sample, TARGET.tolist(), strict=True):
        if target >= 0:
            counts[target] += 1
            sums[target] += value
    return counts, sums


def test_csv_matches_a_hand_computation(tmp_path: Path) -> None:
    loss = FocalLoss(gamma=2.0)
    monitor = PerClassLossMonitor(top_k=2)
    trainer = make_trainer(tmp_path, [monitor], limit_train_batches=2)
    trainer.fit(TableModel(loss, LOGITS), datamodule=TableData(TARGET, batch_size=4, class_names=NAMES))

    assert monitor.csv_path == os.path.join(trainer.log_dir, "per_class_loss.csv")
    rows = read_csv(monitor.csv_path)
    assert list(rows[0]) == ["epoch", "stage", "term", "class", "count", "loss_sum", "loss_mean", "share"]
    # the sanity check's batches are not counted: one row set per epoch and stage
    assert [(row["epoch"], row["stage"]) for row in rows[::3]] == [
        ("0", "train"),
        ("0", "validate"),
        ("1", "train"),
        ("1", "validate"),
    ]
    counts, sums = _expected(loss)
    for epoch in ("0", "1"):
        for stage in ("train", "validate"):
            got = rows_of(rows, epoch=epoch, stage=stage)
            assert [row["class"] for row in got] == NAMES
            assert [row["term"] for row in got] == ["total"] * 3
            assert [int(row["count"]) for row in got] == counts == [3, 2, 2]
            assert [float(row["loss_sum"]) for row in got] == pytest.approx(sums, rel=1e-12)
            assert [float(row["loss_mean"]) for row in got] == pytest.approx(
                [s / c for s, c in zip(sums, counts, strict=True)]
            )
            shares = [float(row["share"]) for row in got]
            assert shares == pytest.approx([s / sum(sums) for s in sums])
            assert math.fsum(shares) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("flush_values", [1, 5])
def test_outputs_added_at_once_or_mid_epoch_give_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_values: int
) -> None:
    """Steps are kept and added together at the epoch's end, or whenever FLUSH_VALUES values have gathered."""

    def rows(directory: Path) -> list[dict[str, str]]:
        monitor = PerClassLossMonitor(verbose=False, log_scalars=False)
        make_trainer(directory, [monitor], max_epochs=1).fit(
            TableModel(FocalLoss(gamma=2.0), LOGITS), datamodule=TableData(TARGET, batch_size=3)
        )
        return read_csv(monitor.csv_path)

    once = rows(tmp_path / "once")
    monkeypatch.setattr("lossplug.callbacks.base.FLUSH_VALUES", flush_values)
    assert rows(tmp_path / "flushed") == once
    counts, _ = _expected(FocalLoss(gamma=2.0))
    assert [int(row["count"]) for row in rows_of(once, stage="train")] == counts


def test_scalars_once_per_epoch_for_the_top_k_classes(tmp_path: Path) -> None:
    monitor = PerClassLossMonitor(top_k=2, stages=["train"], verbose=False)
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, class_names=NAMES))

    metrics = read_csv(Path(trainer.log_dir) / "metrics.csv")
    logged = [row for row in metrics if any(key.startswith("per_class/") and value for key, value in row.items())]
    assert len(logged) == 2  # one row per epoch, not per step
    names = {key for row in logged for key, value in row.items() if key.startswith("per_class/") and value}
    _, sums = _expected(CrossEntropyLoss(reduction="none"))
    top = sorted(range(3), key=lambda index: -sums[index])[:2]
    assert names == {f"per_class/train/{what}/{NAMES[index]}" for index in top for what in ("share", "loss_mean")}
    assert float(logged[0][f"per_class/train/share/{NAMES[top[0]]}"]) == pytest.approx(sums[top[0]] / sum(sums))


def test_console_table_shows_the_top_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = make_trainer(
        tmp_path, [PerClassLossMonitor(top_k=2, stages=["train"])], max_epochs=1, limit_val_batches=0
    )
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, class_names=NAMES))
    printed = capsys.readouterr().out
    assert "Per-class loss · train · epoch 0" in printed
    assert "top 2 of 3 classes" in printed
    assert sum(name in printed for name in NAMES) == 2


@pytest.mark.parametrize(("interval", "epochs"), [(0.0, [0, 1, 2]), (3600.0, [2])])
def test_tables_of_fast_epochs_are_thinned_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], interval: float, epochs: list[int]
) -> None:
    monitor = PerClassLossMonitor(stages=["train"], print_interval_s=interval, log_scalars=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET))
    printed = capsys.readouterr().out
    assert [epoch for epoch in range(3) if f"Per-class loss · train · epoch {epoch}" in printed] == epochs


def test_validate_and_test_runs(tmp_path: Path) -> None:
    monitor = PerClassLossMonitor(stages=["validate", "test"], verbose=False)
    trainer = make_trainer(tmp_path, [monitor])
    model, data = TableModel(CrossEntropyLoss(), LOGITS), TableData(TARGET, class_names=NAMES)
    trainer.validate(model, datamodule=data)
    trainer.test(model, datamodule=data)
    rows = read_csv(monitor.csv_path)
    assert [(row["epoch"], row["stage"]) for row in rows[::3]] == [("0", "validate"), ("0", "test")]
    assert rows[:3] == [{**row, "stage": "validate"} for row in rows[3:]]


def test_weighted_sum_terms_and_total(tmp_path: Path) -> None:
    loss = WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(3, 2)}, {"ce": 1.0, "center": 0.1})
    target = TARGET.clamp(min=0)
    monitor = PerClassLossMonitor(stages=["train"], verbose=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0)
    trainer.fit(TableModel(loss, LOGITS, TABLE_EMBEDDINGS), datamodule=TableData(target))

    rows = read_csv(monitor.csv_path)
    assert [row["term"] for row in rows] == ["total"] * 3 + ["ce"] * 3 + ["center"] * 3
    by_term = {term: [float(row["loss_sum"]) for row in rows_of(rows, term=term)] for term in ("total", "ce", "center")}
    assert [a + b for a, b in zip(by_term["ce"], by_term["center"], strict=True)] == pytest.approx(by_term["total"])
    for term in ("total", "ce", "center"):
        assert math.fsum(float(row["share"]) for row in rows_of(rows, term=term)) == pytest.approx(1.0)
    metrics = read_csv(Path(trainer.log_dir) / "metrics.csv")
    term_share = [
        float(row["per_class/train/term_share/center"])
        for row in metrics
        if row.get("per_class/train/term_share/center")
    ]
    assert term_share == pytest.approx([sum(by_term["center"]) / sum(by_term["total"])])


def test_multi_label_classes_are_the_target_columns(tmp_path: Path) -> None:
    target = TABLE_MULTI_LABEL_TARGET
    monitor = PerClassLossMonitor(stages=["train"], verbose=False)
    make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0).fit(
        TableModel(BinaryCrossEntropyLoss(), LOGITS), datamodule=TableData(target)
    )
    rows = read_csv(monitor.csv_path)
    per_sample = BinaryCrossEntropyLoss(reduction="none").evaluate(LOGITS, target).per_sample.double()
    assert [int(row["count"]) for row in rows] == [8, 8, 8]
    assert [float(row["loss_sum"]) for row in rows] == pytest.approx(per_sample.sum(dim=0).tolist(), rel=1e-12)


def test_a_hundred_thousand_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = 100_000
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, classes, generator=generator)
    target = torch.randint(0, classes, (16,), generator=generator)
    monitor = PerClassLossMonitor(top_k=5, stages=["train"])
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), logits), datamodule=TableData(target, batch_size=8))

    rows = read_csv(monitor.csv_path)
    assert len(rows) == classes  # every class, seen or not
    assert sum(int(row["count"]) for row in rows) == 16
    metrics = read_csv(Path(trainer.log_dir) / "metrics.csv")
    assert sum(key.startswith("per_class/") for key in metrics[0]) == 2 * 5
    assert "top 5 of 100000 classes" in capsys.readouterr().out


def test_validation_without_the_loss_warns_and_skips(tmp_path: Path) -> None:
    monitor = PerClassLossMonitor(verbose=False)
    model = TableModel(CrossEntropyLoss(), LOGITS, validation_loss=False)
    with pytest.warns(UserWarning, match=r"no loss statistics in 2 validate batches.*validation_step"):
        make_trainer(tmp_path, [monitor], max_epochs=1).fit(model, datamodule=TableData(TARGET))
    assert {row["stage"] for row in read_csv(monitor.csv_path)} == {"train"}


@pytest.mark.parametrize("entry_point", ["validate", "test"])
def test_an_evaluation_without_the_loss_names_its_batches(tmp_path: Path, entry_point: str) -> None:
    stage = "validate" if entry_point == "validate" else "test"
    model = TableModel(CrossEntropyLoss(), LOGITS, validation_loss=False)
    trainer = make_trainer(tmp_path, [PerClassLossMonitor(stages=[stage], verbose=False)])
    step = {"validate": "validation_step", "test": "test_step"}[stage]
    with pytest.raises(RuntimeError, match=rf"no loss statistics in 3 {stage} batches.*TableModel\.{step}"):
        getattr(trainer, entry_point)(model, dataloaders=TableData(TARGET, batch_size=3).val_dataloader())


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_a_model_without_the_mixin_is_refused(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [PerClassLossMonitor()], max_epochs=1)
    with pytest.raises(TypeError, match=r"PlainModel does not use LossMixin.*class PlainModel\(LossMixin"):
        trainer.fit(PlainModel(), datamodule=TableData(TARGET.clamp(min=0)))


def test_predict_and_unobserved_stages_need_no_mixin(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [PerClassLossMonitor(stages=["train"])], max_epochs=1)
    trainer.test(PlainModel(), dataloaders=TableData(TARGET.clamp(min=0)).test_dataloader())


def test_a_loss_called_past_compute_loss_gives_no_statistics(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [PerClassLossMonitor()], max_epochs=1, limit_val_batches=0)
    advice = r"self\.compute_loss\(output, target\)` in `TableModel\.training_step`"
    with pytest.raises(RuntimeError, match=rf"in 2 train batches.*{advice}"):
        trainer.fit(TableModel(CrossEntropyLoss(), LOGITS, through_mixin=False), datamodule=TableData(TARGET))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, ValueError, "`top_k` to be an integer >= 1, but got 0"),
        ({"top_k": 2.5}, ValueError, "`top_k` to be an integer >= 1, but got 2.5"),
        (
            {"stages": ["training"]},
            ValueError,
            r"`stages` to be one of \['train', 'validate', 'test'\], but got 'training'",
        ),
        ({"stages": "train"}, ValueError, "`stages` to be a non-empty list"),
        ({"stages": []}, ValueError, "`stages` to be a non-empty list"),
        ({"class_names": "abc"}, TypeError, "`class_names` to be a list of names or None, but got str"),
        ({"dirpath": 3}, TypeError, "`dirpath` to be a path or None, but got int"),
        ({"print_interval_s": -1}, ValueError, r"`print_interval_s` to be a number >= 0, but got -1"),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PerClassLossMonitor(**kwargs)
