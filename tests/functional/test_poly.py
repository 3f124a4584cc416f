"""Poly-1 loss against a plain float64 formula and torch's cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional.poly import poly_loss, poly_loss_output
from tests.helpers import (
    HALF_DTYPES,
    IGNORE_CASES,
    LOGIT_SHAPES,
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_multiclass_output,
    assert_raises_message,
    ignore_kwargs,
    labelled,
    make_logits,
    make_target,
    parametrize_error_cases,
)

SHAPES, IGNORE = LOGIT_SHAPES, IGNORE_CASES


EPSILONS = [-1.0, -0.5, 1.0, 2.0]


def poly_reference(
    logits: Tensor, target: Tensor, epsilon: float, smoothing: float, ignore_index: int | None, reduction: str
) -> Tensor:
    """sum_c t_c (-log p_c + epsilon (1 - p_c)) with t the (smoothed) one-hot target, in float64, written out;
    the paper's code. Mean over counted samples."""
    logits = logits.double()
    num_classes = logits.shape[1]
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, num_classes).movedim(-1, 1).double()
    smoothed = (1 - smoothing) * onehot + smoothing / num_classes
    per_sample = (smoothed * (-torch.log(probs) + epsilon * (1 - probs))).sum(dim=1)
    per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / valid.sum()


# -- identities and reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_epsilon_0_is_cross_entropy(
    shape: tuple[int, ...], reduction: str, smoothing: float, ignore_index: int | None
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = {"reduction": reduction, "label_smoothing": smoothing, **ignore_kwargs(ignore_index)}
    expected = F.cross_entropy(logits, target, **kwargs)  # type: ignore[arg-type]
    got = poly_loss(logits, target, epsilon=0.0, **kwargs)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("epsilon", EPSILONS, ids=[f"epsilon_{e}" for e in EPSILONS])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_poly_matches_float64_reference(
    shape: tuple[int, ...], epsilon: float, smoothing: float, ignore_index: int | None
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = {"label_smoothing": smoothing, **ignore_kwargs(ignore_index)}
    for reduction in REDUCTIONS:
        expected = poly_reference(logits, target, epsilon, smoothing, ignore_index, reduction)
        got = poly_loss(logits, target, epsilon, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert_close_with_grad(got, expected, logits, rtol=1e-9, atol=1e-12, msg=labelled(reduction))
        got32 = poly_loss(logits.detach().float(), target, epsilon, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_poly_minus_cross_entropy_is_epsilon_times_one_minus_p_t() -> None:
    # from p_t = 1/2 to saturation: 1 - p_t is as exact as log p_t, whose absolute error from
    # log_softmax is a few ulps of the logits (at a gap of 60 it rounds to 0, and so does 1 - p_t)
    logits = torch.tensor([[0.0, 0.0], [3.0, 0.0], [10.0, 0.0], [30.0, 0.0], [60.0, 0.0]], dtype=torch.float64)
    target = torch.zeros(5, dtype=torch.long)
    epsilon = 2.0
    difference = poly_loss(logits, target, epsilon, reduction="none") - F.cross_entropy(
        logits, target, reduction="none"
    )
    one_minus_p_t = torch.sigmoid(-logits[:, 0])  # 1 - p_t of a two-class softmax, without cancellation
    ulps = 8 * torch.finfo(torch.float64).eps * logits[:, 0]
    assert bool(((difference - epsilon * one_minus_p_t).abs() <= 1e-12 * one_minus_p_t + epsilon * ulps).all())
    torch.testing.assert_close(difference[:3], epsilon * one_minus_p_t[:3], rtol=1e-12, atol=0)


def test_epsilon_minus_1_is_non_negative_and_decreasing_in_p_t() -> None:
    gaps = torch.linspace(-20.0, 40.0, 601, dtype=torch.float64)
    logits = torch.stack([gaps, torch.zeros_like(gaps)], dim=1)
    loss = poly_loss(logits, torch.zeros(601, dtype=torch.long), epsilon=-1.0, reduction="none")
    assert bool((loss >= 0).all())
    assert bool((loss[1:] <= loss[:-1]).all())


def test_output_fields_and_p_t_is_the_model_probability() -> None:
    shape = (2, 4, 3, 2)
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index=-100)
    valid = target != -100
    out = poly_loss_output(logits, target, epsilon=1.0, label_smoothing=0.1)
    expected_p_t = logits.detach().softmax(dim=1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    assert_multiclass_output(out, target, valid, expected_p_t, num_classes=4)


# -- saturation, empty batches, precision ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("epsilon", [-1.0, 1.0], ids=["epsilon_-1", "epsilon_1"])
def test_saturated_logits_are_finite_and_exact(epsilon: float, dtype: torch.dtype) -> None:
    logits = torch.tensor([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0]], dtype=dtype, requires_grad=True)
    loss = poly_loss(logits, torch.tensor([0, 2]), epsilon=epsilon, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.0, 200.0 + epsilon], dtype=dtype))
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


EMPTY_CASES = {
    "empty_2d": (torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
    "empty_4d": (torch.zeros(0, 4, 2, 2, dtype=torch.float64), torch.zeros(0, 2, 2, dtype=torch.long)),
    "all_ignored": (make_logits((3, 4)), torch.full((3,), -100)),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("logits", "target"), EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_empty_or_all_ignored_is_zero_with_zero_gradient(logits: Tensor, target: Tensor, reduction: str) -> None:
    x = logits.clone().requires_grad_()
    loss = poly_loss(x, target, epsilon=1.0, label_smoothing=0.1, reduction=reduction)  # type: ignore[arg-type]
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert x.grad is not None
    assert bool((x.grad == 0).all())


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
def test_half_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    logits = make_logits((6, 4), dtype=torch.float32)
    target = make_target((6, 4))
    low = logits.to(dtype).requires_grad_()
    out = poly_loss_output(low, target)
    assert out.loss.dtype == torch.float32
    assert out.p_t is not None
    assert out.p_t.dtype == torch.float32
    torch.testing.assert_close(out.loss, poly_loss(low.detach().float(), target))
    torch.testing.assert_close(out.loss, poly_loss(logits, target), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(out.loss, low)
    assert grad.dtype == dtype
    assert bool(torch.isfinite(grad).all())


def test_nan_input_propagates() -> None:
    logits = torch.zeros(3, 4)
    logits[1, 2] = float("nan")
    assert torch.isnan(poly_loss(logits, torch.tensor([0, 1, 2])))


# -- gradcheck ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2], ids=["no_smoothing", "smoothing_0.2"])
@pytest.mark.parametrize("epsilon", [-1.0, 1.0], ids=["epsilon_-1", "epsilon_1"])
def test_gradcheck_and_gradgradcheck(epsilon: float, smoothing: float) -> None:
    logits = make_logits((4, 4), scale=1.5).requires_grad_()
    target = torch.tensor([0, 3, -100, 1])

    def fn(x: Tensor) -> Tensor:
        return poly_loss(x, target, epsilon, label_smoothing=smoothing, reduction="none")

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,))


def test_gradcheck_4d() -> None:
    logits = make_logits((2, 4, 2, 2), scale=1.5).requires_grad_()
    target = make_target((2, 4, 2, 2), ignore_index=-100)
    assert gradcheck(lambda x: poly_loss(x, target, epsilon=2.0), (logits,))


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

ERROR_CASES: ErrorCases = {
    "epsilon_below_minus_1": (
        lambda: poly_loss(X, Y, epsilon=-1.5),
        ValueError,
        "Expected argument `epsilon` to be a number >= -1, but got -1.5",
    ),
    "epsilon_inf": (
        lambda: poly_loss(X, Y, epsilon=float("inf")),
        ValueError,
        "Expected argument `epsilon` to be a finite number >= -1, but got inf",
    ),
    "epsilon_string": (
        lambda: poly_loss(X, Y, epsilon="1"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `epsilon` to be a number, but got str '1'",
    ),
    "label_smoothing": (
        lambda: poly_loss(X, Y, label_smoothing=1.5),
        ValueError,
        "Expected argument `label_smoothing` to be a number in [0, 1], but got 1.5",
    ),
    "reduction": (
        lambda: poly_loss(X, Y, reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "target_out_of_range": (
        lambda: poly_loss(X, torch.tensor([0, 3, 1, 1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "float_target": (
        lambda: poly_loss(X, torch.zeros(4)),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
