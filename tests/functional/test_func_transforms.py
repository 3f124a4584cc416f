"""Every loss function under ``torch.func``: ``grad``, ``vmap`` and per-sample gradients ``vmap(grad(f))``.

Per-sample gradients (as DP-SGD libraries compute them) are compared with a loop of ordinary autograd
gradients, one sample at a time, through the eager path (closed-form gradients, chunked kernels); the
transformed calls take the whole-tensor path. Inputs are float64, so the two paths agree closely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.func import grad, vmap

from lossplug.functional import (
    arcface_loss,
    balanced_cross_entropy,
    binary_cross_entropy,
    binary_focal_loss,
    center_loss,
    cross_entropy,
    focal_loss,
)
from lossplug.shared_checks import functorch_transform_active, is_traced

N, C, D = 5, 4, 3


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits() -> Tensor:
    return 3 * torch.randn(N, C, generator=_generator(0), dtype=torch.float64)


def class_indices() -> Tensor:
    return torch.tensor([0, 3, 1, 3, 2])


def hard_targets() -> Tensor:
    return (torch.rand(N, C, generator=_generator(1), dtype=torch.float64) > 0.6).double()


def soft_targets() -> Tensor:
    return torch.rand(N, C, generator=_generator(2), dtype=torch.float64)


def class_probabilities() -> Tensor:
    return soft_targets().softmax(dim=1)


def features() -> Tensor:
    return torch.randn(N, D, generator=_generator(3), dtype=torch.float64)


def class_vectors() -> Tensor:
    return torch.randn(C, D, generator=_generator(4), dtype=torch.float64)


@dataclass(frozen=True)
class Case:
    """A loss of ``(input, target, *extra)``: the per-sample input and target, and extra inputs shared by
    every sample (ArcFace's class weights, the centers), which the gradients are also taken with respect to."""

    loss: Callable[..., Tensor]
    input: Callable[[], Tensor]
    target: Callable[[], Tensor]
    extra: Callable[[], tuple[Tensor, ...]] = tuple


CASES: dict[str, Case] = {
    "cross_entropy": Case(cross_entropy, logits, class_indices),
    "cross_entropy_weighted_smoothed": Case(
        lambda x, y: cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=x.dtype), label_smoothing=0.1),
        logits,
        class_indices,
    ),
    "cross_entropy_probabilities": Case(cross_entropy, logits, class_probabilities),
    "balanced_cross_entropy": Case(
        lambda x, y: balanced_cross_entropy(x, y, [0.5, 1.0, 2.0, 4.0]), logits, class_indices
    ),
    "binary_cross_entropy": Case(binary_cross_entropy, logits, soft_targets),
    "focal": Case(focal_loss, logits, class_indices),
    "focal_gamma_0.5_alpha": Case(
        lambda x, y: focal_loss(x, y, gamma=0.5, alpha=[1.0, 2.0, 3.0, 4.0]), logits, class_indices
    ),
    "binary_focal": Case(binary_focal_loss, logits, hard_targets),
    "binary_focal_soft_positives": Case(
        lambda x, y: binary_focal_loss(x, y, gamma=0.5, normalization="positives"), logits, soft_targets
    ),
    "arcface": Case(arcface_loss, features, class_indices, lambda: (class_vectors(),)),
    "arcface_easy_margin": Case(
        lambda e, y, w: arcface_loss(e, y, w, scale=8.0, easy_margin=True),
        features,
        class_indices,
        lambda: (class_vectors(),),
    ),
    "center": Case(center_loss, features, class_indices, lambda: (class_vectors(),)),
}


def loop_per_sample_grads(loss: Callable[..., Tensor], x: Tensor, y: Tensor, extra: Sequence[Tensor]) -> list[Tensor]:
    """d loss(x_i, y_i) / d (x_i, *extra) for each sample, by ordinary autograd, one sample at a time."""
    grads = []
    for i in range(x.shape[0]):
        inputs = [x[i : i + 1].clone().requires_grad_(), *(e.clone().requires_grad_() for e in extra)]
        value = loss(inputs[0], y[i : i + 1], *inputs[1:])
        grads.append(torch.autograd.grad(value, inputs))
    return [torch.cat([g[0] for g in grads]), *(torch.stack([g[k] for g in grads]) for k in range(1, len(extra) + 1))]


def vmap_per_sample_grads(loss: Callable[..., Tensor], x: Tensor, y: Tensor, extra: Sequence[Tensor]) -> list[Tensor]:
    """The same per-sample gradients with ``vmap(grad(f))``: each sample a batch of one inside the transform."""

    def one_sample(x_i: Tensor, y_i: Tensor, *shared: Tensor) -> Tensor:
        return loss(x_i.unsqueeze(0), y_i.unsqueeze(0), *shared)

    argnums = tuple(k for k in range(len(extra) + 2) if k != 1)  # not the target
    in_dims = (0, 0, *([None] * len(extra)))
    return list(vmap(grad(one_sample, argnums=argnums), in_dims=in_dims)(x, y, *extra))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_per_sample_gradients_match_a_loop_of_autograd(case: Case) -> None:
    x, y, extra = case.input(), case.target(), case.extra()
    expected = loop_per_sample_grads(case.loss, x, y, extra)
    got = vmap_per_sample_grads(case.loss, x, y, extra)
    assert len(got) == len(expected)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_grad_of_the_batch_loss_matches_autograd(case: Case) -> None:
    x, y, extra = case.input(), case.target(), case.extra()
    inputs = [x.clone().requires_grad_(), *(e.clone().requires_grad_() for e in extra)]
    expected = torch.autograd.grad(case.loss(inputs[0], y, *inputs[1:]), inputs)
    argnums = tuple(k for k in range(len(extra) + 2) if k != 1)
    got = grad(case.loss, argnums=argnums)(x, y, *extra)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_vmap_gives_the_per_sample_losses(case: Case) -> None:
    x, y, extra = case.input(), case.target(), case.extra()
    expected = torch.stack([case.loss(x[i : i + 1], y[i : i + 1], *extra) for i in range(x.shape[0])])

    def one_sample(x_i: Tensor, y_i: Tensor) -> Tensor:
        return case.loss(x_i.unsqueeze(0), y_i.unsqueeze(0), *extra)

    torch.testing.assert_close(vmap(one_sample)(x, y), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_per_sample_gradients_at_saturated_logits_are_finite(gamma: float) -> None:
    # the closed-form gradients keep (1 - p_t)^gamma finite at p_t = 1 under the transforms as well
    x = torch.tensor([[200.0, 0.0, -200.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for loss, target in (
        (lambda x, y: focal_loss(x, y, gamma=gamma), y),
        (lambda x, y: binary_focal_loss(x, y, gamma=gamma), t),
    ):
        (got,) = vmap_per_sample_grads(loss, x, target, ())
        assert bool(torch.isfinite(got).all())
        (expected,) = loop_per_sample_grads(loss, x, target, ())
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_second_order_grad_matches_autograd() -> None:
    # grad of grad goes through the Functions' backward, written with differentiable operations
    x, y = logits(), class_indices()
    for loss in (
        focal_loss,
        lambda x, y: binary_focal_loss(x, hard_targets()),
        lambda x, y: focal_loss(x, y, gamma=0.5),
    ):
        leaf = x.clone().requires_grad_()
        (first,) = torch.autograd.grad(loss(leaf, y), leaf, create_graph=True)
        (expected,) = torch.autograd.grad(first.sum(), leaf)
        got = grad(lambda x, loss=loss: grad(loss)(x, y).sum())(x)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_value_checks_step_aside_under_transforms_only() -> None:
    x, y = logits(), class_indices()
    assert not functorch_transform_active()
    assert not is_traced()
    seen = []

    def probe(x: Tensor) -> Tensor:
        seen.append((functorch_transform_active(), is_traced()))
        return cross_entropy(x, y)

    grad(probe)(x)
    vmap(probe)(torch.stack([x, x]))
    assert seen == [(True, True), (True, True)]
    # outside a transform, a bad target value is still an error
    with pytest.raises(ValueError, match="class index to be in"):
        cross_entropy(x, torch.tensor([0, 9, 1, 1, 1]))
