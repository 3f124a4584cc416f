"""Cross-entropy, balanced cross-entropy and binary cross-entropy against torch's own losses."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional import (
    balanced_cross_entropy,
    balanced_cross_entropy_output,
    binary_cross_entropy,
    binary_cross_entropy_output,
    cross_entropy,
    cross_entropy_output,
)
from tests.helpers import (
    HALF_DTYPES,
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_raises_message,
    ignore_kwargs,
    make_logits,
    make_target,
    parametrize_error_cases,
)

SHAPES = {"2d": (6, 4), "4d": (2, 3, 3, 2)}
# ignore_index cases: no target ignored, the default -100, and an in-range class used as ignore_index
IGNORE = {"no_ignore": None, "ignore_-100": -100, "ignore_class_1": 1}
BINARY_SHAPES = {"1d": (7,), "2d": (5, 3), "4d": (2, 3, 2, 2)}


def make_soft_target(shape: tuple[int, ...], seed: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).softmax(dim=1)


def make_weight(num_classes: int) -> Tensor:
    return torch.linspace(0.2, 2.0, num_classes, dtype=torch.float64)


# -- cross-entropy parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_matches_torch(
    shape: tuple[int, ...], reduction: str, weighted: bool, ignore_index: int | None, label_smoothing: float
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    weight = make_weight(shape[1]) if weighted else None
    kwargs = ignore_kwargs(ignore_index)
    expected = F.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction, **kwargs
    )
    got = cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction, **kwargs)
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_probability_targets_match_torch(
    shape: tuple[int, ...], reduction: str, weighted: bool, label_smoothing: float
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_soft_target(shape)
    weight = make_weight(shape[1]) if weighted else None
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    got = cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


def test_cross_entropy_probability_targets_output_fields() -> None:
    logits = make_logits((5, 4))
    target = make_soft_target((5, 4))
    out = cross_entropy_output(logits, target, reduction="none")
    torch.testing.assert_close(out.p_t, (target * logits.softmax(dim=1)).sum(dim=1))
    torch.testing.assert_close(out.target, target.argmax(dim=1))
    assert out.valid.all()
    assert out.per_sample.shape == (5,)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_output_fields(shape: tuple[int, ...], ignore_index: int | None) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = ignore_kwargs(ignore_index)
    out = cross_entropy_output(logits, target, reduction="mean", **kwargs)
    expected_none = F.cross_entropy(logits, target, reduction="none", **kwargs)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    target_shape = (shape[0], *shape[2:])
    assert out.per_sample.shape == target_shape
    assert out.p_t is not None
    assert out.p_t.shape == target_shape
    assert not out.p_t.requires_grad
    assert bool(((out.p_t >= 0) & (out.p_t <= 1)).all())
    torch.testing.assert_close(out.valid, valid)
    torch.testing.assert_close(out.per_sample, expected_none)
    torch.testing.assert_close(out.p_t[valid], (-expected_none[valid]).exp())
    assert out.task == "multiclass"
    assert out.num_classes == shape[1]
    assert out.terms == {}
    assert out.target is target


# -- empty and all-ignored batches -----------------------------------------------------------------------


EMPTY_CASES = {
    "empty_2d": (torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
    "empty_4d": (torch.zeros(0, 3, 2, 2, dtype=torch.float64), torch.zeros(0, 2, 2, dtype=torch.long)),
    "all_ignored": (make_logits((4, 3)), torch.full((4,), -100)),
    "all_ignored_4d": (make_logits((2, 3, 2, 2)), torch.full((2, 2, 2), -100)),
}


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("case", EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_cross_entropy_empty_or_all_ignored_is_zero(
    case: tuple[Tensor, Tensor], label_smoothing: float, weighted: bool
) -> None:
    logits, target = case[0].clone().requires_grad_(), case[1]
    weight = make_weight(logits.shape[1]) if weighted else None
    for reduction in REDUCTIONS:
        loss = cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
        assert loss.shape == (() if reduction != "none" else target.shape), reduction
        assert bool((loss == 0).all()), reduction
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert bool((grad == 0).all()), reduction


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_balanced_cross_entropy_all_ignored_is_zero(reduction: str) -> None:
    logits = make_logits((3, 2)).requires_grad_()
    loss = balanced_cross_entropy(logits, torch.full((3,), 7), alpha=[0.3, 0.6], ignore_index=7, reduction=reduction)
    assert bool((loss == 0).all())
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert bool((grad == 0).all())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_empty_is_zero(reduction: str) -> None:
    logits = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    loss = binary_cross_entropy(logits, torch.zeros(0, 3, dtype=torch.float64), reduction=reduction)
    assert bool((loss == 0).all())
    assert loss.shape == (() if reduction != "none" else (0, 3))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.shape == (0, 3)


# -- balanced cross-entropy ----------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_balanced_cross_entropy_matches_weighted_torch(
    shape: tuple[int, ...], reduction: str, ignore_index: int | None
) -> None:
    logits = make_logits(shape, dtype=torch.float32).requires_grad_()
    target = make_target(shape, ignore_index)
    alpha = torch.linspace(0.1, 0.9, shape[1])
    kwargs = ignore_kwargs(ignore_index)
    expected = F.cross_entropy(logits, target, weight=alpha, reduction=reduction, **kwargs)
    out = balanced_cross_entropy_output(logits, target, alpha=alpha.tolist(), reduction=reduction, **kwargs)
    assert_close_with_grad(out.loss, expected, logits, rtol=1e-5, atol=1e-6)
    # the alpha-weighted loss of each sample: -alpha[y] log p_t
    expected_none = F.cross_entropy(logits, target, weight=alpha, reduction="none", **kwargs)
    torch.testing.assert_close(out.per_sample, expected_none, rtol=1e-5, atol=1e-6)


def test_balanced_cross_entropy_accepts_tensor_alpha() -> None:
    logits = make_logits((6, 3), dtype=torch.float32)
    target = make_target((6, 3))
    alpha = torch.tensor([0.2, 0.5, 1.0])
    torch.testing.assert_close(
        balanced_cross_entropy(logits, target, alpha), F.cross_entropy(logits, target, weight=alpha)
    )


@pytest.mark.parametrize("alpha", [[1.0, 2.0, 5.0], [0.0, 3.5, 12.0]], ids=["above_1", "zero_and_large"])
def test_balanced_cross_entropy_takes_any_finite_non_negative_weights(alpha: list[float]) -> None:
    # per-class weights as torch's `weight`: not probabilities, so values above 1 are fine
    logits = make_logits((6, 3), dtype=torch.float32)
    target = make_target((6, 3))
    expected = F.cross_entropy(logits, target, weight=torch.tensor(alpha))
    torch.testing.assert_close(balanced_cross_entropy(logits, target, alpha), expected)
    torch.testing.assert_close(balanced_cross_entropy(logits, target, torch.tensor(alpha)), expected)


# -- class weight values ---------------------------------------------------------------------------------


BAD_WEIGHTS = {"negative": -1.0, "nan": float("nan"), "inf": float("inf")}


@pytest.mark.parametrize("bad", BAD_WEIGHTS.values(), ids=BAD_WEIGHTS.keys())
def test_functional_weight_tensor_values_are_checked_with_validate_args(bad: float) -> None:
    weight = torch.tensor([1.0, bad, 1.0])
    message = f"Expected every entry of `weight` to be finite and >= 0, but got {bad!r} at index 1."
    with pytest.raises(ValueError, match=re.escape(message)):
        cross_entropy(X, Y, weight=weight)
    with pytest.raises(ValueError, match=re.escape(message.replace("`weight`", "`alpha`"))):
        balanced_cross_entropy(X, Y, alpha=weight)
    with pytest.raises(ValueError, match=re.escape(message.replace("`weight`", "`pos_weight`"))):
        binary_cross_entropy(X, torch.zeros(4, 3), pos_weight=weight)
    # validate_args=False skips the check (it needs a host-device sync), as it skips the target check
    cross_entropy(X, Y, weight=weight, validate_args=False)
    binary_cross_entropy(X, torch.zeros(4, 3), pos_weight=weight, validate_args=False)


def test_functional_weight_as_a_sequence_is_checked_and_used() -> None:
    expected = F.cross_entropy(X, Y, weight=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(cross_entropy(X, Y, weight=[1.0, 2.0, 3.0]), expected)
    with pytest.raises(ValueError, match=re.escape("every entry of `weight` to be finite and >= 0, but got -2.0")):
        cross_entropy(X, Y, weight=[1.0, -2.0, 3.0], validate_args=False)  # on the host: always checked


def test_ignore_index_with_probability_targets_is_an_error() -> None:
    soft = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=re.escape("`ignore_index` to be left at -100 with class-probability")):
        cross_entropy(X, soft, ignore_index=0)
    # the default stays accepted, also given explicitly
    torch.testing.assert_close(cross_entropy(X, soft, ignore_index=-100), F.cross_entropy(X, soft))


# -- binary cross-entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_weight", ["none", "scalar", "per_class"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard_targets", "soft_targets"])
@pytest.mark.parametrize("shape", BINARY_SHAPES.values(), ids=BINARY_SHAPES.keys())
def test_binary_cross_entropy_matches_torch(shape: tuple[int, ...], soft: bool, pos_weight: str) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    target = target if soft else (target > 0.5).to(torch.float64)
    weight = {
        "none": None,
        "scalar": torch.tensor([2.5], dtype=torch.float64),
        "per_class": torch.linspace(0.5, 3.0, shape[-1], dtype=torch.float64),
    }[pos_weight]
    for reduction in REDUCTIONS:
        expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction=reduction)
        out = binary_cross_entropy_output(logits, target, pos_weight=weight, reduction=reduction)
        assert_close_with_grad(
            out.loss, expected, logits, rtol=1e-10, atol=1e-12, msg=lambda m, r=reduction: f"{r}: {m}"
        )
    # element-wise fields
    probability = torch.sigmoid(logits.detach())
    assert out.per_sample.shape == shape
    assert out.p_t is not None
    assert not out.p_t.requires_grad
    torch.testing.assert_close(out.p_t, probability * target + (1 - probability) * (1 - target))
    assert out.task == "binary"
    assert out.num_classes == (shape[1] if len(shape) > 1 else 1)
    assert out.valid.all()


# -- numerics -------------------------------------------------------------------------------------------


def test_cross_entropy_200_logit_gap_gives_200() -> None:
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    loss = cross_entropy(logits, torch.tensor([1]))
    # exact value: 200 + log(1 + 2 e^-200) = 200 in float32
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(200.0))
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.tensor([[1.0, -1.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
def test_cross_entropy_logits_1e4_are_finite(label_smoothing: float) -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], requires_grad=True)
    target = torch.tensor([1, 0])
    loss = cross_entropy(logits, target, label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits.detach().double(), target, label_smoothing=label_smoothing)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


def test_binary_cross_entropy_logits_1e4_are_finite() -> None:
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = binary_cross_entropy(logits, target, reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(2e4))
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.tensor([1.0, -1.0, 0.0, 0.0]))


LOW_PRECISION_CASES: dict[str, Callable[[Tensor], Tensor]] = {
    "cross_entropy": lambda x: cross_entropy(x, torch.tensor([0, 2, 1, 3, 3, 0]), weight=torch.tensor([1.0, 2, 3, 4])),
    "cross_entropy_smoothing": lambda x: cross_entropy(x, torch.tensor([0, 2, 1, 3, 3, 0]), label_smoothing=0.1),
    "balanced_cross_entropy": lambda x: balanced_cross_entropy(x, torch.tensor([0, 2, 1, 3, 3, 0]), [0.1, 0.2, 0.3, 1]),
    "binary_cross_entropy": lambda x: binary_cross_entropy(x, (x.float() > 0).to(x.dtype)),
    "binary_cross_entropy_pos_weight": lambda x: binary_cross_entropy(
        x, torch.zeros_like(x), pos_weight=torch.tensor([1.0, 2.0, 3.0, 4.0])
    ),
}


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
@pytest.mark.parametrize("fn", LOW_PRECISION_CASES.values(), ids=LOW_PRECISION_CASES.keys())
def test_half_precision_inputs_match_float32(fn: Callable[[Tensor], Tensor], dtype: torch.dtype) -> None:
    logits = make_logits((6, 4), dtype=torch.float32)
    low = logits.to(dtype)
    reference = fn(low.float())  # the same (rounded) values in float32
    got = fn(low)
    assert got.dtype == torch.float32  # computed internally in float32
    torch.testing.assert_close(got, reference, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, fn(logits), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", LOW_PRECISION_CASES.values(), ids=LOW_PRECISION_CASES.keys())
def test_cpu_autocast_matches_float32(fn: Callable[[Tensor], Tensor]) -> None:
    logits = make_logits((6, 4), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(logits)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.float(), fn(logits), rtol=1e-2, atol=1e-2)


NAN_CASES: dict[str, Callable[[Tensor], Tensor]] = {
    "cross_entropy": lambda x: cross_entropy(x, torch.tensor([0, 1, 2])),
    "cross_entropy_weighted_smoothing": lambda x: cross_entropy(
        x, torch.tensor([0, 1, 2]), weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.2
    ),
    "cross_entropy_soft": lambda x: cross_entropy(x, torch.full((3, 3), 1 / 3)),
    "balanced_cross_entropy": lambda x: balanced_cross_entropy(x, torch.tensor([0, 1, 2]), [0.5, 0.5, 0.5]),
    "binary_cross_entropy": lambda x: binary_cross_entropy(x, torch.ones(3, 3)),
}


@pytest.mark.parametrize("fn", NAN_CASES.values(), ids=NAN_CASES.keys())
def test_nan_input_propagates(fn: Callable[[Tensor], Tensor]) -> None:
    logits = torch.zeros(3, 3)
    logits[1, 2] = float("nan")
    assert torch.isnan(fn(logits))


# -- gradcheck ------------------------------------------------------------------------------------------


GRAD_CASES: dict[str, Callable[[Tensor], Tensor]] = {
    "cross_entropy": lambda x: cross_entropy(x, torch.tensor([0, 2, -100, 1])),
    "cross_entropy_weighted_smoothing_none": lambda x: cross_entropy(
        x,
        torch.tensor([0, 2, -100, 1]),
        weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        label_smoothing=0.1,
        reduction="none",
    ),
    "cross_entropy_soft": lambda x: cross_entropy(x, make_soft_target((4, 3)), label_smoothing=0.1),
    "balanced_cross_entropy": lambda x: balanced_cross_entropy(x, torch.tensor([0, 2, 2, 1]), alpha=[0.2, 0.5, 0.9]),
    "binary_cross_entropy_pos_weight": lambda x: binary_cross_entropy(
        x, (make_soft_target((4, 3)) > 0.3).double(), pos_weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ),
}


@pytest.mark.parametrize("fn", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_gradcheck(fn: Callable[[Tensor], Tensor]) -> None:
    logits = make_logits((4, 3)).requires_grad_()
    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,), fast_mode=True)


def test_gradcheck_4d() -> None:
    logits = make_logits((2, 3, 2, 2)).requires_grad_()
    target = make_target((2, 3, 2, 2), ignore_index=-100)
    assert gradcheck(lambda x: cross_entropy(x, target, label_smoothing=0.1), (logits,))


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

ERROR_CASES: ErrorCases = {
    "ce_batch_mismatch": (lambda: cross_entropy(X, torch.tensor([0, 1, 2])), ValueError, "`target` of shape (4,)"),
    "ce_spatial_mismatch": (
        lambda: cross_entropy(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)),
        ValueError,
        "`target` of shape (2, 4, 4)",
    ),
    "ce_class_out_of_range": (
        lambda: cross_entropy(X, torch.tensor([0, 1, 3, 0])),
        ValueError,
        "`target` class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "ce_negative_class": (
        lambda: cross_entropy(X, torch.tensor([0, -1, 2, 0])),
        ValueError,
        "`target` class index to be in [0, 2] or ignore_index=-100, but got -1",
    ),
    "ce_1d_input": (lambda: cross_entropy(torch.zeros(4), Y), ValueError, "`input` of shape (N, C)"),
    "ce_integer_input": (lambda: cross_entropy(X.long(), Y), TypeError, "`input` to be a floating-point"),
    "ce_weight_length": (
        lambda: cross_entropy(X, Y, weight=torch.ones(4)),
        ValueError,
        "`weight` to have one entry per class (3 classes in `input`), but got 4",
    ),
    "ce_label_smoothing_high": (
        lambda: cross_entropy(X, Y, label_smoothing=1.5),
        ValueError,
        "`label_smoothing` to be a number in [0, 1], but got 1.5",
    ),
    "ce_label_smoothing_negative": (
        lambda: cross_entropy(X, Y, label_smoothing=-0.1),
        ValueError,
        "`label_smoothing` to be a number in [0, 1], but got -0.1",
    ),
    "ce_reduction": (
        lambda: cross_entropy(X, Y, reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "ce_soft_target_shape": (
        lambda: cross_entropy(X, torch.zeros(4, 4)),
        ValueError,
        "`target` to have the same shape as `input` (4, 3), but got shape (4, 4)",
    ),
    "ce_soft_target_range": (
        lambda: cross_entropy(X, torch.full((4, 3), 1.5)),
        ValueError,
        "`target` value to be in [0, 1], but got 1.5",
    ),
    "balanced_float_target": (
        lambda: balanced_cross_entropy(X, torch.zeros(4, 3), alpha=[0.5, 0.5, 0.5]),
        TypeError,
        "`target` to hold integer class indices",
    ),
    "balanced_alpha_negative": (
        lambda: balanced_cross_entropy(X, Y, alpha=[0.5, -0.5, 0.5]),
        ValueError,
        "every entry of `alpha` to be finite and >= 0, but got -0.5 at index 1",
    ),
    "balanced_alpha_float32_tensor_negative": (
        lambda: balanced_cross_entropy(X, Y, alpha=torch.tensor([0.5, -0.5, 0.5])),
        ValueError,
        "every entry of `alpha` to be finite and >= 0, but got -0.5 at index 1",
    ),
    "balanced_alpha_length": (
        lambda: balanced_cross_entropy(X, Y, alpha=[0.5, 0.5]),
        ValueError,
        "`alpha` to have one entry per class (3 classes in `input`), but got 2",
    ),
    "balanced_alpha_none": (
        lambda: balanced_cross_entropy(X, Y, alpha=None),  # type: ignore[arg-type]
        ValueError,
        "`alpha` to be one weight per class",
    ),
    "balanced_class_out_of_range": (
        lambda: balanced_cross_entropy(X, torch.tensor([0, 5, 1, 1]), alpha=[0.5, 0.5, 0.5]),
        ValueError,
        "`target` class index to be in [0, 2] or ignore_index=-100, but got 5",
    ),
    "bce_integer_target": (
        lambda: binary_cross_entropy(X, torch.zeros(4, 3, dtype=torch.long)),
        TypeError,
        "`target` to be a floating-point tensor",
    ),
    "bce_shape_mismatch": (
        lambda: binary_cross_entropy(X, torch.zeros(4, 2)),
        ValueError,
        "`target` to have the same shape as `input` (4, 3), but got shape (4, 2)",
    ),
    "bce_target_range": (
        lambda: binary_cross_entropy(X, torch.full((4, 3), -0.5)),
        ValueError,
        "`target` value to be in [0, 1], but got -0.5",
    ),
    "bce_reduction": (
        lambda: binary_cross_entropy(X, torch.zeros(4, 3), reduction="batchmean"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_ignore_index_is_not_a_range_error() -> None:
    loss = cross_entropy(X, torch.tensor([0, -1, 2, -1]), ignore_index=-1)
    torch.testing.assert_close(loss, F.cross_entropy(X, torch.tensor([0, -1, 2, -1]), ignore_index=-1))


def test_validate_args_false_skips_the_value_check_only() -> None:
    # shape checks stay on; the value check (a host-device sync) is what validate_args turns off
    with pytest.raises(ValueError, match=re.escape("`target` of shape (4,)")):
        cross_entropy(X, torch.tensor([0, 1]), validate_args=False)
    loss = cross_entropy(X, torch.tensor([0, 1, 2, 0]), validate_args=False)
    torch.testing.assert_close(loss, F.cross_entropy(X, Y))
