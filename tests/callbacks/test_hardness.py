"""HardnessHistogram in small real trainings: exact bins, groups, outputs, and the CE-versus-focal contrast."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
from callback_helpers import (
    TABLE_EMBEDDINGS,
    TABLE_LOGITS,
    TABLE_MULTI_LABEL_TARGET,
    TABLE_TARGET,
    DigitsMLP,
    TableData,
    TableModel,
    digits_loader,
    make_trainer,
    read_csv,
    rows_of,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lossplug.callbacks import HardnessHistogram
from lossplug.losses import BinaryFocalLoss, CenterLoss, CrossEntropyLoss, FocalLoss

# p_t of sample 2 is exactly 1, of sample 7 NaN; sample 4 is ignored
LOGITS = TABLE_LOGITS.clone()
LOGITS[7, 0] = math.nan
TARGET = TABLE_TARGET


def test_csv_matches_a_hand_computation(tmp_path: Path) -> None:
    histogram = HardnessHistogram(bins=10, hard_threshold=0.5, easy_threshold=0.9, stages=["train"])
    trainer = make_trainer(tmp_path, [histogram], limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET))

    rows = read_csv(histogram.csv_path)
    assert list(rows[0]) == ["epoch", "stage", "group", "bin_low", "bin_high", "count", "loss_sum", "loss_share"]
    out = CrossEntropyLoss(reduction="none").evaluate(LOGITS, TARGET)
    assert out.p_t[2].item() == 1.0
    assert math.isnan(out.p_t[7].item())
    counts, sums = [0] * 10, [0.0] * 10
    for p_t, loss, valid in zip(out.p_t.tolist(), out.per_sample.tolist(), out.valid.tolist(), strict=True):
        if valid and not math.isnan(p_t):
            counts[min(int(p_t * 10), 9)] += 1
            sums[min(int(p_t * 10), 9)] += loss
    for epoch in ("0", "1"):
        got = rows_of(rows, epoch=epoch, stage="train", group="all")
        assert [(float(row["bin_low"]), float(row["bin_high"])) for row in got[:10]] == [
            (index / 10, (index + 1) / 10) for index in range(10)
        ]
        assert [int(row["count"]) for row in got[:10]] == counts
        assert int(got[9]["count"]) >= 1  # p_t = 1 is in the last bin
        assert [float(row["loss_sum"]) for row in got[:10]] == pytest.approx(sums, rel=1e-12)
        nan_row = got[10]
        assert math.isnan(float(nan_row["bin_low"]))
        assert math.isnan(float(nan_row["bin_high"]))
        assert int(nan_row["count"]) == 1
        assert math.isnan(float(nan_row["loss_sum"]))
        assert sum(int(row["count"]) for row in got) == 7  # every non-ignored sample, the NaN one included
        assert math.fsum(float(row["loss_share"]) for row in got[:10]) == pytest.approx(1.0)


def test_scalars_summary_line_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    histogram = HardnessHistogram(stages=["train"])
    trainer = make_trainer(tmp_path, [histogram], limit_val_batches=0)
    trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET))

    printed = capsys.readouterr().out
    assert "Hardness · epoch 1 · easy / medium / hard (p_t ≥ 0.9, < 0.5) · train: samples 28.6 / 28.6 / 28.6 %" in printed
    assert "NaN p_t: 1" in printed
    metrics = [
        row for row in read_csv(Path(trainer.log_dir) / "metrics.csv") if row.get("hardness/train/all/nan_count")
    ]
    assert len(metrics) == 2
    fractions = [float(metrics[0][f"hardness/train/all/{name}_fraction"]) for name in ("hard", "medium", "easy")]
    # 7 samples: p_t 0.84, 0.41, 1.0, 0.94, 0.67, 0.49 and a NaN
    assert fractions == pytest.approx([2 / 7, 2 / 7, 2 / 7])
    assert float(metrics[0]["hardness/train/all/nan_count"]) == 1
    histogram.wait_for_plot()
    png = Path(histogram.png_path)
    assert png.parent == Path(trainer.log_dir)
    assert png.name == "hardness_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_binary_positives_and_negatives(tmp_path: Path) -> None:
    target = TABLE_MULTI_LABEL_TARGET
    histogram = HardnessHistogram(bins=5, stages=["train"], plot=False, verbose=False)
    make_trainer(tmp_path, [histogram], max_epochs=1, limit_val_batches=0).fit(
        TableModel(BinaryFocalLoss(), LOGITS.nan_to_num()), datamodule=TableData(target)
    )
    rows = read_csv(histogram.csv_path)
    counts = {
        group: [int(row["count"]) for row in rows_of(rows, group=group)] for group in ("all", "positive", "negative")
    }
    assert sum(counts["positive"]) == 8
    assert sum(counts["negative"]) == 16
    assert counts["all"] == [p + n for p, n in zip(counts["positive"], counts["negative"], strict=True)]
    for group in ("all", "positive", "negative"):
        assert math.fsum(float(row["loss_share"]) for row in rows_of(rows, group=group)) == pytest.approx(1.0)


def test_tensorboard_histograms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    histogram = HardnessHistogram(stages=["train"], plot=False, verbose=False)
    logger = TensorBoardLogger(tmp_path)
    make_trainer(tmp_path, [histogram], max_epochs=1, limit_val_batches=0, logger=[CSVLogger(tmp_path), logger]).fit(
        TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET)
    )
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {"hardness/train/all/p_t", "hardness/train/all/p_t_loss"} <= set(events.Tags()["histograms"])
    (event,) = events.Histograms("hardness/train/all/p_t")
    assert event.histogram_value.num == 6  # the non-NaN samples
    assert event.histogram_value.bucket_limit[-1] == 1.0


def test_focal_loss_moves_the_loss_off_the_easy_samples(tmp_path: Path) -> None:
    """The focal-loss paper's point, on digits: with gamma = 2 the easy samples carry less of the loss."""
    easy_share = {}
    for gamma in (0.0, 2.0):
        L.seed_everything(0, verbose=False)
        histogram = HardnessHistogram(bins=10, easy_threshold=0.9, stages=["train"], plot=False, verbose=False)
        trainer = make_trainer(tmp_path / f"gamma{gamma}", [histogram], max_epochs=3, limit_val_batches=0)
        trainer.fit(DigitsMLP(FocalLoss(gamma=gamma)), train_dataloaders=digits_loader())
        last = rows_of(read_csv(histogram.csv_path), epoch=2, group="all")
        easy_share[gamma] = math.fsum(float(row["loss_share"]) for row in last if row["bin_low"] == "0.9")
        easy_count = sum(int(row["count"]) for row in last if row["bin_low"] == "0.9")
        assert easy_count > 0.4 * 1797  # the model is good enough that many samples are easy
    assert easy_share[2.0] < 0.2 * easy_share[0.0]


def test_center_loss_alone_has_no_p_t(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [HardnessHistogram()], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"bins samples by p_t, but the model's loss gives none.*WeightedSum"):
        trainer.fit(TableModel(CenterLoss(3, 2), LOGITS, TABLE_EMBEDDINGS), datamodule=TableData(TARGET.clamp(min=0)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bins": 0}, ValueError, "`bins` to be an integer >= 1, but got 0"),
        ({"easy_threshold": 1.5}, ValueError, r"`easy_threshold` to be a number in \[0, 1\], but got 1.5"),
        (
            {"hard_threshold": 0.95},
            ValueError,
            r"`hard_threshold` to be a number in \[0, easy_threshold=0.9\], but got 0.95",
        ),
        ({"hard_threshold": "low"}, TypeError, "`hard_threshold` to be a number, but got str 'low'"),
        ({"plot_interval_s": -1}, ValueError, r"`plot_interval_s` to be a number >= 0, but got -1"),
        ({"stages": ["fit"]}, ValueError, "`stages` to be one of"),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        HardnessHistogram(**kwargs)
