"""LongTailReport in small real runs, against recall, F1 and calibration computed by hand in float64."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from callback_helpers import (
    TABLE_LOGITS,
    TABLE_MULTI_LABEL_TARGET,
    TABLE_TARGET,
    TableData,
    TableModel,
    make_trainer,
    read_csv,
)
from torch import nn

from lossplug.callbacks import LongTailReport
from lossplug.callbacks.long_tail import group_recall, shot_groups
from lossplug.losses import BinaryFocalLoss, CrossEntropyLoss

NAMES = ["cat", "dog", "eel"]
COUNTS = [150, 50, 5]  # many, medium, few


def _expected(logits: torch.Tensor, target: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """Accuracy, macro-F1, per-class recall and ECE written out plainly, in float64."""
    keep = target >= 0
    logits, target = logits[keep].double(), target[keep]
    probabilities = logits.softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == target).double()
    values = {"acc": correct.mean().item()}
    recalls, f1s = [], []
    for c in range(logits.shape[1]):
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan)
    values["macro_f1"] = sum(f for f in f1s if not math.isnan(f)) / sum(not math.isnan(f) for f in f1s)
    ece = 0.0
    # bins [b / B, (b + 1) / B), and a confidence of exactly 1 in a bin of its own
    for b in range(bins + 1):
        low, high = b / bins, (b + 1) / bins
        members = (confidence >= low) & (confidence < high)
        if members.any():
            ece += members.double().mean().item() * abs(correct[members].mean().item() - confidence[members].mean().item())
    values["ece"] = ece
    values.update({f"recall/{name}": recall for name, recall in zip(NAMES, recalls, strict=True)})
    return values


def _test(tmp_path: Path, model: TableModel, report: LongTailReport, target: torch.Tensor) -> dict[str, float]:
    trainer = make_trainer(tmp_path, [report], max_epochs=1)
    (results,) = trainer.test(model, datamodule=TableData(target, batch_size=3, class_names=NAMES), verbose=False)
    assert not any("/recall/" in key for key in results)  # each class's recall goes straight to the loggers
    assert report.results.get("test", {}).items() >= results.items()
    return report.results.get("test", {})


def test_values_match_a_hand_computation(tmp_path: Path) -> None:
    results = _test(tmp_path, TableModel(CrossEntropyLoss(), TABLE_LOGITS), LongTailReport(class_counts=COUNTS), TABLE_TARGET)
    expected = _expected(TABLE_LOGITS, TABLE_TARGET)
    for key, value in expected.items():
        assert results[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
    recalls = [expected[f"recall/{name}"] for name in NAMES]
    assert results["test/recall_many"] == pytest.approx(recalls[0])
    assert results["test/recall_medium"] == pytest.approx(recalls[1])
    assert results["test/recall_few"] == pytest.approx(recalls[2])


def test_post_hoc_logit_adjustment_changes_the_predictions(tmp_path: Path) -> None:
    model = TableModel(CrossEntropyLoss(), TABLE_LOGITS)
    model.set_logit_adjustment(1.0)
    data = TableData(TABLE_TARGET, batch_size=3, class_names=NAMES)
    data.class_counts = torch.tensor(COUNTS)
    report = LongTailReport()
    trainer = make_trainer(tmp_path, [report], max_epochs=1)
    trainer.test(model, datamodule=data, verbose=False)
    results = report.results["test"]
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    adjusted = TABLE_LOGITS.double() - prior.log()
    expected = _expected(adjusted, TABLE_TARGET)
    assert expected["acc"] != _expected(TABLE_LOGITS, TABLE_TARGET)["acc"]  # the adjustment moves predictions here
    for key, value in expected.items():
        assert results[f"test/{key}"] == pytest.approx(value, abs=1e-6), key


def test_binary_losses_report_the_class_of_their_one_hot_targets(tmp_path: Path) -> None:
    one_hot = nn.functional.one_hot(TABLE_TARGET.clamp_min(0), 3).float()
    model = TableModel(BinaryFocalLoss(), TABLE_LOGITS)
    results = _test(tmp_path, model, LongTailReport(class_counts=COUNTS), one_hot)
    expected = _expected(TABLE_LOGITS, TABLE_TARGET.clamp_min(0))
    assert results["test/acc"] == pytest.approx(expected["acc"])
    assert TABLE_MULTI_LABEL_TARGET.shape == one_hot.shape


def test_multi_label_rows_without_exactly_one_positive_are_left_out(tmp_path: Path) -> None:
    # rows 0 and 1 have no positive and two, the others one each: only those six count
    target = nn.functional.one_hot(TABLE_TARGET.clamp_min(0), 3).float()
    target[0] = 0.0
    target[1] = torch.tensor([1.0, 1.0, 0.0])
    results = _test(tmp_path, TableModel(BinaryFocalLoss(), TABLE_LOGITS), LongTailReport(class_counts=COUNTS), target)
    kept = torch.tensor([False, False, True, True, True, True, True, True])
    expected = _expected(TABLE_LOGITS[kept], TABLE_TARGET.clamp_min(0)[kept])
    assert results["test/acc"] == pytest.approx(expected["acc"])


def test_without_class_counts_the_groups_are_left_out_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no training class counts"):
        results = _test(tmp_path, TableModel(CrossEntropyLoss(), TABLE_LOGITS), LongTailReport(), TABLE_TARGET)
    assert "test/acc" in results
    assert "test/recall_few" not in results


def test_a_torch_loss_turns_the_report_off_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="LongTailReport is off for this run"):
        results = _test(tmp_path, TableModel(nn.CrossEntropyLoss(), TABLE_LOGITS), LongTailReport(), TABLE_TARGET)
    assert "test/acc" not in results


def test_each_class_s_recall_reaches_the_loggers(tmp_path: Path) -> None:
    _test(tmp_path, TableModel(CrossEntropyLoss(), TABLE_LOGITS), LongTailReport(class_counts=COUNTS), TABLE_TARGET)
    (metrics_csv,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    rows = read_csv(metrics_csv)
    assert {"test/acc", "test/recall/cat", "test/recall/eel", "test/recall_few", "test/ece"} <= set(rows[0])
    assert [row["epoch"] for row in rows if row["test/recall/cat"]] == ["0"]  # with its epoch, as Lightning's rows


def test_groups_and_their_recall() -> None:
    assert shot_groups([101, 100, 20, 19, 0], many_shot=100, few_shot=20) == ["many", "medium", "medium", "few", "few"]
    means = group_recall([1.0, 0.5, 0.25, 0.0, 1.0], ["many", "medium", "medium", "few", "few"])
    assert means == {"many": 1.0, "medium": 0.375, "few": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"many_shot": 10, "few_shot": 20}, "Expected argument `few_shot` to be at most many_shot=10, but got 20"),
        ({"bins": 0}, "Expected argument `bins` to be an integer >= 1, but got 0"),
        ({"class_counts": [3, float("nan")]}, "`class_counts`"),
    ],
    ids=["few-above-many", "no-bins", "nan-count"],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        LongTailReport(**kwargs)  # type: ignore[arg-type]
