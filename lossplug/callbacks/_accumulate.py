r"""Device-side accumulation shared by the diagnostics callbacks.

Observed :class:`~lossplug.output.LossOutput` records are kept, detached and by reference, until
about a million values have gathered (:data:`FLUSH_VALUES`) or the epoch ends; then they are
concatenated and added with one ``index_add_`` into a float64 table of sums that lives on the
model's device. A step costs a list append: no tensor operation, no host-device synchronization,
and no second loss computation. A small flush on the CPU (fewer than :data:`HOST_VALUES` values)
runs in NumPy on the same memory instead: the same operations, at a fraction of torch's fixed
cost per operation, which is most of a small flush's time. At the end of an epoch the table is
summed over processes (:class:`StatisticSums` is a torchmetrics ``Metric`` whose one state has
``dist_reduce_fx="sum"``), and only then are means and shares formed.

Sums of float32 per-sample losses in float64 are exact while the losses of one epoch span less
than about :math:`2^{29}` in magnitude, so the order of the additions (one process or several)
does not change them in practice.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from lossplug.output import LossOutput, Task

GROUPS_MULTICLASS: tuple[str, ...] = ("all",)
GROUPS_BINARY: tuple[str, ...] = ("all", "positive", "negative")
FLUSH_VALUES = 1 << 20
"""Observed per-sample values kept per stage before they are added to the table (about 17 MB on the
device for float32 losses and p_t, int64 targets): small steps are added once per epoch, large
ones (dense prediction) at once."""
HOST_VALUES = 1 << 12
"""Flushes on the CPU of fewer observed values than this run in NumPy (:func:`observed` ``on_host``),
where torch's fixed cost per operation is most of the time: at the end of an epoch of the default
run (about 450 values), a flush took 20-40 % less time. At 4,096 values the two took the same
time here; above, torch's ``index_add_`` is faster."""
CATEGORIES: tuple[str, ...] = ("hard", "medium", "easy")
"""The hardness categories, in the order of increasing p_t (as stored)."""


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


Array: TypeAlias = Tensor | np.ndarray
"""A tensor, or on the host path a NumPy array over a CPU tensor's memory."""


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
        self.add(index, values)

    def add(self, index: Array | None, values: Array) -> None:
        """:meth:`update` without torchmetrics' bookkeeping around it (which costs more than the addition).

        NumPy arrays (from :func:`observed` ``on_host``) are added to the table's memory through NumPy.
        """
        if isinstance(values, np.ndarray):
            table = self.sums.numpy()
            if index is None:
                table += values
            else:
                for column in range(table.shape[1]):
                    table[:, column] += np.bincount(index, weights=values[:, column], minlength=table.shape[0])
        elif isinstance(index, Tensor):
            self.sums.index_add_(0, index, values.to(self.sums.dtype))
        else:
            self.sums.add_(values)

    def zero(self) -> None:
        """Zero the table for a new epoch: what ``reset`` does to the one state, without its bookkeeping."""
        if self.sums.device.type == "cpu":
            self.sums.numpy().fill(0.0)  # NumPy's fixed cost is a fraction of torch's
        else:
            self.sums.zero_()

    def compute(self) -> Tensor:
        """The table (summed over processes when called through :meth:`reduced`)."""
        return self.sums.clone()

    def reduced(self) -> list[list[float]]:
        """The table summed over every process, as rows of Python floats. A collective: call it on every rank."""
        if not (dist.is_available() and dist.is_initialized()):
            # one process: torchmetrics' sync would only cost its bookkeeping
            return self.sums.numpy().tolist() if self.sums.device.type == "cpu" else self.sums.tolist()
        self.sync(should_sync=True)
        try:
            return self.sums.tolist()
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


@dataclass
class Observed:
    """What the statistics read of one or more observed outputs, concatenated over their samples.

    Multiclass: every field is ``(M,)``, one entry per counted position (sample, pixel). Binary and
    multi-label: ``(M, C)``, the class (target column, dim 1 of the output) last; a plain binary
    target ``(N,)`` is one column. Tensors, or NumPy arrays when :func:`observed` ran ``on_host``.
    """

    task: Task
    per_sample: Array
    p_t: Array | None
    valid: Array
    target: Array
    term_losses: tuple[Array, ...]
    _counted: dict[torch.dtype, Array] = field(default_factory=dict, repr=False, compare=False)

    @property
    def on_host(self) -> bool:
        """Whether the fields are NumPy arrays."""
        return isinstance(self.valid, np.ndarray)

    def counted(self, dtype: torch.dtype) -> Array:
        """``(..., 2 + len(term_losses))``: 1, the loss and each term's loss where valid, zeros elsewhere.

        Computed once per ``dtype``: the per-class and the hardness statistics of one flush share it.
        """
        values = self._counted.get(dtype)
        if values is None:
            values = self._counted[dtype] = counted_values(self.valid, [self.per_sample, *self.term_losses], dtype)
        return values


def observed(
    outputs: Sequence[LossOutput], with_p_t: bool = True, with_terms: bool = True, on_host: bool = False
) -> Observed:
    """Flatten and concatenate the fields of ``outputs`` (all of one :class:`Layout`) that the statistics read.

    ``with_p_t=False`` leaves p_t out (None) and ``with_terms=False`` the terms' losses (empty), for
    statistics that do not read them. ``on_host`` (CPU tensors only) gives NumPy arrays over the
    tensors' memory, unless NumPy cannot read one of them (bfloat16): then tensors, as without it.
    """
    if on_host:
        try:
            return _observed(outputs, with_p_t, with_terms, np)
        except TypeError:  # NumPy has no bfloat16
            pass
    return _observed(outputs, with_p_t, with_terms, torch)


def _observed(outputs: Sequence[LossOutput], with_p_t: bool, with_terms: bool, xp: Any) -> Observed:
    """:func:`observed` in ``xp``: torch, or NumPy (the functions used have the same names and arguments in both)."""
    binary = outputs[0].task == "binary"

    def flat(field: Array) -> Array:
        if not binary:
            return field.reshape(-1)
        if field.ndim < 2:
            return field.reshape(-1, 1)
        return xp.moveaxis(field, 1, -1).reshape(-1, field.shape[1])

    def joined(tensors: list[Tensor]) -> Array:
        fields: list[Array] = list(tensors)
        if xp is np:  # the callbacks' outputs come detached from the mixin
            fields = [(tensor.detach() if tensor.requires_grad else tensor).numpy() for tensor in tensors]
        if not binary and all(field.ndim == 1 for field in fields):  # per-sample classification: already flat
            return xp.concatenate(fields) if len(fields) > 1 else fields[0]
        if len(fields) == 1:
            return flat(fields[0])
        tail = fields[0].shape[1:]
        if all(field.shape[1:] == tail for field in fields):  # the usual case: one concatenation, one reshape
            return flat(xp.concatenate(fields))
        return xp.concatenate([flat(field) for field in fields])

    p_t = [output.p_t for output in outputs if output.p_t is not None]
    return Observed(
        task=outputs[0].task,
        per_sample=joined([output.per_sample for output in outputs]),
        p_t=joined(p_t) if with_p_t and len(p_t) == len(outputs) else None,
        valid=joined([output.valid for output in outputs]),
        target=joined([output.target for output in outputs]),
        term_losses=tuple(
            joined([output.terms[name].per_sample for output in outputs])
            for name in (outputs[0].terms if with_terms else ())
        ),
    )


def counted_values(valid: Array, losses: Sequence[Array], dtype: torch.dtype) -> Array:
    """``(..., 1 + len(losses))`` in ``dtype``: 1 and the losses where ``valid``, zeros elsewhere (NaN included)."""
    if isinstance(valid, np.ndarray):
        return np.where(valid[..., None], np.stack([valid, *losses], axis=-1), 0.0).astype(_numpy_dtype(dtype))
    return torch.where(valid.unsqueeze(-1), torch.stack([valid, *losses], dim=-1), 0.0).to(dtype)  # type: ignore[list-item]


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """NumPy's dtype for the torch ``dtype`` (float64, the CPU tables', without building a tensor)."""
    return np.dtype(np.float64) if dtype == torch.float64 else torch.empty((), dtype=dtype).numpy().dtype


def per_class_increment(batch: Observed, dtype: torch.dtype) -> tuple[Array | None, Array]:
    """The rows and values to add to a per-class table for observed outputs.

    Columns: count, total loss, then each :class:`~lossplug.losses.WeightedSum` term's (weighted)
    loss, in the order of ``output.terms``. Multiclass: a sample counts for its target class.
    Binary and multi-label: each element counts for its column, so the increment is a whole
    ``(C, columns)`` table (``index`` None).
    """
    values = batch.counted(dtype)
    if batch.task == "binary":
        return None, values.sum(0)
    if isinstance(batch.target, np.ndarray):
        return np.where(batch.valid, batch.target, 0).astype(np.int64, copy=False), values
    return torch.where(batch.valid, batch.target, 0).long(), values  # type: ignore[arg-type]


class HardnessBins:
    """Where each element goes in a hardness table, and how the table's rows become bins and categories.

    The device table has, per group, one row per *cell* and one for NaN p_t. The cells are the p_t
    bins split further at the two thresholds, so that one ``bucketize`` places each element
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
        self.cell_bin = [min(bisect.bisect_right(self.edges, low) - 1, bins - 1) for low in lows]
        self.cell_category = [0 if low < hard_threshold else 2 if low >= easy_threshold else 1 for low in lows]
        # past the last boundary is the NaN row; p_t a rounding error above 1 stays in the last cell
        self.boundaries = torch.tensor([*lows[1:], 1.5], dtype=torch.float64)
        self._boundaries: dict[tuple[str, bool], Any] = {}  # per device ("host": NumPy) and precision

    @property
    def rows_per_group(self) -> int:
        return len(self.cell_lows) + 1

    def groups(self, task: Task) -> tuple[str, ...]:
        return GROUPS_BINARY if task == "binary" else GROUPS_MULTICLASS

    def increment(self, batch: Observed, dtype: torch.dtype) -> tuple[Array, Array]:
        """Rows and values (count, loss) to add to a hardness table for observed outputs (with p_t)."""
        if batch.p_t is None:
            raise ValueError("HardnessBins.increment needs p_t, but the observed outputs have none.")
        p_t = batch.p_t.reshape(-1)
        # p_t is compared with the edges at its own precision (float32 at least): a p_t of 0.9 in
        # float32 is in the bin that starts at 0.9, although it is a little less than 0.9. NaN
        # compares false with every boundary, so it goes past the last one: into the NaN row
        values = batch.counted(dtype)[..., :2].reshape(-1, 2)  # count and loss
        boundaries = self._boundaries_like(p_t)
        if isinstance(p_t, np.ndarray):
            rows: Array = np.searchsorted(boundaries, p_t.astype(boundaries.dtype, copy=False), side="right")
        else:
            rows = torch.bucketize(p_t.to(boundaries.dtype), boundaries, right=True)
        if batch.task == "binary":
            xp: Any = np if batch.on_host else torch
            negative = batch.target.reshape(-1) <= 0.5
            rows = xp.concatenate([rows, rows + (negative + 1) * self.rows_per_group])
            values = xp.concatenate([values, values])
        return rows, values

    def _boundaries_like(self, p_t: Array) -> Any:
        """The cell boundaries where ``p_t`` is (a device, or NumPy), at its precision: float32 at least."""
        host = isinstance(p_t, np.ndarray)
        double = p_t.dtype == (np.float64 if host else torch.float64)
        key = ("host" if host else str(p_t.device), double)
        boundaries = self._boundaries.get(key)
        if boundaries is None:
            boundaries = self.boundaries.to(torch.float64 if double else torch.float32)
            boundaries = self._boundaries[key] = boundaries.numpy() if host else boundaries.to(p_t.device)
        return boundaries

    def split(self, block: Sequence[Sequence[float]]) -> tuple[list[list[float]], list[float], list[list[float]]]:
        """One group's reduced rows -> per bin, NaN and per category (hard, medium, easy), each [count, loss].

        In Python, not in tensors: the table is a few dozen numbers, fewer than the operations it would take.
        """
        per_bin = [[0.0, 0.0] for _ in range(self.bins)]
        per_category = [[0.0, 0.0] for _ in CATEGORIES]
        for (count, loss), bin_index, category in zip(block[:-1], self.cell_bin, self.cell_category, strict=True):
            per_bin[bin_index][0] += count
            per_bin[bin_index][1] += loss
            per_category[category][0] += count
            per_category[category][1] += loss
        return per_bin, list(block[-1]), per_category
