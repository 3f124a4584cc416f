"""LDAM loss, its margins and its DRW weights against plain float64 formulas and torch's cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional.ldam import drw_class_weights, ldam_loss, ldam_loss_output, ldam_margins
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


COUNTS = [500, 60, 12, 3]
WEIGHT = [0.25, 0.5, 1.5, 2.0]
SCALES = [1.0, 5.0, 30.0]


def margins_reference(counts: list[int], max_margin: float) -> Tensor:
    quarter = torch.tensor([n**-0.25 for n in counts], dtype=torch.float64)
    return max_margin * quarter / quarter.max()


def ldam_reference(
    logits: Tensor,
    target: Tensor,
    counts: list[int],
    max_margin: float,
    scale: float,
    weight: list[float] | None,
    ignore_index: int | None,
    reduction: str,
) -> Tensor:
    """-w_y log(e^{s(z_y - D_y)} / (e^{s(z_y - D_y)} + sum_{j != y} e^{s z_j})) in float64, written out."""
    logits = logits.double()
    margins = margins_reference(counts, max_margin)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(valid, target, torch.zeros_like(target))
    z_y = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    true_term = torch.exp(scale * (z_y - margins[safe]))
    others = torch.exp(scale * logits).sum(dim=1) - torch.exp(scale * z_y)
    w = torch.ones_like(z_y) if weight is None else torch.tensor(weight, dtype=torch.float64)[safe]
    w = torch.where(valid, w, torch.zeros_like(w))
    per_sample = -w * torch.log(true_term / (true_term + others))
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / w.sum()


# -- margins and weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_margin", [0.0, 0.5, 1.3])
def test_margins_are_proportional_to_n_to_the_minus_quarter(max_margin: float) -> None:
    margins = ldam_margins(COUNTS, max_margin)
    assert margins.dtype == torch.float64
    torch.testing.assert_close(margins, margins_reference(COUNTS, max_margin), rtol=1e-12, atol=0)
    assert margins.max().item() == pytest.approx(max_margin)
    if max_margin > 0:
        assert int(margins.argmax()) == 3  # the rarest class has the largest margin


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_drw_weights_are_effective_number_summing_to_c(beta: float) -> None:
    weights = drw_class_weights(COUNTS, beta)
    raw = torch.tensor([(1 - beta) / (1 - beta**n) for n in COUNTS], dtype=torch.float64)
    torch.testing.assert_close(weights, len(COUNTS) * raw / raw.sum(), rtol=1e-12, atol=0)
    assert weights.sum().item() == pytest.approx(len(COUNTS))
    if beta == 0.0:
        torch.testing.assert_close(weights, torch.ones(4, dtype=torch.float64))


# -- identities and reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_no_margin_is_cross_entropy_on_scaled_logits(
    shape: tuple[int, ...], reduction: str, ignore_index: int | None
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = {"reduction": reduction, **ignore_kwargs(ignore_index)}
    for scale in (1.0, 4.0):
        expected = F.cross_entropy(scale * logits, target, **kwargs)  # type: ignore[arg-type]
        got = ldam_loss(logits, target, COUNTS, max_margin=0.0, scale=scale, **kwargs)  # type: ignore[arg-type]
        assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("with_weight", [False, True], ids=["no_weight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_equals_weighted_cross_entropy_on_adjusted_logits(
    shape: tuple[int, ...], reduction: str, with_weight: bool, ignore_index: int | None
) -> None:
    logits = make_logits(shape, scale=0.5).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = {"reduction": reduction, **ignore_kwargs(ignore_index)}
    weight = WEIGHT if with_weight else None
    margins = margins_reference(COUNTS, 0.5)
    safe = target.clamp_min(0) if ignore_index != 1 else torch.where(target == 1, 0, target)
    onehot = F.one_hot(safe, 4).movedim(-1, 1).double()
    adjusted = 30.0 * (logits - margins.view(1, -1, *([1] * (logits.ndim - 2))) * onehot)
    torch_weight = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    expected = F.cross_entropy(adjusted, target, weight=torch_weight, **kwargs)  # type: ignore[arg-type]
    got = ldam_loss(logits, target, COUNTS, weight=weight, **kwargs)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("with_weight", [False, True], ids=["no_weight", "weight"])
@pytest.mark.parametrize("scale", SCALES, ids=[f"scale_{s}" for s in SCALES])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_ldam_matches_float64_reference(
    shape: tuple[int, ...], scale: float, with_weight: bool, ignore_index: int | None
) -> None:
    logits = make_logits(shape, scale=0.5).requires_grad_()  # cosine-like logits, as in the paper
    target = make_target(shape, ignore_index)
    weight = WEIGHT if with_weight else None
    kwargs = ignore_kwargs(ignore_index)
    for reduction in REDUCTIONS:
        expected = ldam_reference(logits, target, COUNTS, 0.5, scale, weight, ignore_index, reduction)
        got = ldam_loss(logits, target, COUNTS, 0.5, scale, weight, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert_close_with_grad(got, expected, logits, rtol=1e-9, atol=1e-12, msg=labelled(reduction))
        got32 = ldam_loss(logits.detach().float(), target, COUNTS, 0.5, scale, weight, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), expected.detach(), rtol=2e-5, atol=1e-5)


def test_weight_as_a_tensor_equals_a_sequence() -> None:
    logits, target = make_logits((8, 4), scale=0.5), make_target((8, 4))
    expected = ldam_loss(logits, target, COUNTS, weight=WEIGHT)
    torch.testing.assert_close(ldam_loss(logits, target, COUNTS, weight=torch.tensor(WEIGHT)), expected)
    torch.testing.assert_close(
        ldam_loss(logits, target, COUNTS, weight=drw_class_weights(COUNTS, 0.99)),
        ldam_loss(logits, target, COUNTS, weight=drw_class_weights(COUNTS, 0.99).tolist()),
    )


def test_output_fields_and_p_t_is_the_probability_of_the_scaled_logits_without_margin() -> None:
    shape = (2, 4, 3, 2)
    logits = make_logits(shape, scale=0.5).requires_grad_()
    target = make_target(shape, ignore_index=-100)
    valid = target != -100
    out = ldam_loss_output(logits, target, COUNTS, max_margin=0.5, scale=30.0, weight=WEIGHT)
    expected_p_t = (30.0 * logits.detach()).softmax(dim=1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    assert_multiclass_output(out, target, valid, expected_p_t, num_classes=4)


# -- saturation, empty batches, precision ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_saturated_logits_are_finite_and_exact(dtype: torch.dtype) -> None:
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0], [-100.0, 100.0, -100.0, -100.0]], dtype=dtype)
    logits.requires_grad_()
    target = torch.tensor([0, 3])
    loss = ldam_loss(logits, target, COUNTS, max_margin=0.5, scale=30.0, weight=WEIGHT, reduction="none")
    margins = margins_reference(COUNTS, 0.5)
    # sample 0: right by 200 (minus a margin), so 0; sample 1: wrong by 200 plus its margin, times the scale
    expected = torch.stack([torch.tensor(0.0, dtype=torch.float64), WEIGHT[3] * 30.0 * (200 + margins[3])])
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


EMPTY_CASES = {
    "empty_2d": (torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
    "empty_4d": (torch.zeros(0, 4, 2, 2, dtype=torch.float64), torch.zeros(0, 2, 2, dtype=torch.long)),
    "all_ignored": (make_logits((3, 4)), torch.full((3,), -100)),
}


@pytest.mark.parametrize("with_weight", [False, True], ids=["no_weight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("logits", "target"), EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_empty_or_all_ignored_is_zero_with_zero_gradient(
    logits: Tensor, target: Tensor, reduction: str, with_weight: bool
) -> None:
    x = logits.clone().requires_grad_()
    loss = ldam_loss(x, target, COUNTS, weight=WEIGHT if with_weight else None, reduction=reduction)  # type: ignore[arg-type]
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert x.grad is not None
    assert bool((x.grad == 0).all())


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
def test_half_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    logits = make_logits((6, 4), scale=0.5, dtype=torch.float32)
    target = make_target((6, 4))
    low = logits.to(dtype).requires_grad_()
    out = ldam_loss_output(low, target, COUNTS, weight=WEIGHT)
    assert out.loss.dtype == torch.float32
    assert out.p_t is not None
    assert out.p_t.dtype == torch.float32
    torch.testing.assert_close(out.loss, ldam_loss(low.detach().float(), target, COUNTS, weight=WEIGHT))
    # a 16-bit logit is off by up to 2^-9 of it, and the scale multiplies that by 30
    torch.testing.assert_close(out.loss, ldam_loss(logits, target, COUNTS, weight=WEIGHT), rtol=0.05, atol=0.05)
    (grad,) = torch.autograd.grad(out.loss, low)
    assert grad.dtype == dtype
    assert bool(torch.isfinite(grad).all())


def test_nan_input_propagates() -> None:
    logits = torch.zeros(3, 4)
    logits[1, 2] = float("nan")
    assert torch.isnan(ldam_loss(logits, torch.tensor([0, 1, 2]), COUNTS))


# -- gradcheck ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_weight", [False, True], ids=["no_weight", "weight"])
def test_gradcheck_and_gradgradcheck(with_weight: bool) -> None:
    logits = make_logits((4, 4), scale=0.3).requires_grad_()
    target = torch.tensor([0, 3, -100, 1])
    weight = WEIGHT if with_weight else None

    def fn(x: Tensor) -> Tensor:
        return ldam_loss(x, target, COUNTS, max_margin=0.5, scale=5.0, weight=weight, reduction="none")

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,))


def test_gradcheck_4d_mean() -> None:
    logits = make_logits((2, 4, 2, 2), scale=0.3).requires_grad_()
    target = make_target((2, 4, 2, 2), ignore_index=-100)
    assert gradcheck(lambda x: ldam_loss(x, target, COUNTS, scale=5.0, weight=WEIGHT), (logits,))


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])
C3 = [10, 5, 1]

ERROR_CASES: ErrorCases = {
    "zero_count": (
        lambda: ldam_loss(X, Y, [10, 0, 3]),
        ValueError,
        "Expected every entry of `class_counts` to be >= 1 (the margin n^(-1/4) of a class without samples is "
        "infinite), but got 0 for classes [1]",
    ),
    "zero_count_drw": (
        lambda: drw_class_weights([10, 0, 3]),
        ValueError,
        "to be >= 1 (the effective number of a class without samples is 0), but got 0 for classes [1]",
    ),
    "counts_length": (
        lambda: ldam_loss(X, Y, [10, 5]),
        ValueError,
        "Expected `class_counts` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "negative_count": (lambda: ldam_loss(X, Y, [10, -1, 3]), ValueError, "but got -1.0 at index 1"),
    "max_margin_negative": (
        lambda: ldam_loss(X, Y, C3, max_margin=-0.1),
        ValueError,
        "Expected argument `max_margin` to be a number >= 0, but got -0.1",
    ),
    "max_margin_inf": (
        lambda: ldam_loss(X, Y, C3, max_margin=float("inf")),
        ValueError,
        "Expected argument `max_margin` to be a finite number >= 0, but got inf",
    ),
    "scale_zero": (
        lambda: ldam_loss(X, Y, C3, scale=0.0),
        ValueError,
        "Expected argument `scale` to be a number > 0, but got 0.0",
    ),
    "scale_nan": (
        lambda: ldam_loss(X, Y, C3, scale=float("nan")),
        ValueError,
        "Expected argument `scale` to be a finite number > 0, but got nan",
    ),
    "beta_1": (
        lambda: drw_class_weights(C3, beta=1.0),
        ValueError,
        "Expected argument `beta` to be a number in [0, 1), but got 1.0",
    ),
    "weight_length": (
        lambda: ldam_loss(X, Y, C3, weight=[1.0, 2.0]),
        ValueError,
        "Expected `weight` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "weight_negative": (
        lambda: ldam_loss(X, Y, C3, weight=torch.tensor([1.0, -2.0, 1.0])),
        ValueError,
        "Expected every entry of `weight` to be finite and >= 0, but got -2.0 at index 1",
    ),
    "reduction": (
        lambda: ldam_loss(X, Y, C3, reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "target_out_of_range": (
        lambda: ldam_loss(X, torch.tensor([0, 3, 1, 1]), C3),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
