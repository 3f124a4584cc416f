"""CrossEntropyLoss, BalancedCrossEntropyLoss and BinaryCrossEntropyLoss modules against torch's modules."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lossplug.functional import balanced_cross_entropy_output, binary_cross_entropy_output, cross_entropy_output
from lossplug.losses import BalancedCrossEntropyLoss, BinaryCrossEntropyLoss, CrossEntropyLoss
from tests.helpers import (
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_raises_message,
    ignore_kwargs,
    make_float32_logits,
    make_target,
    parametrize_error_cases,
)

SHAPES = {"2d": (6, 4), "4d": (2, 3, 3, 2)}
IGNORE = {"no_ignore": None, "ignore_-100": -100, "ignore_-1": -1, "ignore_class_0": 0}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_loss_matches_torch_module(
    shape: tuple[int, ...], weighted: bool, ignore_index: int | None, label_smoothing: float
) -> None:
    weight = torch.linspace(0.2, 2.0, shape[1]) if weighted else None
    x = make_float32_logits(shape).requires_grad_()
    y = make_target(shape, ignore_index)
    for reduction in REDUCTIONS:
        kwargs = {"label_smoothing": label_smoothing, "reduction": reduction, **ignore_kwargs(ignore_index)}
        expected = nn.CrossEntropyLoss(weight=weight, **kwargs)(x, y)  # type: ignore[arg-type]
        loss = CrossEntropyLoss(weight=None if weight is None else weight.tolist(), **kwargs)  # type: ignore[arg-type]
        out = loss.evaluate(x, y)
        assert_close_with_grad(out.loss, expected, x, rtol=1e-5, atol=1e-6, msg=lambda m, r=reduction: f"{r}: {m}")
        # the module is the function
        function_out = cross_entropy_output(x, y, weight, **kwargs)  # type: ignore[arg-type]
        torch.testing.assert_close(out.loss, function_out.loss)
        torch.testing.assert_close(out.per_sample, function_out.per_sample)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_loss_probability_targets_match_torch_module(
    shape: tuple[int, ...], reduction: str, weighted: bool, label_smoothing: float
) -> None:
    weight = torch.linspace(0.2, 2.0, shape[1]) if weighted else None
    kwargs = {"label_smoothing": label_smoothing, "reduction": reduction}
    x = make_float32_logits(shape)
    y = torch.rand(shape, generator=torch.Generator().manual_seed(2)).softmax(dim=1)
    expected = nn.CrossEntropyLoss(weight=weight, **kwargs)(x, y)  # type: ignore[arg-type]
    got = CrossEntropyLoss(weight=None if weight is None else weight.tolist(), **kwargs)(x, y)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_balanced_cross_entropy_loss_equals_weighted_torch(
    shape: tuple[int, ...], reduction: str, ignore_index: int | None
) -> None:
    alpha = torch.linspace(0.1, 1.0, shape[1])
    kwargs = {"reduction": reduction, **ignore_kwargs(ignore_index)}
    x = make_float32_logits(shape).requires_grad_()
    y = make_target(shape, ignore_index)
    expected = nn.CrossEntropyLoss(weight=alpha, **kwargs)(x, y)  # type: ignore[arg-type]
    loss = BalancedCrossEntropyLoss(alpha=alpha.tolist(), **kwargs)  # type: ignore[arg-type]
    got = loss(x, y)
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, balanced_cross_entropy_output(x, y, alpha, **kwargs).loss)  # type: ignore[arg-type]


@pytest.mark.parametrize("pos_weight", [None, 3.0, [0.5, 1.0, 2.0]], ids=["no_pos_weight", "scalar", "per_class"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3)], ids=["2d", "3d"])
def test_binary_cross_entropy_loss_matches_torch_module(
    shape: tuple[int, ...], reduction: str, pos_weight: float | list[float] | None
) -> None:
    torch_pos_weight = None if pos_weight is None else torch.tensor(pos_weight).reshape(-1)
    x = make_float32_logits(shape).requires_grad_()
    y = torch.rand(shape, generator=torch.Generator().manual_seed(4))
    expected = nn.BCEWithLogitsLoss(pos_weight=torch_pos_weight, reduction=reduction)(x, y)
    loss = BinaryCrossEntropyLoss(pos_weight=pos_weight, reduction=reduction)  # type: ignore[arg-type]
    got = loss(x, y)
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, binary_cross_entropy_output(x, y, loss.pos_weight, reduction).loss)  # type: ignore[arg-type]


def test_binary_cross_entropy_scalar_pos_weight_is_a_one_element_buffer() -> None:
    loss = BinaryCrossEntropyLoss(pos_weight=2)
    assert loss.pos_weight is not None
    torch.testing.assert_close(loss.pos_weight, torch.tensor([2.0]))
    assert "pos_weight" in dict(loss.named_buffers())


def test_balanced_alpha_takes_any_finite_non_negative_weights() -> None:
    # per-class weights like torch's `weight`, not probabilities
    alpha = [1.0, 2.0, 5.0]
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = nn.CrossEntropyLoss(weight=torch.tensor(alpha))(x, y)
    torch.testing.assert_close(BalancedCrossEntropyLoss(alpha=alpha)(x, y), expected)


def test_buffers_move_with_to_float64() -> None:
    loss = CrossEntropyLoss(weight=[1.0, 2.0, 3.0]).to(torch.float64)
    x = make_float32_logits((4, 3)).double()
    y = make_target((4, 3))
    torch.testing.assert_close(
        loss(x, y), nn.functional.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 3.0]).double())
    )


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

CONSTRUCTION_ERRORS: ErrorCases = {
    "ce_reduction": (
        lambda: CrossEntropyLoss(reduction="avg"),
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),  # type: ignore[arg-type]
    "ce_label_smoothing": (
        lambda: CrossEntropyLoss(label_smoothing=1.1),
        ValueError,
        "`label_smoothing` to be a number in [0, 1], but got 1.1",
    ),
    "ce_label_smoothing_negative": (
        lambda: CrossEntropyLoss(label_smoothing=-0.5),
        ValueError,
        "`label_smoothing` to be a number in [0, 1]",
    ),
    "ce_weight_negative": (
        lambda: CrossEntropyLoss(weight=[1.0, -1.0]),
        ValueError,
        "every entry of `weight` to be finite and >= 0, but got -1.0 at index 1",
    ),
    "ce_weight_nan": (
        lambda: CrossEntropyLoss(weight=[1.0, float("nan")]),
        ValueError,
        "every entry of `weight` to be finite and >= 0",
    ),
    "ce_weight_scalar": (lambda: CrossEntropyLoss(weight=2.0), ValueError, "`weight` to be one weight per class"),  # type: ignore[arg-type]
    "ce_weight_2d": (
        lambda: CrossEntropyLoss(weight=[[1.0, 2.0]]),
        ValueError,
        "`weight` to be a non-empty 1-d sequence",
    ),  # type: ignore[list-item]
    "balanced_alpha_none": (
        lambda: BalancedCrossEntropyLoss(alpha=None),
        ValueError,
        "`alpha` to be one weight per class, 'inverse_frequency' or 'effective_number', but got None",
    ),  # type: ignore[arg-type]
    "balanced_unknown_strategy": (
        lambda: BalancedCrossEntropyLoss(alpha="inverse"),
        ValueError,
        "`alpha` to be one weight per class or one of ['inverse_frequency', 'effective_number'], but got 'inverse'",
    ),  # type: ignore[arg-type]
    "balanced_alpha_negative": (
        lambda: BalancedCrossEntropyLoss(alpha=[0.5, -2.0]),
        ValueError,
        "every entry of `alpha` to be finite and >= 0, but got -2.0 at index 1",
    ),
    "balanced_alpha_scalar": (
        lambda: BalancedCrossEntropyLoss(alpha=0.5),
        ValueError,
        "`alpha` to be one weight per class",
    ),  # type: ignore[arg-type]
    "balanced_beta": (
        lambda: BalancedCrossEntropyLoss(alpha="effective_number", beta=1.0),
        ValueError,
        "`beta` to be a number in [0, 1), but got 1.0",
    ),
    "balanced_reduction": (
        lambda: BalancedCrossEntropyLoss(alpha=[0.5, 0.5], reduction="avg"),
        ValueError,
        "`reduction` to be one of",
    ),  # type: ignore[arg-type]
    "bce_pos_weight_negative": (
        lambda: BinaryCrossEntropyLoss(pos_weight=-1.0),
        ValueError,
        "`pos_weight` to be a number >= 0, but got -1.0",
    ),
    "bce_pos_weight_entry_negative": (
        lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, -2.0]),
        ValueError,
        "every entry of `pos_weight` to be finite and >= 0",
    ),
    "bce_reduction": (
        lambda: BinaryCrossEntropyLoss(reduction="elementwise_mean"),
        ValueError,
        "`reduction` to be one of",
    ),  # type: ignore[arg-type]
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


CALL_ERRORS: ErrorCases = {
    "ce_weight_length": (
        lambda: CrossEntropyLoss(weight=[1.0, 2.0])(X, Y),
        ValueError,
        "`weight` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "ce_batch_mismatch": (
        lambda: CrossEntropyLoss()(X, Y[:3]),
        ValueError,
        "`target` of shape (4,) to match `input` of shape (4, 3)",
    ),
    "ce_spatial_mismatch": (
        lambda: CrossEntropyLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)),
        ValueError,
        "`target` of shape (2, 4)",
    ),
    "ce_out_of_range": (
        lambda: CrossEntropyLoss()(X, torch.tensor([0, 1, 3, 0])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "ce_negative": (
        lambda: CrossEntropyLoss(ignore_index=-1)(X, torch.tensor([0, -2, 1, -1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-1, but got -2",
    ),
    "balanced_alpha_length": (
        lambda: BalancedCrossEntropyLoss(alpha=[0.5, 0.5])(X, Y),
        ValueError,
        "`alpha` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "balanced_float_target": (
        lambda: BalancedCrossEntropyLoss(alpha=[0.5, 0.5, 0.5])(X, torch.zeros(4, 3)),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
    "balanced_out_of_range": (
        lambda: BalancedCrossEntropyLoss(alpha=[0.5, 0.5, 0.5])(X, torch.tensor([0, 1, 7, 0])),
        ValueError,
        "but got 7",
    ),
    "bce_integer_target": (
        lambda: BinaryCrossEntropyLoss()(X, torch.zeros(4, 3, dtype=torch.long)),
        TypeError,
        "`target` to be a floating-point tensor",
    ),
    "bce_shape_mismatch": (
        lambda: BinaryCrossEntropyLoss()(X, torch.zeros(3, 3)),
        ValueError,
        "`target` to have the same shape as `input` (4, 3), but got shape (3, 3)",
    ),
    "bce_pos_weight_length": (
        lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0])(X, torch.zeros(4, 3)),
        ValueError,
        "`pos_weight` to have one entry per class (the last dimension of `input`, 3), but got 2 entries",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
