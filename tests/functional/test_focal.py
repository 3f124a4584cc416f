"""Softmax and sigmoid focal loss against plain float64 references and torch's cross-entropy."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional import binary_focal_loss, binary_focal_loss_output, focal_loss, focal_loss_output
from tests.helpers import (
    HALF_DTYPES,
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_multiclass_output,
    assert_raises_message,
    ignore_kwargs,
    make_logits,
    make_target,
    parametrize_error_cases,
    reduce,
)

SHAPES = {"2d": (8, 4), "4d": (2, 3, 3, 2)}
IGNORE = {"no_ignore": None, "ignore_-100": -100, "ignore_class_1": 1}
GAMMAS = [0.0, 0.25, 0.5, 1.0, 2.0, 5.0]
REGIMES = {"tiny": 1e-3, "unit": 1.0, "large": 10.0, "saturated": 30.0}
EPS64 = torch.finfo(torch.float64).eps


def make_alpha(num_classes: int) -> list[float]:
    # exactly representable in float32, so the float32 alpha buffer loses nothing
    return [0.25, 0.5, 0.75, 1.0, 0.125][:num_classes]


def one_minus_p_t(logits: Tensor, target: Tensor) -> Tensor:
    """1 - p_t written as the sum of the other classes' probabilities (no cancellation near p_t = 1)."""
    probs = logits.softmax(dim=1)
    others = 1 - F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    return (probs * others).sum(dim=1)


def focal_reference(
    logits: Tensor,
    target: Tensor,
    gamma: float,
    alpha: list[float] | None,
    ignore_index: int | None,
    reduction: str,
) -> Tensor:
    """-alpha_y (1 - p_t)^gamma log p_t in float64; mean divides by the sum of alpha over counted samples."""
    logits = logits.double()
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p_t = logits.log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    weight = torch.ones_like(log_p_t) if alpha is None else torch.tensor(alpha, dtype=torch.float64)[safe]
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    per_sample = -weight * one_minus_p_t(logits, safe) ** gamma * log_p_t
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / weight.sum()


def binary_focal_reference(logits: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """Element-wise alpha_t (1 - p_t)^gamma BCE in float64."""
    x, t = logits.double(), target.double()
    # 1 - p_t from sigmoid(-x) and sigmoid(x), never 1 - sigmoid(x) (exact for saturated logits)
    one_minus = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    bce = -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * one_minus**gamma * bce


# -- softmax focal: identities and reference ---------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gamma_0_equals_weighted_cross_entropy(
    shape: tuple[int, ...], reduction: str, with_alpha: bool, ignore_index: int | None
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    alpha = make_alpha(shape[1]) if with_alpha else None
    kwargs = ignore_kwargs(ignore_index)
    weight = None if alpha is None else torch.tensor(alpha, dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=weight, reduction=reduction, **kwargs)
    got = focal_loss(logits, target, gamma=0.0, alpha=alpha, reduction=reduction, **kwargs)
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [[1.0, 2.0, 5.0], torch.tensor([0.0, 4.0, 10.0])], ids=["list", "tensor"])
def test_multiclass_alpha_takes_any_finite_non_negative_weights(alpha: list[float] | Tensor) -> None:
    # per-class weights like torch's `weight`, not probabilities: at gamma=0 focal is weighted cross-entropy
    logits = make_logits((6, 3)).requires_grad_()
    target = make_target((6, 3))
    weight = torch.as_tensor(alpha, dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=weight)
    assert_close_with_grad(focal_loss(logits, target, gamma=0.0, alpha=alpha), expected, logits, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("gamma", GAMMAS, ids=[f"gamma_{g}" for g in GAMMAS])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_focal_matches_float64_reference(
    shape: tuple[int, ...], gamma: float, with_alpha: bool, ignore_index: int | None
) -> None:
    logits = make_logits(shape)
    target = make_target(shape, ignore_index)
    alpha = make_alpha(shape[1]) if with_alpha else None
    kwargs = ignore_kwargs(ignore_index)
    for reduction in REDUCTIONS:
        expected = focal_reference(logits, target, gamma, alpha, ignore_index, reduction)
        got = focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction=reduction, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=lambda m, r=reduction: f"{r}: {m}")
        # float32 input: the same values to float32 accuracy
        got32 = focal_loss(logits.float(), target, gamma=gamma, alpha=alpha, reduction=reduction, **kwargs)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(
            got32.double(), expected, rtol=1e-5, atol=1e-6, msg=lambda m, r=reduction: f"{r}: {m}"
        )


@pytest.mark.parametrize("gamma", [0.5, 2.0], ids=["gamma_0.5", "gamma_2"])
def test_focal_gradient_matches_float64_reference(gamma: float) -> None:
    logits = make_logits((8, 4)).requires_grad_()
    target = make_target((8, 4), ignore_index=-100)
    alpha = make_alpha(4)
    (expected,) = torch.autograd.grad(focal_reference(logits, target, gamma, alpha, -100, "mean"), logits)
    (got,) = torch.autograd.grad(focal_loss(logits, target, gamma=gamma, alpha=alpha), logits)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0], ids=["gamma_0.5", "gamma_2", "gamma_5"])
@pytest.mark.parametrize("scale", REGIMES.values(), ids=REGIMES.keys())
def test_focal_over_cross_entropy_is_alpha_t_times_modulation(scale: float, gamma: float) -> None:
    logits = make_logits((64, 5), seed=4, scale=scale)
    target = make_target((64, 5), seed=5)
    alpha = make_alpha(5)
    focal = focal_loss_output(logits, target, gamma=gamma, alpha=alpha, reduction="none").per_sample
    cross_entropy = F.cross_entropy(logits, target, reduction="none")
    one_minus = one_minus_p_t(logits, target)
    expected = torch.tensor(alpha, dtype=torch.float64)[target] * one_minus**gamma
    counted = cross_entropy > 0
    ratio = focal[counted] / cross_entropy[counted]
    # log p_t from log_softmax has an absolute error of a few ulps, so 1 - p_t recovered from it is
    # only as exact as that allows when it is itself a few ulps (saturated, p_t -> 1)
    tolerance = 1e-9 + gamma * 8 * EPS64 / one_minus[counted]
    assert bool(((ratio - expected[counted]).abs() <= tolerance * expected[counted]).all())
    strict = one_minus[counted] > 1e-6
    assert int(strict.sum()) > 16  # most elements are checked to 1e-8 relative
    torch.testing.assert_close(ratio[strict], expected[counted][strict], rtol=1e-8, atol=0)
    # where cross-entropy rounds to 0 (p_t == 1 in float64) the focal loss is 0 too
    assert bool((focal[~counted] == 0).all())


def test_focal_output_fields() -> None:
    shape = (2, 3, 3, 2)
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index=-100)
    out = focal_loss_output(logits, target, gamma=2.0, alpha=make_alpha(3))
    expected_p_t = logits.detach().softmax(dim=1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    assert_multiclass_output(out, target, target != -100, expected_p_t, num_classes=3)


# -- sigmoid focal ----------------------------------------------------------------------------------------


BINARY_SHAPES = {"1d": (9,), "2d": (6, 3), "4d": (2, 3, 2, 2)}


@pytest.mark.parametrize("soft", [False, True], ids=["hard_targets", "soft_targets"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", BINARY_SHAPES.values(), ids=BINARY_SHAPES.keys())
def test_binary_gamma_0_no_alpha_equals_bce_with_logits(shape: tuple[int, ...], reduction: str, soft: bool) -> None:
    generator = torch.Generator().manual_seed(6)
    logits = (4 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    target = target if soft else (target > 0.5).double()
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    got = binary_focal_loss(logits, target, gamma=0.0, alpha=None, reduction=reduction)
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("soft", [False, True], ids=["hard_targets", "soft_targets"])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9], ids=["no_alpha", "alpha_0.25", "alpha_0.9"])
@pytest.mark.parametrize("gamma", GAMMAS, ids=[f"gamma_{g}" for g in GAMMAS])
def test_binary_focal_matches_float64_reference(gamma: float, alpha: float | None, soft: bool) -> None:
    generator = torch.Generator().manual_seed(7)
    logits = (4 * torch.randn(6, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.rand(6, 3, generator=generator, dtype=torch.float64)
    target = target if soft else (target > 0.5).double()
    reference = binary_focal_reference(logits, target, gamma, alpha)
    for reduction in REDUCTIONS:
        expected = reduce(reference, reduction)
        got = binary_focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction=reduction)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=lambda m, r=reduction: f"{r}: {m}")
        (expected_grad,) = torch.autograd.grad(expected.sum(), logits, retain_graph=True)
        (got_grad,) = torch.autograd.grad(got.sum(), logits)
        torch.testing.assert_close(
            got_grad, expected_grad, rtol=1e-9, atol=1e-12, msg=lambda m, r=reduction: f"{r}: {m}"
        )


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0], ids=["gamma_0.5", "gamma_2", "gamma_5"])
@pytest.mark.parametrize("scale", REGIMES.values(), ids=REGIMES.keys())
def test_binary_focal_over_bce_is_alpha_t_times_modulation(scale: float, gamma: float) -> None:
    generator = torch.Generator().manual_seed(8)
    logits = scale * torch.randn(16, 4, generator=generator, dtype=torch.float64)
    target = torch.rand(16, 4, generator=generator, dtype=torch.float64)
    target[:8] = (target[:8] > 0.5).double()  # half hard, half soft targets
    alpha = 0.25
    focal = binary_focal_loss_output(logits, target, gamma=gamma, alpha=alpha, reduction="none").per_sample
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    one_minus = target * torch.sigmoid(-logits) + (1 - target) * torch.sigmoid(logits)
    expected = (alpha * target + (1 - alpha) * (1 - target)) * one_minus**gamma
    counted = bce > 0
    torch.testing.assert_close(focal[counted] / bce[counted], expected[counted], rtol=1e-9, atol=0)
    assert bool((focal[~counted] == 0).all())


@pytest.mark.parametrize("gamma", [0.0, 2.0], ids=["gamma_0", "gamma_2"])
@pytest.mark.parametrize(
    "target",
    [
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
        torch.zeros(2, 3),
        torch.tensor([[0.5, 0.0, 0.25], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.3, 0.0, 0.2], [0.0, 0.9, 0.0]]),
    ],
    ids=["three_positives", "no_positives", "soft_sum_below_1", "soft_sum_1.4"],
)
def test_binary_focal_positives_normalization(target: Tensor, gamma: float) -> None:
    logits = make_logits((2, 3), dtype=torch.float32).requires_grad_()
    total = binary_focal_loss(logits, target, gamma=gamma, reduction="sum")
    got = binary_focal_loss(logits, target, gamma=gamma, reduction="mean", normalization="positives")
    expected = total / max(1.0, float(target.sum()))
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    # normalization only changes "mean": with another reduction "positives" would do nothing, an error
    for reduction in ("sum", "none"):
        with pytest.raises(ValueError, match=re.escape(f"with reduction={reduction!r} it has no effect")):
            binary_focal_loss(logits, target, gamma=gamma, reduction=reduction, normalization="positives")


def test_binary_focal_output_fields() -> None:
    logits = make_logits((5, 3))
    target = (make_logits((5, 3), seed=9) > 0).double()
    out = binary_focal_loss_output(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    assert out.per_sample.shape == (5, 3)
    assert out.p_t is not None
    assert out.p_t.shape == (5, 3)
    assert not out.p_t.requires_grad
    torch.testing.assert_close(out.p_t, p * target + (1 - p) * (1 - target))
    assert out.task == "binary"
    assert out.num_classes == 3
    assert out.valid.all()
    assert binary_focal_loss_output(logits[:, 0], target[:, 0]).num_classes == 1


# -- empty and all-ignored batches -----------------------------------------------------------------------


@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "case",
    [
        (torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
        (torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.long)),
        (make_logits((4, 3)), torch.full((4,), -100)),
    ],
    ids=["empty_2d", "empty_3d", "all_ignored"],
)
def test_focal_empty_or_all_ignored_is_zero(case: tuple[Tensor, Tensor], reduction: str, with_alpha: bool) -> None:
    logits, target = case[0].clone().requires_grad_(), case[1]
    loss = focal_loss(logits, target, gamma=2.0, alpha=make_alpha(3) if with_alpha else None, reduction=reduction)
    assert loss.shape == (() if reduction != "none" else target.shape)
    assert bool((loss == 0).all())
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert bool((grad == 0).all())


@pytest.mark.parametrize(
    ("reduction", "normalization"),
    [("mean", "elements"), ("sum", "elements"), ("none", "elements"), ("mean", "positives")],
)
def test_binary_focal_empty_is_zero(reduction: str, normalization: str) -> None:
    logits = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    loss = binary_focal_loss(
        logits, torch.zeros(0, 3, dtype=torch.float64), reduction=reduction, normalization=normalization
    )
    assert bool((loss == 0).all())
    assert not bool(torch.isnan(loss).any())
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.shape == (0, 3)


# -- numerics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 2.0], ids=["gamma_0.5", "gamma_2"])
def test_focal_200_logit_gap_gives_200(gamma: float) -> None:
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([1]), gamma=gamma)
    # p_t = e^-200 / (1 + ...): (1 - p_t)^gamma = 1 and -log p_t = 200
    torch.testing.assert_close(loss, torch.tensor(200.0))
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.tensor([[1.0, -1.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("gamma", [0.5, 2.0], ids=["gamma_0.5", "gamma_2"])
def test_binary_focal_200_logit_gap_gives_200(gamma: float) -> None:
    logits = torch.tensor([200.0, -200.0], requires_grad=True)
    loss = binary_focal_loss(logits, torch.tensor([0.0, 1.0]), gamma=gamma, alpha=None, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([200.0, 200.0]))
    loss.sum().backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.tensor([1.0, -1.0]))


def naive_focal(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """The textbook formula through autograd: NaN gradients at p_t = 1 for gamma < 1."""
    p_t = logits.softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-((1 - p_t) ** gamma) * p_t.log()).sum()


def naive_binary_focal(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum()


SATURATED_LOGITS = torch.tensor([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0], [100.0, -100.0, 0.0]])
SATURATED_TARGET = torch.tensor([0, 1, 2])  # two confident and right (p_t = 1 in float32), one wrong


@pytest.mark.parametrize("gamma", [0.25, 0.5], ids=["gamma_0.25", "gamma_0.5"])
def test_focal_gamma_below_1_saturated_gradients_are_finite(gamma: float) -> None:
    naive_input = SATURATED_LOGITS.clone().requires_grad_()
    naive_focal(naive_input, SATURATED_TARGET, gamma).backward()
    assert naive_input.grad is not None
    assert bool(torch.isnan(naive_input.grad).any())  # the test can fail: the naive formula gives NaN here
    logits = SATURATED_LOGITS.clone().requires_grad_()
    loss = focal_loss(logits, SATURATED_TARGET, gamma=gamma, reduction="sum")
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    # and the gradient is right: the float64 reference, with 1 - p_t as the sum of the others, is exact here
    reference_input = SATURATED_LOGITS.double().requires_grad_()
    focal_reference(reference_input, SATURATED_TARGET, gamma, None, None, "sum").backward()
    assert reference_input.grad is not None
    torch.testing.assert_close(logits.grad.double(), reference_input.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.25], ids=["no_alpha", "alpha_0.25"])
@pytest.mark.parametrize("gamma", [0.25, 0.5], ids=["gamma_0.25", "gamma_0.5"])
def test_binary_focal_gamma_below_1_saturated_gradients_are_finite(gamma: float, alpha: float | None) -> None:
    raw = torch.tensor([100.0, -100.0, 100.0, -100.0, 100.0])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5])
    naive_input = raw.clone().requires_grad_()
    naive_binary_focal(naive_input, target, gamma).backward()
    assert naive_input.grad is not None
    assert bool(torch.isnan(naive_input.grad).any())  # the naive formula gives NaN here
    logits = raw.clone().requires_grad_()
    loss = binary_focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="sum")
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    reference_input = raw.double().requires_grad_()
    binary_focal_reference(reference_input, target.double(), gamma, alpha).sum().backward()
    assert reference_input.grad is not None
    torch.testing.assert_close(logits.grad.double(), reference_input.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_focal_logits_1e4_are_finite(gamma: float) -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, -1e4, -1e4]], requires_grad=True)
    target = torch.tensor([1, 0, 0])
    loss = focal_loss(logits, target, gamma=gamma, reduction="none")
    # -log p_t: 2e4, 2e4 + log 2 (two classes share the top logit) and 0
    torch.testing.assert_close(loss, torch.tensor([2e4, 2e4 + math.log(2.0), 0.0]))
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_binary_focal_logits_1e4_are_finite(gamma: float) -> None:
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = binary_focal_loss(logits, target, gamma=gamma, alpha=None, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1e4, 1e4, 0.0, 0.0]))
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


TARGET = torch.tensor([0, 2, 1, 3, 3, 0])
LOW_PRECISION_CASES: dict[str, Callable[[Tensor], Tensor]] = {
    "focal": lambda x: focal_loss(x, TARGET, gamma=2.0, alpha=[0.25, 0.5, 0.75, 1.0]),
    "focal_gamma_0.5": lambda x: focal_loss(x, TARGET, gamma=0.5),
    "binary_focal": lambda x: binary_focal_loss(x, (torch.arange(24).view(6, 4) % 3 == 0).to(x.dtype)),
    "binary_focal_positives": lambda x: binary_focal_loss(
        x, (torch.arange(24).view(6, 4) % 3 == 0).to(x.dtype), gamma=0.5, normalization="positives"
    ),
}


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
@pytest.mark.parametrize("fn", LOW_PRECISION_CASES.values(), ids=LOW_PRECISION_CASES.keys())
def test_half_precision_inputs_match_float32(fn: Callable[[Tensor], Tensor], dtype: torch.dtype) -> None:
    logits = make_logits((6, 4), dtype=torch.float32)
    low = logits.to(dtype).requires_grad_()
    got = fn(low)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fn(low.detach().float()), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, fn(logits), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(got, low)
    assert grad.dtype == dtype
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("fn", LOW_PRECISION_CASES.values(), ids=LOW_PRECISION_CASES.keys())
def test_cpu_autocast_matches_float32(fn: Callable[[Tensor], Tensor]) -> None:
    logits = make_logits((6, 4), dtype=torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(logits)
    torch.testing.assert_close(got.float(), fn(logits), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(got, logits)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_nan_input_propagates(gamma: float) -> None:
    logits = torch.zeros(3, 3)
    logits[1, 2] = float("nan")
    assert torch.isnan(focal_loss(logits, torch.tensor([0, 1, 2]), gamma=gamma))
    assert torch.isnan(focal_loss(logits, torch.tensor([0, 1, 2]), gamma=gamma, alpha=[0.5, 0.5, 0.5]))
    for alpha in (None, 0.25):
        assert torch.isnan(binary_focal_loss(logits, torch.ones(3, 3), gamma=gamma, alpha=alpha))
        assert torch.isnan(binary_focal_loss(logits, torch.ones(3, 3), gamma=gamma, normalization="positives"))


# -- gradcheck ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_focal_gradcheck(gamma: float, with_alpha: bool) -> None:
    logits = make_logits((4, 3), scale=1.5).requires_grad_()
    target = torch.tensor([0, 2, -100, 1])
    alpha = make_alpha(3) if with_alpha else None

    def fn(x: Tensor) -> Tensor:
        return focal_loss(x, target, gamma=gamma, alpha=alpha, reduction="none")

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,), fast_mode=True)


def test_focal_gradcheck_4d() -> None:
    logits = make_logits((2, 3, 2, 2), scale=1.5).requires_grad_()
    target = make_target((2, 3, 2, 2), ignore_index=-100)
    assert gradcheck(lambda x: focal_loss(x, target, gamma=2.0, alpha=make_alpha(3)), (logits,))


@pytest.mark.parametrize("soft", [False, True], ids=["hard_targets", "soft_targets"])
@pytest.mark.parametrize("alpha", [None, 0.25], ids=["no_alpha", "alpha_0.25"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_binary_focal_gradcheck(gamma: float, alpha: float | None, soft: bool) -> None:
    generator = torch.Generator().manual_seed(10)
    logits = (2 * torch.randn(4, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.rand(4, 3, generator=generator, dtype=torch.float64)
    target = target if soft else (target > 0.5).double()

    def fn(x: Tensor) -> Tensor:
        return binary_focal_loss(x, target, gamma=gamma, alpha=alpha, reduction="none")

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,), fast_mode=True)


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])
B = torch.zeros(4, 3)

ERROR_CASES: ErrorCases = {
    "gamma_negative": (lambda: focal_loss(X, Y, gamma=-0.5), ValueError, "`gamma` to be a number >= 0, but got -0.5"),
    "gamma_nan": (
        lambda: focal_loss(X, Y, gamma=float("nan")),
        ValueError,
        "`gamma` to be a finite number >= 0, but got nan",
    ),
    "gamma_not_a_number": (lambda: focal_loss(X, Y, gamma="2"), TypeError, "`gamma` to be a number"),  # type: ignore[arg-type]
    "scalar_alpha": (
        lambda: focal_loss(X, Y, alpha=0.25),  # type: ignore[arg-type]
        ValueError,
        "`alpha` to be one weight per class (a sequence or a 1-d tensor), but got the scalar 0.25. "
        "The multi-class form takes one weight per class",
    ),
    "alpha_negative": (
        lambda: focal_loss(X, Y, alpha=torch.tensor([0.5, 0.5, -0.1])),
        ValueError,
        "every entry of `alpha` to be finite and >= 0",
    ),
    "alpha_float32_tensor_nan": (
        lambda: focal_loss(X, Y, alpha=torch.tensor([0.5, float("nan"), 0.5])),
        ValueError,
        "every entry of `alpha` to be finite and >= 0, but got nan at index 1",
    ),
    "alpha_length": (
        lambda: focal_loss(X, Y, alpha=[0.5, 0.5]),
        ValueError,
        "`alpha` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "alpha_tensor_length": (
        lambda: focal_loss(X, Y, alpha=torch.tensor([0.5, 0.5, 0.5, 0.5])),
        ValueError,
        "`alpha` to have one entry per class (3 classes in `input`), but got 4 entries",
    ),
    "float_target": (
        lambda: focal_loss(X, torch.zeros(4, 3)),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
    "batch_mismatch": (lambda: focal_loss(X, torch.tensor([0, 1])), ValueError, "`target` of shape (4,)"),
    "spatial_mismatch": (
        lambda: focal_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)),
        ValueError,
        "`target` of shape (2, 4) to match `input` of shape (2, 3, 4)",
    ),
    "class_out_of_range": (
        lambda: focal_loss(X, torch.tensor([0, 1, 3, 0])),
        ValueError,
        "`target` class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "negative_class": (
        lambda: focal_loss(X, torch.tensor([0, -2, 1, 0])),
        ValueError,
        "`target` class index to be in [0, 2] or ignore_index=-100, but got -2",
    ),
    "reduction": (
        lambda: focal_loss(X, Y, reduction="mean_positive"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'mean_positive'",
    ),
    "binary_gamma_negative": (
        lambda: binary_focal_loss(B, B, gamma=-1.0),
        ValueError,
        "`gamma` to be a number >= 0, but got -1.0",
    ),
    "binary_alpha_above_1": (
        lambda: binary_focal_loss(B, B, alpha=1.25),
        ValueError,
        "`alpha` to be a number in [0, 1], but got 1.25",
    ),
    "binary_alpha_negative": (
        lambda: binary_focal_loss(B, B, alpha=-0.25),
        ValueError,
        "`alpha` to be a number in [0, 1], but got -0.25",
    ),
    "binary_alpha_vector": (
        lambda: binary_focal_loss(B, B, alpha=[0.25, 0.75]),  # type: ignore[arg-type]
        ValueError,
        "`alpha` to be a single number in [0, 1]",
    ),
    "binary_integer_target": (
        lambda: binary_focal_loss(B, B.long()),
        TypeError,
        "`target` to be a floating-point tensor",
    ),
    "binary_shape_mismatch": (
        lambda: binary_focal_loss(B, torch.zeros(4)),
        ValueError,
        "`target` to have the same shape as `input` (4, 3), but got shape (4,)",
    ),
    "binary_target_range": (
        lambda: binary_focal_loss(B, torch.full((4, 3), 2.0)),
        ValueError,
        "`target` value to be in [0, 1], but got 2.0",
    ),
    "binary_normalization": (
        lambda: binary_focal_loss(B, B, normalization="batch"),  # type: ignore[arg-type]
        ValueError,
        "`normalization` to be one of ['elements', 'positives'], but got 'batch'",
    ),
    "binary_reduction": (
        lambda: binary_focal_loss(B, B, reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "binary_target_requires_grad": (
        lambda: binary_focal_loss(B, torch.zeros(4, 3, requires_grad=True)),
        ValueError,
        "`target` not to require grad",
    ),
    "binary_integer_input": (lambda: binary_focal_loss(B.long(), B), TypeError, "`input` to be a floating-point"),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_whole_tensor_path_matches_the_chunked_path_and_detaches_p_t(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other devices than the CPU (and torch.compile) take the whole-tensor form: same values, p_t detached."""
    from lossplug.functional import focal as focal_module

    generator = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(64, 5, generator=generator)).requires_grad_()
    target = torch.rand(64, 5, generator=generator)
    chunked = binary_focal_loss_output(logits, target, gamma=1.5, alpha=0.3, reduction="none")
    (chunked_grad,) = torch.autograd.grad(chunked.per_sample.sum(), logits)
    monkeypatch.setattr(focal_module, "use_chunked_kernel", lambda input: False)
    whole = binary_focal_loss_output(logits, target, gamma=1.5, alpha=0.3, reduction="none")
    (whole_grad,) = torch.autograd.grad(whole.per_sample.sum(), logits)
    assert whole.p_t is not None
    assert not whole.p_t.requires_grad
    torch.testing.assert_close(whole.per_sample, chunked.per_sample)
    torch.testing.assert_close(whole.p_t, chunked.p_t)
    torch.testing.assert_close(whole_grad, chunked_grad)
