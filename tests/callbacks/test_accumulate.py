"""The device-side sums, against loops written out by hand; each on both paths (torch, and NumPy on the host)."""

from __future__ import annotations

import math

import pytest
import torch

from lossplug.callbacks._accumulate import (
    HOST_VALUES,
    Array,
    HardnessBins,
    StatisticSums,
    observed,
    per_class_increment,
)
from lossplug.callbacks._base import _on_host, _StageRecord
from lossplug.losses import BinaryCrossEntropyLoss, CenterLoss, CrossEntropyLoss, WeightedSum
from lossplug.output import LossOutput

LOGITS = torch.tensor(
    [[2.0, 0.0, -1.0], [0.5, 0.2, 0.1], [100.0, 0.0, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
)
TARGET = torch.tensor([0, 0, 0, 1, -100, 2])


BOTH_PATHS = pytest.mark.parametrize("host", [False, True], ids=["torch", "numpy"])


def _table(rows: int, columns: int, index: Array | None, values: Array) -> torch.Tensor:
    sums = StatisticSums((rows, columns), torch.device("cpu"))
    sums.update(index, values)
    assert sums.sums.dtype == torch.float64
    return torch.tensor(sums.reduced(), dtype=torch.float64)


@BOTH_PATHS
def test_per_class_sums_match_a_loop(host: bool) -> None:
    out = CrossEntropyLoss(reduction="none").evaluate(LOGITS, TARGET)
    table = _table(3, 2, *per_class_increment(observed([out], on_host=host), torch.float64))
    expected = torch.zeros(3, 2, dtype=torch.float64)
    for loss, target in zip(out.per_sample.tolist(), TARGET.tolist(), strict=True):
        if target != -100:
            expected[target] += torch.tensor([1.0, loss], dtype=torch.float64)
    assert torch.equal(table, expected)
    assert table[:, 0].tolist() == [3.0, 1.0, 1.0]  # the ignored sample is not counted


@BOTH_PATHS
def test_per_class_weighted_sum_has_a_column_per_term(host: bool) -> None:
    loss = WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(3, 2)}, {"ce": 1.0, "center": 0.5})
    target = torch.tensor([0, 2, 2, 1])
    out = loss.evaluate_output({"logits": LOGITS[:4], "embeddings": torch.randn(4, 2)}, target)
    table = _table(3, 4, *per_class_increment(observed([out], on_host=host), torch.float64))
    for column, term in ((2, "ce"), (3, "center")):
        per_sample = out.terms[term].per_sample.double()
        assert torch.allclose(table[:, column], torch.zeros(3, dtype=torch.float64).index_add_(0, target, per_sample))
    assert torch.allclose(table[:, 1], table[:, 2] + table[:, 3])


@BOTH_PATHS
def test_per_class_binary_classes_are_the_target_columns(host: bool) -> None:
    logits = torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    out = BinaryCrossEntropyLoss(reduction="none").evaluate(logits, target)
    table = _table(3, 2, *per_class_increment(observed([out], on_host=host), torch.float64))
    assert table[:, 0].tolist() == [2.0, 2.0, 2.0]
    assert torch.equal(table[:, 1], out.per_sample.double().sum(dim=0))


@BOTH_PATHS
def test_per_class_plain_binary_target_is_one_class(host: bool) -> None:
    out = BinaryCrossEntropyLoss(reduction="none").evaluate(
        torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    )
    table = _table(1, 2, *per_class_increment(observed([out], on_host=host), torch.float64))
    assert table.tolist() == [[3.0, out.per_sample.double().sum().item()]]


@pytest.mark.parametrize(
    ("loss", "shapes"),
    [
        (CrossEntropyLoss(reduction="none", ignore_index=-1), [(4, 3), (2, 3), (5, 3)]),
        (CrossEntropyLoss(reduction="none", ignore_index=-1), [(2, 3, 4, 5), (1, 3, 2, 2), (3, 3, 4, 5)]),
        (BinaryCrossEntropyLoss(reduction="none"), [(4, 3), (2, 3)]),
        (BinaryCrossEntropyLoss(reduction="none"), [(2, 3, 4, 4), (1, 3, 2, 5), (2, 3, 4, 4)]),
        (BinaryCrossEntropyLoss(reduction="none"), [(4,), (3,)]),
    ],
)
@BOTH_PATHS
def test_outputs_observed_together_sum_to_the_separate_tables(
    loss: torch.nn.Module, shapes: list[tuple[int, ...]], host: bool
) -> None:
    """Steps kept and added at once (images of several sizes included) give the sums of adding each alone."""
    generator = torch.Generator().manual_seed(0)
    outputs = []
    for shape in shapes:
        logits = torch.randn(shape, generator=generator)
        if loss.target_kind == "probability":
            target = (torch.rand(shape, generator=generator) > 0.5).float()
        else:
            target = torch.randint(-1, 3, (shape[0], *shape[2:]), generator=generator)
        outputs.append(loss.evaluate(logits, target))
    columns = 3 if len(shapes[0]) > 1 or loss.target_kind == "index" else 1
    together = _table(columns, 2, *per_class_increment(observed(outputs, on_host=host), torch.float64))
    separate = sum(
        _table(columns, 2, *per_class_increment(observed([out], on_host=host), torch.float64)) for out in outputs
    )
    assert torch.allclose(together, separate, rtol=0, atol=1e-12)
    assert together[:, 0].sum() == sum(int(out.valid.sum()) for out in outputs)
    bins = HardnessBins(5, hard_threshold=0.5, easy_threshold=0.9)
    rows = len(bins.groups(outputs[0].task)) * bins.rows_per_group
    together = _table(rows, 2, *bins.increment(observed(outputs, on_host=host), torch.float64))
    separate = sum(_table(rows, 2, *bins.increment(observed([out], on_host=host), torch.float64)) for out in outputs)
    assert torch.allclose(together, separate, rtol=0, atol=1e-12)


def _output(
    p_t: list[float], loss: list[float], valid: list[bool] | None = None, target: list[float] | None = None
) -> LossOutput:
    per_sample = torch.tensor(loss)
    binary = target is not None
    return LossOutput(
        loss=per_sample.sum(),
        per_sample=per_sample,
        p_t=torch.tensor(p_t),
        valid=torch.tensor(valid) if valid is not None else torch.ones(len(loss), dtype=torch.bool),
        target=torch.tensor(target) if binary else torch.zeros(len(loss), dtype=torch.long),
        task="binary" if binary else "multiclass",
        num_classes=1,
    )


def _hardness(bins: HardnessBins, out: LossOutput, host: bool) -> list[tuple[torch.Tensor, ...]]:
    """Per group: the split table (per bin, NaN, per category) as tensors."""
    groups = bins.groups(out.task)
    rows = len(groups) * bins.rows_per_group
    table = _table(rows, 2, *bins.increment(observed([out], on_host=host), torch.float64)).tolist()
    size = bins.rows_per_group
    return [
        tuple(torch.tensor(part, dtype=torch.float64) for part in bins.split(table[number * size : (number + 1) * size]))
        for number in range(len(groups))
    ]


@BOTH_PATHS
def test_hardness_bins_edges_last_bin_and_nan(host: bool) -> None:
    bins = HardnessBins(10, hard_threshold=0.5, easy_threshold=0.9)
    p_t = [0.0, 0.05, 0.1, 0.5, 0.9, 0.95, 1.0, math.nan, 0.3]
    loss = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    valid = [True] * 8 + [False]
    ((per_bin, nan, per_category),) = _hardness(bins, _output(p_t, loss, valid), host)
    assert per_bin[:, 0].tolist() == [2, 1, 0, 0, 0, 1, 0, 0, 0, 3]  # p_t = 1 is in the last bin
    assert per_bin[:, 1].tolist() == [3, 4, 0, 0, 0, 8, 0, 0, 0, 112]
    assert nan.tolist() == [1, 128]
    assert per_category.tolist() == [[3, 7], [1, 8], [3, 112]]  # hard, medium, easy
    assert per_bin[:, 0].sum() + nan[0] == 8  # every non-ignored sample, the NaN one included


@pytest.mark.parametrize(("hard", "easy"), [(0.33, 0.77), (0.0, 1.0), (0.25, 0.25)])
@BOTH_PATHS
def test_hardness_categories_at_thresholds_off_the_bin_edges(hard: float, easy: float, host: bool) -> None:
    bins = HardnessBins(4, hard_threshold=hard, easy_threshold=easy)
    p_t = [0.0, 0.2, 0.25, 0.33, 0.5, 0.76, 0.77, 0.99, 1.0]
    out = _output(p_t, [1.0] * len(p_t))
    ((per_bin, _, per_category),) = _hardness(bins, out, host)
    expected = [sum(p < hard for p in p_t), sum(hard <= p < easy for p in p_t), sum(p >= easy for p in p_t)]
    assert per_category[:, 0].tolist() == expected
    assert per_bin[:, 0].tolist() == [2, 2, 1, 4]


@BOTH_PATHS
def test_hardness_binary_groups(host: bool) -> None:
    bins = HardnessBins(2, hard_threshold=0.5, easy_threshold=0.9)
    out = _output([0.2, 0.7, 1.0, 0.4], [1.0, 2.0, 3.0, 4.0], target=[1.0, 0.0, 1.0, 0.3])
    (all_, positive, negative) = _hardness(bins, out, host)
    assert all_[0].tolist() == [[2, 5], [2, 5]]
    assert positive[0].tolist() == [[1, 1], [1, 3]]
    assert negative[0].tolist() == [[1, 4], [1, 2]]


def _with_nans(out: LossOutput, generator: torch.Generator) -> LossOutput:
    """``out`` with NaN in some losses and p_t (counted and ignored positions alike) and p_t on bin edges."""
    per_sample, p_t = out.per_sample.clone(), out.p_t.clone()
    flat_loss, flat_p_t = per_sample.view(-1), p_t.view(-1)
    picks = torch.randperm(flat_loss.numel(), generator=generator)
    flat_loss[picks[:3]] = math.nan
    flat_p_t[picks[3:6]] = math.nan
    flat_p_t[picks[6:12]] = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.95, 1.0])
    return out._replace(per_sample=per_sample, p_t=p_t)


@pytest.mark.parametrize("p_t_dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["multiclass", "dense multiclass", "multi-label", "dense binary", "weighted sum"])
def test_numpy_and_torch_paths_give_the_same_tables(case: str, p_t_dtype: torch.dtype) -> None:
    """Bit for bit, NaN included: the host path is the same statistics, not an approximation."""
    generator = torch.Generator().manual_seed(1)
    outputs = []
    for _ in range(3):
        if case == "weighted sum":
            loss = WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(4, 3)})
            target = torch.randint(0, 4, (16,), generator=generator)
            model_output = {"logits": torch.randn(16, 4, generator=generator), "embeddings": torch.randn(16, 3)}
            out = loss.evaluate_output(model_output, target)
        elif case in ("multiclass", "dense multiclass"):
            shape = (16, 4) if case == "multiclass" else (2, 4, 3, 5)
            target = torch.randint(-1, 4, (shape[0], *shape[2:]), generator=generator)
            out = CrossEntropyLoss(ignore_index=-1).evaluate(torch.randn(shape, generator=generator), target)
        else:
            shape = (16, 4) if case == "multi-label" else (2, 4, 3, 5)
            target = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])[torch.randint(0, 5, shape, generator=generator)]
            out = BinaryCrossEntropyLoss().evaluate(torch.randn(shape, generator=generator), target)
        out = _with_nans(out, generator)
        outputs.append(out._replace(p_t=out.p_t.to(p_t_dtype)))
    bins = HardnessBins(10, hard_threshold=0.3, easy_threshold=0.9)
    rows = len(bins.groups(outputs[0].task)) * bins.rows_per_group
    width = 2 + len(outputs[0].terms)
    tables = {}
    for host in (False, True):
        batch = observed(outputs, on_host=host)
        tables[host] = (
            _table(4, width, *per_class_increment(batch, torch.float64)),
            _table(rows, 2, *bins.increment(batch, torch.float64)),
        )
    for on_torch, on_numpy in zip(tables[False], tables[True], strict=True):
        torch.testing.assert_close(on_numpy, on_torch, rtol=0, atol=0, equal_nan=True)
    assert tables[False][1][:, 1].isnan().any()  # the NaN losses reached the tables


def test_numpy_reads_what_it_can_and_torch_the_rest() -> None:
    out = CrossEntropyLoss().evaluate(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    assert observed([out, out], on_host=True).on_host
    assert not observed([out, out], on_host=False).on_host
    # NumPy has no bfloat16: such outputs are observed in torch, and give the same tables
    half = out._replace(p_t=out.p_t.bfloat16())
    batch = observed([out, half], on_host=True)
    assert not batch.on_host
    bins = HardnessBins(10, hard_threshold=0.5, easy_threshold=0.9)
    expected = _table(bins.rows_per_group, 2, *bins.increment(observed([out, half]), torch.float64))
    assert torch.equal(_table(bins.rows_per_group, 2, *bins.increment(batch, torch.float64)), expected)


def test_only_small_flushes_on_the_cpu_run_in_numpy() -> None:
    out = CrossEntropyLoss().evaluate(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    record = _StageRecord("train")
    record.sums = StatisticSums((3, 2), torch.device("cpu"))
    record.pending, record.pending_values = [out], 8
    assert _on_host(record)
    record.pending_values = HOST_VALUES  # many values: torch's index_add_ is faster
    assert not _on_host(record)
    record.pending_values, record.sums = 8, StatisticSums((3, 2), torch.device("meta"))
    assert not _on_host(record)
