r"""Device-side accumulation shared by the diagnostics callbacks.

Every observed :class:`~lossplug.output.LossOutput` becomes one ``index_add_`` into a float64
table of sums that lives on the model's device: no host-device synchronization per step, and no
second loss computation. At the end of an epoch the table is summed over processes
(:class:`StatisticSums` is a torchmetrics ``Metric`` whose one state has ``dist_reduce_fx="sum"``),
and only then are means and shares formed.

Sums of float32 per-sample losses in float64 are exact while the losses of one epoch span less
than about :math:`2^{29}` in magnitude, so the order of the additions (one process or several)
does not change them in practice.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from lossplug.output import LossOutput, Task

GROUPS_MULTICLASS: tuple[str, ...] = ("all",)
GROUPS_BINARY: tuple[str, ...] = ("all", "positive", "negative")
CATEGORIES: tuple[str, ...] = ("hard", "medium", "easy")
"""The hardness categories, in the order of increasing p_t (as stored)."""


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


class StatisticSums(Metric):
    """One table of sums on the device, reduced by a sum over processes.

    Args:
        shape: Shape of the table, ``(rows, columns)``: one row per class or per bin, one column per
            summed quantity (count, loss, ...).
        device: Where the table lives: the device of the losses that are added to it.
    """

    full_state_update = False
    sums: Tensor

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        super().__init__()
        self.add_state("sums", default=torch.zeros(shape, dtype=accumulation_dtype(device)), dist_reduce_fx="sum")
        self.to(device)

    def update(self, index: Tensor | None, values: Tensor) -> None:  # type: ignore[override]
        """Add ``values`` ``(M, columns)`` to the rows ``index`` ``(M,)``, or a whole table when ``index`` is None."""
        if index is None:
            self.sums.add_(values)
        else:
            self.sums.index_add_(0, index, values.to(self.sums.dtype))

    def compute(self) -> Tensor:
        """The table (summed over processes when called through :meth:`reduced`)."""
        return self.sums.clone()

    def reduced(self) -> Tensor:
        """The table summed over every process, on the CPU. A collective: call it on every rank."""
        self.sync(should_sync=True)
        try:
            return self.sums.detach().cpu().clone()
        finally:
            self.unsync(should_unsync=self._is_synced)


class Layout(NamedTuple):
    """What an epoch's statistics look like; the same on every process of a run."""

    task: Task
    num_classes: int
    terms: tuple[str, ...]
    has_p_t: bool


def layout_of(output: LossOutput) -> Layout:
    """The :class:`Layout` of one observed output."""
    return Layout(output.task, int(output.num_classes), tuple(output.terms), output.p_t is not None)


def per_class_increment(output: LossOutput, dtype: torch.dtype) -> tuple[Tensor | None, Tensor]:
    """The rows and values to add to a per-class table for one output.

    Columns: count, total loss, then each :class:`~lossplug.losses.WeightedSum` term's (weighted)
    loss, in the order of ``output.terms``. Multiclass: a sample counts for its target class.
    Binary and multi-label: each element counts for its column (dim 1), so the increment is a
    whole ``(C, columns)`` table (``index`` None).
    """
    valid = output.valid
    columns = [valid.to(dtype), torch.where(valid, output.per_sample.to(dtype), 0.0)]
    columns += [torch.where(valid, term.per_sample.to(dtype), 0.0) for term in output.terms.values()]
    values = torch.stack(columns, dim=-1)
    if output.task == "binary":
        if values.ndim < 3:  # a plain binary target (N,) is one class
            return None, values.sum(dim=0, keepdim=True)
        return None, values.movedim(1, 0).reshape(output.num_classes, -1, len(columns)).sum(dim=1)
    index = torch.where(valid, output.target, 0).reshape(-1).long()
    return index, values.reshape(index.numel(), len(columns))


class HardnessBins:
    """Where each element goes in a hardness table, and how the table's rows become bins and categories.

    The device table has, per group, one row per *cell* and one for NaN p_t. The cells are the p_t
    bins split further at the two thresholds, so that one ``bucketize`` per step places an element
    both in its bin (``bins`` even bins of ``[0, 1]``, closed on the left, the last one closed on
    both ends so that p_t = 1 is in it) and in its category: hard (``p_t < hard_threshold``), medium
    or easy (``p_t >= easy_threshold``). Columns: count and loss. Binary and multi-label outputs
    fill the groups all, positive (target > 0.5) and negative (target <= 0.5); multiclass outputs
    fill only all.

    Args:
        bins: Number of p_t bins.
        hard_threshold: p_t below this is hard.
        easy_threshold: p_t at or above this is easy.
    """

    def __init__(self, bins: int, hard_threshold: float, easy_threshold: float) -> None:
        self.bins = bins
        self.edges = [index / bins for index in range(bins + 1)]
        # a threshold of 1 makes the point cell [1, 1]: only p_t = 1 is easy then
        lows = sorted({*self.edges[:-1], hard_threshold, easy_threshold})
        self.cell_lows = lows
        self.cell_bin = torch.tensor([min(bisect.bisect_right(self.edges, low) - 1, bins - 1) for low in lows])
        self.cell_category = torch.tensor(
            [0 if low < hard_threshold else 2 if low >= easy_threshold else 1 for low in lows]
        )
        # NaN is mapped to 2, beyond this last boundary, into the NaN row; p_t a rounding error above 1 stays in the last cell
        self.boundaries = torch.tensor([*lows[1:], 1.5], dtype=torch.float64)
        self._device_boundaries: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def rows_per_group(self) -> int:
        return len(self.cell_lows) + 1

    def groups(self, task: Task) -> tuple[str, ...]:
        return GROUPS_BINARY if task == "binary" else GROUPS_MULTICLASS

    def increment(self, output: LossOutput, p_t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Rows and values (count, loss) to add to a hardness table for one output."""
        # p_t is compared with the edges at its own precision (float32 at least): a p_t of 0.9 in
        # float32 is in the bin that starts at 0.9, although it is a little less than 0.9
        precision = torch.float64 if p_t.dtype == torch.float64 else torch.float32
        key = (p_t.device, precision)
        boundaries = self._device_boundaries.get(key)
        if boundaries is None:
            boundaries = self._device_boundaries[key] = self.boundaries.to(p_t.device, precision)
        rows = torch.bucketize(torch.nan_to_num(p_t.reshape(-1).to(precision), nan=2.0), boundaries, right=True)
        valid = output.valid.reshape(-1)
        values = torch.stack([valid.to(dtype), torch.where(valid, output.per_sample.reshape(-1).to(dtype), 0.0)], -1)
        if output.task == "binary":
            group = (output.target.reshape(-1) <= 0.5).long().add_(1)
            rows = torch.cat([rows, rows + group * self.rows_per_group])
            values = torch.cat([values, values])
        return rows, values

    def split(self, block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One group's reduced rows -> per bin, NaN and per category (hard, medium, easy), each (count, loss)."""
        cells, nan = block[:-1], block[-1]
        per_bin = torch.zeros(self.bins, 2, dtype=block.dtype).index_add_(0, self.cell_bin, cells)
        per_category = torch.zeros(len(CATEGORIES), 2, dtype=block.dtype).index_add_(0, self.cell_category, cells)
        return per_bin, nan, per_category
