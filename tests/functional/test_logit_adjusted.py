"""Logit-adjusted cross-entropy and balanced softmax against plain float64 formulas and torch's cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional.logit_adjusted import (
    balanced_softmax_loss,
    balanced_softmax_loss_output,
    log_class_prior,
    logit_adjusted_loss,
    logit_adjusted_loss_output,
)
from lossplug.shared_checks import checked_class_counts
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
TAUS = [-0.5, 0.5, 1.0, 2.0]


def logit_adjusted_reference(
    logits: Tensor, target: Tensor, counts: list[int], tau: float, ignore_index: int | None, reduction: str
) -> Tensor:
    """-log(pi_y^tau e^{z_y} / sum_j pi_j^tau e^{z_j}) in float64, written out; mean over counted samples."""
    logits = logits.double()
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    weighted = prior.view(1, -1, *([1] * (logits.ndim - 2))) ** tau * logits.exp()
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(valid, target, torch.zeros_like(target))
    numerator = weighted.gather(1, safe.unsqueeze(1)).squeeze(1)
    per_sample = torch.where(valid, -torch.log(numerator / weighted.sum(dim=1)), torch.zeros_like(numerator))
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / valid.sum()


# -- identities and reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_tau_0_and_equal_counts_are_cross_entropy(
    shape: tuple[int, ...], reduction: str, ignore_index: int | None
) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = {"reduction": reduction, **ignore_kwargs(ignore_index)}
    equal = [7] * shape[1]
    for got in (
        logit_adjusted_loss(logits, target, COUNTS, tau=0.0, **kwargs),  # type: ignore[arg-type]
        # a shift common to every class cancels: equal counts with any tau, and balanced softmax
        logit_adjusted_loss(logits, target, equal, tau=2.5, **kwargs),  # type: ignore[arg-type]
        balanced_softmax_loss(logits, target, equal, **kwargs),  # type: ignore[arg-type]
    ):
        expected = F.cross_entropy(logits, target, **kwargs)  # type: ignore[arg-type]
        assert_close_with_grad(got, expected, logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("tau", TAUS, ids=[f"tau_{t}" for t in TAUS])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_logit_adjusted_matches_float64_reference(shape: tuple[int, ...], tau: float, ignore_index: int | None) -> None:
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index)
    kwargs = ignore_kwargs(ignore_index)
    for reduction in REDUCTIONS:
        expected = logit_adjusted_reference(logits, target, COUNTS, tau, ignore_index, reduction)
        got = logit_adjusted_loss(logits, target, COUNTS, tau=tau, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert_close_with_grad(got, expected, logits, rtol=1e-9, atol=1e-12, msg=labelled(reduction))
        # float32 input: the same values to float32 accuracy
        got32 = logit_adjusted_loss(logits.detach().float(), target, COUNTS, tau=tau, reduction=reduction, **kwargs)  # type: ignore[arg-type]
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_balanced_softmax_is_n_y_e_z_y_over_sum(reduction: str) -> None:
    logits = make_logits((8, 4)).requires_grad_()
    target = make_target((8, 4), ignore_index=-100)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    weighted = counts * logits.exp()
    per_sample = -torch.log(weighted.gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1) / weighted.sum(dim=1))
    per_sample = torch.where(target != -100, per_sample, torch.zeros_like(per_sample))
    expected = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.sum() / (target != -100).sum()}
    got = balanced_softmax_loss(logits, target, COUNTS, reduction=reduction)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected[reduction], logits, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, logit_adjusted_loss(logits, target, COUNTS, tau=1.0, reduction=reduction))  # type: ignore[arg-type]


def test_counts_as_a_tensor_or_floats_give_the_same_loss() -> None:
    logits, target = make_logits((8, 4)), make_target((8, 4))
    expected = logit_adjusted_loss(logits, target, COUNTS)
    torch.testing.assert_close(logit_adjusted_loss(logits, target, torch.tensor(COUNTS)), expected)
    torch.testing.assert_close(logit_adjusted_loss(logits, target, [float(n) for n in COUNTS]), expected)  # type: ignore[misc]


def test_log_class_prior() -> None:
    prior = log_class_prior(COUNTS)
    assert prior.dtype == torch.float64
    torch.testing.assert_close(prior.exp(), torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))


def test_output_fields_and_p_t_is_the_unadjusted_probability() -> None:
    shape = (2, 4, 3, 2)
    logits = make_logits(shape).requires_grad_()
    target = make_target(shape, ignore_index=-100)
    valid = target != -100
    expected_p_t = logits.detach().softmax(dim=1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    for out in (
        logit_adjusted_loss_output(logits, target, COUNTS, tau=1.5),
        balanced_softmax_loss_output(logits, target, COUNTS),
    ):
        assert_multiclass_output(out, target, valid, expected_p_t, num_classes=4)


# -- saturation, empty batches, precision ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_saturated_logits_are_finite_and_exact(dtype: torch.dtype) -> None:
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0], [-100.0, 100.0, -100.0, -100.0]], dtype=dtype)
    logits.requires_grad_()
    target = torch.tensor([0, 3])
    loss = logit_adjusted_loss(logits, target, COUNTS, tau=1.0, reduction="none")
    log_prior = log_class_prior(COUNTS)
    # sample 0: the right class by 200, p_t = 1 up to exp(-200); sample 1: off by 200 plus the prior's shift
    expected = torch.stack([torch.tensor(0.0, dtype=torch.float64), 200 + log_prior[1] - log_prior[3]])
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    out = balanced_softmax_loss_output(logits.detach(), target, COUNTS)
    assert out.p_t is not None
    torch.testing.assert_close(out.p_t, torch.tensor([1.0, 0.0], dtype=dtype))


EMPTY_CASES = {
    "empty_2d": (torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
    "empty_4d": (torch.zeros(0, 4, 2, 2, dtype=torch.float64), torch.zeros(0, 2, 2, dtype=torch.long)),
    "all_ignored": (make_logits((3, 4)), torch.full((3,), -100)),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("logits", "target"), EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_empty_or_all_ignored_is_zero_with_zero_gradient(logits: Tensor, target: Tensor, reduction: str) -> None:
    x = logits.clone().requires_grad_()
    loss = logit_adjusted_loss(x, target, COUNTS, reduction=reduction)  # type: ignore[arg-type]
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert x.grad is not None
    assert bool((x.grad == 0).all())


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
def test_half_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    logits = make_logits((6, 4), dtype=torch.float32)
    target = make_target((6, 4))
    low = logits.to(dtype).requires_grad_()
    out = logit_adjusted_loss_output(low, target, COUNTS)
    assert out.loss.dtype == torch.float32
    assert out.p_t is not None
    assert out.p_t.dtype == torch.float32
    torch.testing.assert_close(out.loss, logit_adjusted_loss(low.detach().float(), target, COUNTS))
    torch.testing.assert_close(out.loss, logit_adjusted_loss(logits, target, COUNTS), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(out.loss, low)
    assert grad.dtype == dtype
    assert bool(torch.isfinite(grad).all())


def test_nan_input_propagates() -> None:
    logits = torch.zeros(3, 4)
    logits[1, 2] = float("nan")
    assert torch.isnan(logit_adjusted_loss(logits, torch.tensor([0, 1, 2]), COUNTS))


# -- gradcheck ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 1.0, 2.0], ids=["tau_0", "tau_1", "tau_2"])
def test_gradcheck_and_gradgradcheck(tau: float) -> None:
    logits = make_logits((4, 4), scale=1.5).requires_grad_()
    target = torch.tensor([0, 3, -100, 1])

    def fn(x: Tensor) -> Tensor:
        return logit_adjusted_loss(x, target, COUNTS, tau=tau, reduction="none")

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,))


def test_gradcheck_4d() -> None:
    logits = make_logits((2, 4, 2, 2), scale=1.5).requires_grad_()
    target = make_target((2, 4, 2, 2), ignore_index=-100)
    assert gradcheck(lambda x: balanced_softmax_loss(x, target, COUNTS), (logits,))


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])
C3 = [10, 5, 1]

ERROR_CASES: ErrorCases = {
    "zero_count": (
        lambda: logit_adjusted_loss(X, Y, [10, 0, 3]),
        ValueError,
        "Expected every entry of `class_counts` to be >= 1 (the log prior of a class without samples is -inf), "
        "but got 0 for classes [1]",
    ),
    "negative_count": (
        lambda: balanced_softmax_loss(X, Y, [10, -2, 3]),
        ValueError,
        "Expected every entry of `class_counts` to be a whole number >= 0",
    ),
    "nan_count": (
        lambda: logit_adjusted_loss(X, Y, torch.tensor([10.0, float("nan"), 3.0])),
        ValueError,
        "but got nan at index 1",
    ),
    "fractional_count": (
        lambda: logit_adjusted_loss(X, Y, [10, 2.5, 3]),  # type: ignore[list-item]
        ValueError,
        "but got 2.5 at index 1",
    ),
    "counts_2d": (
        lambda: logit_adjusted_loss(X, Y, [[10, 2, 3]]),  # type: ignore[list-item]
        ValueError,
        "`class_counts` to be a non-empty 1-d sequence, but got shape (1, 3)",
    ),
    "counts_empty": (lambda: logit_adjusted_loss(X, Y, []), ValueError, "non-empty 1-d sequence"),
    "counts_none": (
        lambda: logit_adjusted_loss(X, Y, None),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `class_counts` to be a sequence or 1-d tensor of sample counts",
    ),
    "counts_strings": (
        lambda: logit_adjusted_loss(X, Y, ["a", "b", "c"]),  # type: ignore[list-item]
        TypeError,
        "but got ['a', 'b', 'c']",
    ),
    "counts_length": (
        lambda: logit_adjusted_loss(X, Y, [10, 5]),
        ValueError,
        "Expected `class_counts` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "tau_inf": (
        lambda: logit_adjusted_loss(X, Y, C3, tau=float("inf")),
        ValueError,
        "Expected argument `tau` to be a finite number",
    ),
    "tau_nan": (lambda: logit_adjusted_loss(X, Y, C3, tau=float("nan")), ValueError, "`tau` to be a finite number"),
    "tau_string": (
        lambda: logit_adjusted_loss(X, Y, C3, tau="1"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `tau` to be a number, but got str '1'",
    ),
    "reduction": (
        lambda: logit_adjusted_loss(X, Y, C3, reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "target_out_of_range": (
        lambda: balanced_softmax_loss(X, torch.tensor([0, 3, 1, 1]), C3),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "float_target": (
        lambda: logit_adjusted_loss(X, torch.zeros(4), C3),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
    "ignore_index_float": (
        lambda: logit_adjusted_loss(X, Y, C3, ignore_index=1.5),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float 1.5",
    ),
    "validate_args_string": (
        lambda: logit_adjusted_loss(X, Y, C3, validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `validate_args` to be True or False, but got str 'no'",
    ),
    "input_1d": (
        lambda: logit_adjusted_loss(torch.zeros(4), Y, C3),
        ValueError,
        "Expected `input` of shape (N, C) or (N, C, d1, ...), but got shape (4,)",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_class_counts_tensor_names_why_a_class_needs_samples() -> None:
    assert_raises_message(
        lambda: checked_class_counts([1, 0], "because"),
        ValueError,
        "to be >= 1 (because), but got 0 for classes [1]",
    )
    counts = checked_class_counts(torch.tensor([3, 1]), "-")
    torch.testing.assert_close(counts, torch.tensor([3.0, 1.0], dtype=torch.float64))
