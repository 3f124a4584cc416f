"""The example of docs/custom_diagnostics.md, as written there, in a tiny real training."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer, read_csv

from lossplug.losses import CrossEntropyLoss

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom_diagnostics.md"


def _example() -> Any:
    """``MeanPtPerClass``, from the first Python block under the doc's "Example" heading."""
    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## Example") :], re.DOTALL)
    assert code is not None
    assert 30 <= len(code.group(1).splitlines()) <= 45  # about 40 lines
    namespace: dict[str, Any] = {"__name__": "custom_diagnostics_example"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace["MeanPtPerClass"]


def test_the_documented_example_writes_the_mean_p_t_of_each_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logits = TABLE_LOGITS.clone()
    logits[6, 0] = math.nan  # a diverged sample of class 2: its p_t is NaN, and it is left out
    callback = _example()(stages=["train", "validate"])
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(TableModel(CrossEntropyLoss(), logits), datamodule=TableData(TABLE_TARGET, batch_size=3))

    # by hand: softmax in float64, one sum per class over its non-ignored samples with a p_t
    p_t = torch.softmax(logits.double(), dim=1)
    sums, counts = [0.0, 0.0, 0.0], [0, 0, 0]
    for index, target in enumerate(TABLE_TARGET.tolist()):
        value = p_t[index, target].item() if target >= 0 else math.nan
        if not math.isnan(value):
            sums[target] += value
            counts[target] += 1
    assert counts == [3, 2, 1]
    rows = read_csv(Path(trainer.log_dir) / "mean_p_t.csv")
    assert list(rows[0]) == ["epoch", "stage", "class", "count", "mean_p_t"]
    assert [(row["epoch"], row["stage"]) for row in rows[::3]] == [("0", "train"), ("0", "validate"), ("1", "train"), ("1", "validate")]
    for start in range(0, 12, 3):
        got = rows[start : start + 3]
        assert [row["class"] for row in got] == ["0", "1", "2"]
        assert [int(row["count"]) for row in got] == counts
        assert [float(row["mean_p_t"]) for row in got] == pytest.approx([s / n for s, n in zip(sums, counts, strict=True)], rel=1e-6)
    lowest = min(range(3), key=lambda c: sums[c] / counts[c])
    assert f"Mean p_t · validate · epoch 1: lowest class {lowest} ({sums[lowest] / counts[lowest]:.3f})" in capsys.readouterr().out
    metrics = read_csv(Path(trainer.log_dir) / "metrics.csv")
    assert float(next(row for row in metrics if row.get("mean_p_t/train/0"))["mean_p_t/train/0"]) == pytest.approx(sums[0] / 3)


def test_the_example_refuses_a_loss_without_p_t(tmp_path: Path) -> None:
    from callback_helpers import TABLE_EMBEDDINGS

    from lossplug.losses import CenterLoss

    trainer = make_trainer(tmp_path, [_example()(stages=["train"])], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="MeanPtPerClass needs a multiclass loss that gives p_t"):
        trainer.fit(TableModel(CenterLoss(3, 2), TABLE_LOGITS, TABLE_EMBEDDINGS), datamodule=TableData(TABLE_TARGET.clamp(min=0)))
