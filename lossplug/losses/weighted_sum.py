"""A weighted sum of losses, each fed what it consumes from the model output."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lossplug.losses.base import BaseLoss, ModelOutput, select_input
from lossplug.output import LossOutput


class WeightedSum(BaseLoss):
    r"""The loss :math:`\sum_k w_k \cdot \mathrm{term}_k`, e.g. cross-entropy + 0.01 · center loss.

    Each term receives what it consumes (:attr:`BaseLoss.input_kind`) from the model output: pass a
    mapping with ``"logits"`` and/or ``"embeddings"``. A single tensor is accepted only when every
    term consumes the same kind. All terms get the same target.

    The output's ``per_sample`` is :math:`\sum_k w_k \ell_{k,i}`; ``p_t``, ``target`` and ``task`` come
    from the first term that gives class probabilities (center loss gives none), ``valid`` is where
    every term's sample counts, and ``terms`` holds each term's own output scaled by its weight (its
    contribution to the total).

    Args:
        terms: Named losses, in order.
        weights: Weight of each term (finite, >= 0); the same names as ``terms``. ``None`` weighs
            every term 1.

    Example:
        >>> from lossplug.losses import CenterLoss, CrossEntropyLoss
        >>> loss = WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(3, 2)}, {"ce": 1.0, "center": 0.01})
        >>> output = {"logits": torch.zeros(2, 3), "embeddings": torch.zeros(2, 2)}
        >>> out = loss.evaluate_output(output, torch.tensor([0, 2]))
        >>> sorted(out.terms), out.per_sample.shape
        (['ce', 'center'], torch.Size([2]))
    """

    input_kind = "mixed"

    def __init__(self, terms: Mapping[str, BaseLoss], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(f"Expected argument `terms` to be a non-empty mapping of name to loss, but got {terms!r}.")
        for name, term in terms.items():
            if not isinstance(term, BaseLoss):
                raise TypeError(
                    f"Expected every term to be a lossplug loss (they give per-sample losses), but term "
                    f"{name!r} is {type(term).__name__}."
                )
        weights = dict.fromkeys(terms, 1.0) if weights is None else dict(weights)
        if set(weights) != set(terms):
            raise ValueError(
                f"Expected argument `weights` to name the same terms as `terms` {sorted(terms)}, "
                f"but got {sorted(weights)}."
            )
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"Expected the weight of term {name!r} to be a finite number >= 0, but got {weight!r}.")
        target_kinds = {name: term.target_kind for name, term in terms.items()}
        if len(set(target_kinds.values())) > 1:
            raise ValueError(
                f"Expected every WeightedSum term to take the same kind of target (they share it), but got {target_kinds}."
            )
        self.target_kind = next(iter(target_kinds.values()))
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights[name]) for name in terms}

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return self.evaluate_output(input, target)

    def evaluate_output(self, output: ModelOutput, target: Tensor) -> LossOutput:
        if isinstance(output, Tensor):
            kinds = {term.input_kind for term in self._terms().values()}
            if len(kinds) > 1:
                raise ValueError(
                    f"WeightedSum terms consume {sorted(kinds)} (a tensor is one of them): return a mapping with "
                    "'logits' and 'embeddings' from the model."
                )
        term_outputs = {}
        for name, term in self._terms().items():
            term_input = select_input(output, term.input_kind, f"WeightedSum term {name!r} ({type(term).__name__})")  # type: ignore[arg-type]
            term_outputs[name] = _scaled(term.evaluate(term_input, target), self.weights[name])
        scaled = list(term_outputs.values())
        shapes = {tuple(out.per_sample.shape) for out in scaled}
        if len(shapes) > 1:
            raise ValueError(
                f"Expected every WeightedSum term to give per-sample losses of one shape, but got "
                f"{ {name: tuple(out.per_sample.shape) for name, out in term_outputs.items()} }."
            )
        primary = next((out for out in scaled if out.p_t is not None), scaled[0])
        valid = scaled[0].valid
        for out in scaled[1:]:
            valid = valid & out.valid
        return LossOutput(
            loss=torch.stack([out.loss for out in scaled]).sum(dim=0) if len(scaled) > 1 else scaled[0].loss,
            per_sample=torch.stack([out.per_sample for out in scaled]).sum(dim=0),
            p_t=primary.p_t,
            valid=valid,
            target=primary.target,
            task=primary.task,
            num_classes=primary.num_classes,
            terms=term_outputs,
        )

    def forward(self, input: ModelOutput, target: Tensor) -> Tensor:  # type: ignore[override]
        return self.evaluate_output(input, target).loss

    def forward_output(self, output: ModelOutput, target: Tensor) -> Tensor:
        return self.evaluate_output(output, target).loss

    def _terms(self) -> dict[str, BaseLoss]:
        return dict(self.terms.items())  # type: ignore[arg-type]

    def scores(self, output: ModelOutput) -> Tensor | None:
        """The first term's scores that has any (center loss has none)."""
        for term in self._terms().values():
            scores = term.scores(output)
            if scores is not None:
                return scores
        return None

    def set_class_counts(self, class_counts: Sequence[int] | Tensor) -> None:
        for term in self._terms().values():
            term.set_class_counts(class_counts)

    @property
    def needs_class_counts(self) -> bool:
        return any(term.needs_class_counts for term in self._terms().values())

    def set_epoch(self, epoch: int) -> None:
        for term in self._terms().values():
            term.set_epoch(epoch)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def _scaled(output: LossOutput, weight: float) -> LossOutput:
    return output._replace(loss=output.loss * weight, per_sample=output.per_sample * weight)
