"""Every loss module under ``torch.func``: per-sample gradients with ``functional_call`` and ``vmap(grad(f))``.

The way DP-SGD libraries use a module: the loss's own parameters (ArcFace's class weights, the centers)
are passed in with ``functional_call``, and the gradients with respect to the input and to them are
compared with a loop of ordinary autograd gradients, one sample at a time. Modules run with their
default arguments (plus what they require), and a few configured ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from lossplug.losses import (
    ArcFaceLoss,
    BalancedCrossEntropyLoss,
    BaseLoss,
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    CenterLoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedSum,
)
from lossplug.losses.base import ModelOutput

N, C, D = 5, 4, 3


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits() -> Tensor:
    return 3 * torch.randn(N, C, generator=_generator(0), dtype=torch.float64)


def embeddings() -> Tensor:
    return torch.randn(N, D, generator=_generator(1), dtype=torch.float64)


def logits_and_embeddings() -> dict[str, Tensor]:
    return {"logits": logits(), "embeddings": embeddings()}


def class_indices() -> Tensor:
    return torch.tensor([0, 3, 1, 3, 2])


def hard_targets() -> Tensor:
    return (torch.rand(N, C, generator=_generator(2), dtype=torch.float64) > 0.6).double()


@dataclass(frozen=True)
class Case:
    make: Callable[[], BaseLoss]
    input: Callable[[], ModelOutput]
    target: Callable[[], Tensor]


CASES: dict[str, Case] = {
    "cross_entropy": Case(CrossEntropyLoss, logits, class_indices),
    "cross_entropy_weighted": Case(lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 3.0]), logits, class_indices),
    "balanced_cross_entropy": Case(lambda: BalancedCrossEntropyLoss(alpha=[0.5, 1.0, 2.0, 4.0]), logits, class_indices),
    "binary_cross_entropy": Case(BinaryCrossEntropyLoss, logits, hard_targets),
    "binary_cross_entropy_pos_weight": Case(lambda: BinaryCrossEntropyLoss(pos_weight=2.0), logits, hard_targets),
    "focal": Case(FocalLoss, logits, class_indices),
    "focal_alpha": Case(lambda: FocalLoss(gamma=0.5, alpha=[1.0, 2.0, 3.0, 4.0]), logits, class_indices),
    "binary_focal": Case(BinaryFocalLoss, logits, hard_targets),
    "binary_focal_positives": Case(lambda: BinaryFocalLoss(normalization="positives"), logits, hard_targets),
    "arcface": Case(lambda: ArcFaceLoss(C, D), embeddings, class_indices),
    "center": Case(lambda: CenterLoss(C, D), embeddings, class_indices),
    "center_moving_average_eval": Case(
        lambda: CenterLoss(C, D, update="moving_average").eval(), embeddings, class_indices
    ),
    "weighted_sum": Case(
        lambda: WeightedSum({"ce": CrossEntropyLoss(), "arcface": ArcFaceLoss(C, D), "center": CenterLoss(C, D)}),
        logits_and_embeddings,
        class_indices,
    ),
}


def build(case: Case) -> BaseLoss:
    torch.manual_seed(0)  # ArcFace weights and centers are initialized randomly
    return case.make().double()


def _sample(output: ModelOutput, i: int) -> ModelOutput:
    if isinstance(output, Tensor):
        return output[i : i + 1]
    return {key: value[i : i + 1] for key, value in output.items()}


def _unsqueezed(output: ModelOutput) -> ModelOutput:
    if isinstance(output, Tensor):
        return output.unsqueeze(0)
    return {key: value.unsqueeze(0) for key, value in output.items()}


def _leaves(output: ModelOutput) -> dict[str, Tensor]:
    return {"": output} if isinstance(output, Tensor) else dict(output)


def loop_per_sample_grads(loss: BaseLoss, output: ModelOutput, target: Tensor) -> dict[str, Tensor]:
    """Gradients of each sample's loss with respect to the input(s) and the loss's parameters, by autograd."""
    params = dict(loss.named_parameters())
    per_sample: list[dict[str, Tensor]] = []
    for i in range(target.shape[0]):
        sample = {key: value.clone().requires_grad_() for key, value in _leaves(_sample(output, i)).items()}
        model_output = sample.get("", sample)
        value = loss(model_output, target[i : i + 1])
        wrt = {**{f"input.{k}": v for k, v in sample.items()}, **params}
        grads = torch.autograd.grad(value, list(wrt.values()), allow_unused=True)
        per_sample.append(
            {name: torch.zeros_like(t) if g is None else g for (name, t), g in zip(wrt.items(), grads, strict=True)}
        )
    return {
        name: torch.cat([g[name] for g in per_sample])
        if name.startswith("input.")
        else torch.stack([g[name] for g in per_sample])
        for name in per_sample[0]
    }


def vmap_per_sample_grads(loss: BaseLoss, output: ModelOutput, target: Tensor) -> dict[str, Tensor]:
    """The same gradients with ``vmap(grad(f))`` over ``functional_call`` (WeightedSum's forward takes a mapping)."""
    params = {name: p.detach() for name, p in loss.named_parameters()}

    def one_sample(params: dict[str, Tensor], output_i: ModelOutput, target_i: Tensor) -> Tensor:
        return functional_call(loss, params, (_unsqueezed(output_i), target_i.unsqueeze(0)), strict=False)

    param_grads, input_grads = vmap(grad(one_sample, argnums=(0, 1)), in_dims=(None, 0, 0))(params, output, target)
    return {**{f"input.{k}": v for k, v in _leaves(input_grads).items()}, **param_grads}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_per_sample_gradients_match_a_loop_of_autograd(case: Case) -> None:
    loss, output, target = build(case), case.input(), case.target()
    expected = loop_per_sample_grads(loss, output, target)
    got = vmap_per_sample_grads(loss, output, target)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_grad_through_functional_call_matches_autograd(case: Case) -> None:
    loss, output, target = build(case), case.input(), case.target()
    params = dict(loss.named_parameters())
    leaves = {key: value.clone().requires_grad_() for key, value in _leaves(output).items()}
    model_output = leaves.get("", leaves)
    expected = torch.autograd.grad(loss(model_output, target), [*leaves.values(), *params.values()])

    def batch_loss(params: dict[str, Tensor], output: ModelOutput) -> Tensor:
        return functional_call(loss, params, (output, target), strict=False)

    detached = {k: v.detach() for k, v in params.items()}
    param_grads, input_grads = grad(batch_loss, argnums=(0, 1))(detached, output)
    got = [*_leaves(input_grads).values(), *param_grads.values()]
    for got_grad, expected_grad in zip(got, expected, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-12)
