"""The base classes of the lossplug losses: ``forward`` gives the loss, ``evaluate`` the full record; weights
resolved from class counts (``ClassWeightedLoss``) and buffers computed from them (``ClassCountsLoss``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import Tensor, nn

from lossplug.functional.class_weights import class_weights_from_counts
from lossplug.output import LossOutput
from lossplug.shared_checks import (
    AlphaStrategy,
    ClassCounts,
    ClassWeight,
    as_class_weight,
    check_class_counts,
    check_number,
)

InputKind: TypeAlias = Literal["logits", "embeddings"]
TargetKind: TypeAlias = Literal["index", "probability"]
ModelOutput: TypeAlias = Tensor | Mapping[str, Tensor]

#: The ``"effective_number"`` parameter when ``beta`` is not given (Cui et al. 2019 use 0.999 and up).
DEFAULT_BETA = 0.999


TORCH_COUNTERPARTS = {"CrossEntropyLoss": "CrossEntropyLoss", "BCEWithLogitsLoss": "BinaryCrossEntropyLoss"}
"""torch's losses with a lossplug loss of the same values: the name of the lossplug loss, by torch's."""


def select_input(output: ModelOutput, kind: InputKind, consumer: str) -> Tensor:
    """Pick what a loss consumes from a model output.

    A tensor is passed as it is (a model with one output); from a mapping, the entry named ``kind``
    (``"logits"`` or ``"embeddings"``) is taken.

    Args:
        output: A tensor, or a mapping with ``"logits"`` and/or ``"embeddings"``.
        kind: What the loss consumes.
        consumer: Name of the loss, for the error message.
    """
    if isinstance(output, Tensor):
        return output
    if not isinstance(output, Mapping):
        raise TypeError(
            f"Expected the model output to be a tensor or a mapping with 'logits' and/or 'embeddings', "
            f"but got {type(output).__name__}."
        )
    if kind not in output:
        raise ValueError(
            f"{consumer} consumes {kind!r}, but the model output has keys {sorted(output)}. "
            f"Return a mapping with a {kind!r} entry from the model."
        )
    return output[kind]


class BaseLoss(nn.Module):
    """A loss that gives per-sample losses and p_t before reducing them.

    Subclasses implement :meth:`evaluate`; ``forward`` returns its ``loss``. The constructor
    arguments of every subclass are recorded (:attr:`init_args`), so a configured loss can be
    written out and rebuilt exactly (:func:`lossplug.losses.loss_config`).

    Attributes:
        input_kind: What the loss consumes from a model output: ``"logits"`` or ``"embeddings"``.
        target_kind: What it takes as target: class indices (``"index"``), or floats in [0, 1] per
            element (``"probability"``: the binary and multi-label losses).
    """

    input_kind: ClassVar[InputKind | Literal["mixed"]] = "logits"
    target_kind: TargetKind = "index"
    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording_init_args(init)  # type: ignore[method-assign]

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The reduced loss (per-element for ``reduction="none"``)."""
        return self.evaluate(input, target).loss

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        """The loss together with its per-sample losses, p_t, validity mask and targets."""
        raise NotImplementedError

    def evaluate_output(self, output: ModelOutput, target: Tensor) -> LossOutput:
        """:meth:`evaluate` on what this loss consumes from a model output (tensor or mapping)."""
        return self.evaluate(select_input(output, self.input_kind, type(self).__name__), target)  # type: ignore[arg-type]

    def forward_output(self, output: ModelOutput, target: Tensor) -> Tensor:
        """:meth:`forward` on what this loss consumes from a model output (tensor or mapping)."""
        return self(select_input(output, self.input_kind, type(self).__name__), target)  # type: ignore[arg-type]

    def scores(self, output: ModelOutput) -> Tensor | None:
        """The class scores whose softmax (or sigmoid) is this loss's view of the model's probabilities:
        what predictions rank classes by, and what calibration reads. The model's logits; ``None`` for a
        loss without class probabilities (center loss)."""
        return select_input(output, "logits", type(self).__name__) if self.input_kind == "logits" else None

    def set_class_counts(self, class_counts: Sequence[int] | Tensor) -> None:
        """Resolve weights given as a strategy (``alpha="inverse_frequency"``) from training class counts.

        A no-op for losses without such weights, and for weights already resolved (or loaded from a
        checkpoint), except that the counts are checked (whole numbers >= 0): bad counts are an error
        wherever they are given.
        """
        check_class_counts(class_counts)

    @property
    def needs_class_counts(self) -> bool:
        """Whether :meth:`set_class_counts` must be called before the loss can be evaluated."""
        return False

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which training epoch runs (0-based); :class:`~lossplug.mixin.LossMixin` calls it at
        every training step. A no-op, except for losses with a schedule over epochs."""

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights resolved from class counts are empty (None) buffers until resolved: take their shape
        # from the checkpoint, so that a saved run loads into a freshly configured loss
        for name, buffer in self._buffers.items():
            key = prefix + name
            if buffer is None and key in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> BaseLoss:
        super()._apply(fn, recurse)
        # class weights and alphas stay float32 under .half() / .to(torch.bfloat16): summed over a
        # large batch in 16 bits, the denominator of "mean" overflows to inf
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.dtype in (torch.float16, torch.bfloat16):
                self._buffers[name] = buffer.float()
        return self

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.init_args.items() if not isinstance(value, nn.Module))


def _recording_init_args(init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: BaseLoss, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))
        # the outermost __init__ finishes last, so the most derived class's arguments are kept
        self.__dict__["init_args"] = arguments

    return __init__


class ClassWeightedLoss(BaseLoss):
    """A multi-class loss with per-class ``alpha`` weights, given or resolved from class counts."""

    alpha: Tensor | None

    def _register_alpha(self, alpha: ClassWeight | AlphaStrategy | None, beta: float | None, *, required: bool) -> None:
        """Register the ``alpha`` buffer (``None`` until resolved, for a strategy) and resolve ``beta``.

        ``beta`` is only the ``"effective_number"`` parameter: given with anything else it would do
        nothing, so that is an error. ``None`` means :data:`DEFAULT_BETA` there.
        """
        self.alpha_strategy: AlphaStrategy | None = None
        if isinstance(alpha, str):
            if alpha not in ("inverse_frequency", "effective_number"):
                raise ValueError(
                    "Expected argument `alpha` to be one weight per class or one of "
                    f"['inverse_frequency', 'effective_number'], but got {alpha!r}."
                )
            self.alpha_strategy = alpha  # type: ignore[assignment]
            weight = None
        else:
            if required and alpha is None:
                raise ValueError(
                    "Expected argument `alpha` to be one weight per class, 'inverse_frequency' or "
                    "'effective_number', but got None."
                )
            weight = as_class_weight("alpha", alpha)
        checked_beta = None if beta is None else check_number("beta", beta, 0.0, 1.0, high_closed=False)
        self.beta: float | None = None
        if self.alpha_strategy == "effective_number":
            self.beta = DEFAULT_BETA if checked_beta is None else checked_beta
        elif checked_beta is not None:
            given = f"alpha={alpha!r}" if alpha is None or isinstance(alpha, str) else "per-class alpha weights"
            raise ValueError(
                f"Expected argument `beta` to be None with {given}, but got {beta!r}: beta is the parameter of "
                "alpha='effective_number' and does nothing otherwise. Drop `beta`, or use alpha='effective_number'."
            )
        self.register_buffer("alpha", weight)

    @property
    def needs_class_counts(self) -> bool:
        return self.alpha_strategy is not None and self.alpha is None

    def set_class_counts(self, class_counts: Sequence[int] | Tensor) -> None:
        check_class_counts(class_counts)
        if self.needs_class_counts:
            assert self.alpha_strategy is not None  # narrowed by needs_class_counts, for mypy
            beta = DEFAULT_BETA if self.beta is None else self.beta  # unused by "inverse_frequency"
            weight = class_weights_from_counts(class_counts, self.alpha_strategy, beta)
            self.alpha = weight.to(self._device())

    def _device(self) -> torch.device:
        tensors = [*self.parameters(), *(b for b in self.buffers() if b is not None)]
        return tensors[0].device if tensors else torch.device("cpu")

    def _resolved_alpha(self) -> Tensor | None:
        if self.needs_class_counts:
            raise RuntimeError(
                f"{type(self).__name__}(alpha={self.alpha_strategy!r}) is resolved from the training data's "
                "class counts: call `loss.set_class_counts(counts)` first (LossMixin does this when training "
                "starts, from the data module's `class_counts`)."
            )
        return self.alpha


class ClassCountsLoss(BaseLoss):
    """A loss whose per-class buffers are computed once from the training class counts.

    The counts are given to the constructor (``class_counts``), or later to :meth:`set_class_counts`,
    which :class:`~lossplug.mixin.LossMixin` calls at its first step with the data module's
    ``class_counts``. Until then the buffers are ``None`` (not in the ``state_dict``) and
    :attr:`needs_class_counts` is True. A checkpoint loads into a freshly configured loss, and buffers
    resolved after ``.to(device)`` are created on that device.

    Subclasses list their buffers in ``_count_buffers`` (the first one tells whether the counts are
    known) and compute them in :meth:`_buffers_from_counts`.
    """

    _count_buffers: ClassVar[tuple[str, ...]]
    _device_tracker: Tensor

    def _init_class_counts(self, class_counts: ClassCounts | None) -> None:
        # a scalar that .to() moves along (not saved): buffers resolved later are created where it is.
        # 0-d, so that nothing takes it for a per-class vector
        self.register_buffer("_device_tracker", torch.zeros(()), persistent=False)
        for name in self._count_buffers:
            self.register_buffer(name, None)
        if class_counts is not None:
            self._resolve(class_counts)

    @property
    def needs_class_counts(self) -> bool:
        return getattr(self, self._count_buffers[0]) is None

    def set_class_counts(self, class_counts: Sequence[int] | Tensor) -> None:
        """Compute the buffers from the training class counts; once they are known (given to the
        constructor, set before, or loaded from a checkpoint) the counts are only checked."""
        super().set_class_counts(class_counts)
        if self.needs_class_counts:
            self._resolve(class_counts)

    def _buffers_from_counts(self, class_counts: ClassCounts) -> dict[str, Tensor]:
        raise NotImplementedError

    def _resolve(self, class_counts: ClassCounts) -> None:
        tracker = self._device_tracker
        for name, value in self._buffers_from_counts(class_counts).items():
            setattr(self, name, value.to(tracker.device, tracker.dtype))

    def _resolved(self, name: str) -> Tensor:
        buffer = getattr(self, name)
        if buffer is None:
            raise RuntimeError(
                f"Expected the training class counts of {type(self).__name__} to be known when it is evaluated, but "
                "got none: pass `class_counts=[...]` (training samples per class) to the constructor, or call "
                "`loss.set_class_counts(counts)` first (LossMixin does this at its first step, from the data "
                "module's `class_counts`)."
            )
        return buffer

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # unresolved buffers take the checkpoint's shape, on the device and dtype this module was moved to
        tracker = self._device_tracker
        for name in self._count_buffers:
            key = prefix + name
            if self._buffers.get(name) is None and key in state_dict:
                self._buffers[name] = torch.empty(state_dict[key].shape, device=tracker.device, dtype=tracker.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
