"""FocalLoss and BinaryFocalLoss modules: identities with torch's modules, module == function, torch.compile."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lossplug.functional import binary_focal_loss_output, class_weights_from_counts, focal_loss_output
from lossplug.losses import BinaryFocalLoss, FocalLoss
from tests.helpers import (
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_compiled_matches_eager,
    assert_raises_message,
    ignore_kwargs,
    make_float32_logits,
    make_target,
    parametrize_error_cases,
)

SHAPES = {"2d": (8, 4), "4d": (2, 4, 3, 2)}
IGNORE = {"no_ignore": None, "ignore_-100": -100, "ignore_class_2": 2}
ALPHA = [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gamma_0_equals_torch_cross_entropy_with_alpha_weight(
    shape: tuple[int, ...], reduction: str, with_alpha: bool, ignore_index: int | None
) -> None:
    kwargs = {"reduction": reduction, **ignore_kwargs(ignore_index)}
    weight = torch.tensor(ALPHA) if with_alpha else None
    x = make_float32_logits(shape).requires_grad_()
    y = make_target(shape, ignore_index)
    expected = nn.CrossEntropyLoss(weight=weight, **kwargs)(x, y)  # type: ignore[arg-type]
    got = FocalLoss(gamma=0.0, alpha=ALPHA if with_alpha else None, **kwargs)(x, y)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5], ids=["gamma_0", "gamma_0.5", "gamma_2", "gamma_3.5"])
def test_focal_module_equals_function(gamma: float, reduction: str) -> None:
    x = make_float32_logits((2, 4, 3, 2))
    y = make_target((2, 4, 3, 2), ignore_index=-100)
    loss = FocalLoss(gamma=gamma, alpha=ALPHA, reduction=reduction)  # type: ignore[arg-type]
    out = loss.evaluate(x, y)
    expected = focal_loss_output(x, y, gamma=gamma, alpha=ALPHA, reduction=reduction)  # type: ignore[arg-type]
    for got_field, expected_field in zip(out, expected, strict=True):
        if isinstance(got_field, Tensor):
            torch.testing.assert_close(got_field, expected_field)
        else:
            assert got_field == expected_field


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(9,), (5, 3), (2, 3, 2, 2)], ids=["1d", "2d", "4d"])
def test_binary_gamma_0_no_alpha_equals_torch_bce_with_logits(shape: tuple[int, ...], reduction: str) -> None:
    x = make_float32_logits(shape).requires_grad_()
    y = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    expected = nn.BCEWithLogitsLoss(reduction=reduction)(x, y)
    got = BinaryFocalLoss(gamma=0.0, alpha=None, reduction=reduction)(x, y)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)


# normalization="positives" only with "mean": with another reduction it would change nothing, an error
@pytest.mark.parametrize(
    ("reduction", "normalization"),
    [("mean", "elements"), ("sum", "elements"), ("none", "elements"), ("mean", "positives")],
)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0], ids=["gamma_0", "gamma_0.5", "gamma_2"])
def test_binary_focal_module_equals_function(gamma: float, reduction: str, normalization: str) -> None:
    x = make_float32_logits((6, 3))
    y = (torch.rand(6, 3, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    kwargs = {"gamma": gamma, "alpha": 0.25, "reduction": reduction, "normalization": normalization}
    out = BinaryFocalLoss(**kwargs).evaluate(x, y)  # type: ignore[arg-type]
    expected = binary_focal_loss_output(x, y, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(out.per_sample, expected.per_sample)
    torch.testing.assert_close(out.p_t, expected.p_t)


@pytest.mark.parametrize(
    "target",
    [torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), torch.zeros(2, 3)],
    ids=["three_positives", "no_positives"],
)
def test_binary_focal_positives_normalization(target: Tensor) -> None:
    x = make_float32_logits((2, 3))
    total = BinaryFocalLoss(reduction="sum")(x, target)
    got = BinaryFocalLoss(normalization="positives")(x, target)
    torch.testing.assert_close(got, total / max(1.0, float(target.sum())))


def test_alpha_takes_any_finite_non_negative_weights() -> None:
    # per-class weights like torch's `weight`, not probabilities: at gamma=0 focal is weighted cross-entropy
    alpha = [1.0, 2.0, 5.0, 0.0]
    x, y = make_float32_logits((6, 4)), make_target((6, 4))
    expected = nn.CrossEntropyLoss(weight=torch.tensor(alpha))(x, y)
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=alpha)(x, y), expected)


def test_beta_is_recorded_as_given_and_defaults_for_effective_number() -> None:
    counts = [100, 10, 1]
    default = FocalLoss(alpha="effective_number")
    assert default.init_args["beta"] is None
    default.set_class_counts(counts)
    assert default.alpha is not None
    torch.testing.assert_close(default.alpha, class_weights_from_counts(counts, "effective_number", beta=0.999))
    given = FocalLoss(alpha="effective_number", beta=0.9)
    assert given.init_args["beta"] == 0.9
    given.set_class_counts(counts)
    assert given.alpha is not None
    torch.testing.assert_close(given.alpha, class_weights_from_counts(counts, "effective_number", beta=0.9))
    assert type(given)(**given.init_args).beta == 0.9
    assert FocalLoss(alpha=[0.5, 0.5]).beta is None


def test_alpha_is_a_float32_buffer() -> None:
    loss = FocalLoss(alpha=ALPHA)
    assert loss.alpha is not None
    assert loss.alpha.dtype == torch.float32
    assert "alpha" in dict(loss.named_buffers())
    assert FocalLoss().alpha is None
    assert "alpha" not in FocalLoss().state_dict()
    # the binary alpha is a number, not a tensor
    assert BinaryFocalLoss(alpha=0.25).alpha == 0.25


# -- torch.compile ----------------------------------------------------------------------------------------


COMPILE_CASES = {
    "focal": (lambda: FocalLoss(gamma=2.0, alpha=ALPHA), lambda: make_target((8, 4))),
    "focal_gamma_0.5_ignore": (lambda: FocalLoss(gamma=0.5), lambda: make_target((8, 4), ignore_index=-100)),
    "binary_focal": (
        lambda: BinaryFocalLoss(gamma=2.0, alpha=0.25),
        lambda: (torch.rand(8, 4, generator=torch.Generator().manual_seed(4)) > 0.5).float(),
    ),
    "binary_focal_positives": (
        lambda: BinaryFocalLoss(gamma=0.5, normalization="positives"),
        lambda: torch.rand(8, 4, generator=torch.Generator().manual_seed(5)),
    ),
}


@pytest.mark.parametrize(("make", "target"), COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_compile_fullgraph_forward_and_backward(
    make: Callable[[], nn.Module], target: Callable[[], Tensor]
) -> None:
    assert_compiled_matches_eager(make(), lambda: make_float32_logits((8, 4)), target())


# -- bad input ------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

CONSTRUCTION_ERRORS: ErrorCases = {
    "gamma_negative": (lambda: FocalLoss(gamma=-1.0), ValueError, "`gamma` to be a number >= 0, but got -1.0"),
    "gamma_string": (lambda: FocalLoss(gamma="2"), TypeError, "`gamma` to be a number, but got str '2'"),  # type: ignore[arg-type]
    "scalar_alpha": (
        lambda: FocalLoss(alpha=0.25),  # type: ignore[arg-type]
        ValueError,
        "but got the scalar 0.25. The multi-class form takes one weight per class: a single number would only "
        "rescale the loss",
    ),
    "alpha_negative": (
        lambda: FocalLoss(alpha=[-0.2, 0.2]),
        ValueError,
        "every entry of `alpha` to be finite and >= 0, but got -0.2",
    ),
    "alpha_unknown_strategy": (
        lambda: FocalLoss(alpha="balanced"),  # type: ignore[arg-type]
        ValueError,
        "`alpha` to be one weight per class or one of ['inverse_frequency', 'effective_number'], but got 'balanced'",
    ),
    "beta": (lambda: FocalLoss(alpha="effective_number", beta=-0.1), ValueError, "`beta` to be a number in [0, 1)"),
    "reduction": (
        lambda: FocalLoss(reduction="avg"),
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),  # type: ignore[arg-type]
    "binary_gamma_negative": (
        lambda: BinaryFocalLoss(gamma=-0.1),
        ValueError,
        "`gamma` to be a number >= 0, but got -0.1",
    ),
    "binary_alpha_above_1": (
        lambda: BinaryFocalLoss(alpha=1.5),
        ValueError,
        "`alpha` to be a number in [0, 1], but got 1.5",
    ),
    "binary_alpha_negative": (
        lambda: BinaryFocalLoss(alpha=-1.0),
        ValueError,
        "`alpha` to be a number in [0, 1], but got -1.0",
    ),
    "binary_alpha_list": (
        lambda: BinaryFocalLoss(alpha=[0.25, 0.75]),
        ValueError,
        "`alpha` to be a single number in [0, 1]",
    ),  # type: ignore[arg-type]
    "binary_normalization": (
        lambda: BinaryFocalLoss(normalization="num_pos"),
        ValueError,
        "`normalization` to be one of ['elements', 'positives'], but got 'num_pos'",
    ),  # type: ignore[arg-type]
    "binary_reduction": (lambda: BinaryFocalLoss(reduction="avg"), ValueError, "`reduction` to be one of"),  # type: ignore[arg-type]
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


CALL_ERRORS: ErrorCases = {
    "alpha_length": (
        lambda: FocalLoss(alpha=[0.5, 0.5])(X, Y),
        ValueError,
        "`alpha` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "float_target": (
        lambda: FocalLoss()(X, torch.zeros(4)),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
    "batch_mismatch": (
        lambda: FocalLoss()(X, Y[:2]),
        ValueError,
        "`target` of shape (4,) to match `input` of shape (4, 3)",
    ),
    "out_of_range": (
        lambda: FocalLoss()(X, torch.tensor([0, 3, 1, 1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "negative": (lambda: FocalLoss()(X, torch.tensor([0, -5, 1, 1])), ValueError, "but got -5"),
    "binary_integer_target": (
        lambda: BinaryFocalLoss()(X, torch.ones(4, 3, dtype=torch.long)),
        TypeError,
        "`target` to be a floating-point tensor",
    ),
    "binary_shape_mismatch": (
        lambda: BinaryFocalLoss()(X, torch.ones(4)),
        ValueError,
        "`target` to have the same shape as `input` (4, 3)",
    ),
    "binary_target_range": (
        lambda: BinaryFocalLoss()(X, torch.full((4, 3), 1.01)),
        ValueError,
        "`target` value to be in [0, 1]",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
