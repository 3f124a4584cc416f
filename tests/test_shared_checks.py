"""The argument and tensor checks of lossplug/shared_checks.py, and the table of bad inputs they refuse.

:data:`BAD_INPUTS` is what a demanding user tried (issue 16): every bad value goes through the public
losses and functions and must fail at once, with the exception type and the one-line message listed.
The same table, as markdown, is in the README.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, vmap

from lossplug.functional import (
    arcface_loss,
    balanced_cross_entropy,
    binary_cross_entropy,
    binary_focal_loss,
    binary_focal_loss_output,
    class_weights_from_counts,
    cross_entropy,
    focal_loss,
    update_centers_,
)
from lossplug.losses import (
    ArcFaceLoss,
    BalancedCrossEntropyLoss,
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    CenterLoss,
    CrossEntropyLoss,
    FocalLoss,
)
from lossplug.shared_checks import (
    check_bool,
    check_class_counts,
    check_int,
    check_number,
    check_probability_target,
    functorch_transform_active,
    is_traced,
)
from tests.helpers import ErrorCases, assert_raises_message, parametrize_error_cases

INF, NAN = float("inf"), float("nan")
X = torch.zeros(4, 3)  # logits: 4 samples, 3 classes
Y = torch.tensor([0, 1, 2, 0])  # class indices
T = torch.zeros(4, 3)  # binary targets
T_NAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, NAN, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
SOFT = torch.full((4, 3), 1 / 3)  # class probabilities
SOFT_NAN = torch.tensor([[1.0, 0.0, 0.0], [NAN, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
E, W = torch.ones(4, 2), torch.eye(3, 2)  # embeddings (N, D) and class weights (C, D)


def _finite(name: str, interval: str, got: str) -> str:
    return f"Expected argument `{name}` to be a finite number {interval}, but got {got}."


def _entry(name: str, got: str, index: int) -> str:
    return f"Expected every entry of `{name}` to be finite and >= 0, but got {got} at index {index}."


def _bool(name: str, got: str) -> str:
    return f"Expected argument `{name}` to be True or False, but got {got}."


_TARGET_NAN = "Expected every `target` value to be in [0, 1], but got nan."
_COUNTS = "Expected every entry of `class_counts` to be a whole number >= 0 (training samples of the class), but got"
_POSITIVES = (
    "Expected argument `normalization` to be 'elements' with reduction={0!r}, but got 'positives', which divides "
    "the mean by the number of positives; with reduction={0!r} it has no effect: use reduction='mean'."
)
_BETA = (
    "Expected argument `beta` to be None with {0}, but got 0.9: beta is the parameter of alpha='effective_number' "
    "and does nothing otherwise. Drop `beta`, or use alpha='effective_number'."
)
_CENTER_LR = (
    "Expected argument `center_lr` to be None with update='optimizer', but got 0.1: it is the step of "
    "update='moving_average', and the optimizer moves these centers. Drop `center_lr`, or give the centers "
    "their own learning rate with `lr`."
)
_IGNORE_SOFT = (
    "Expected argument `ignore_index` to be left at -100 with class-probability targets (a float `target` has no "
    "class index to ignore), but got {0}: drop `ignore_index`, or pass class indices (int64) as `target`."
)

#: Bad inputs through the public API: name -> (call, exception type, message).
BAD_INPUTS: ErrorCases = {
    # -- numbers are finite ---------------------------------------------------------------------------------
    "gamma_inf": (lambda: FocalLoss(gamma=INF), ValueError, _finite("gamma", ">= 0", "inf")),
    "gamma_1e400": (lambda: FocalLoss(gamma=1e400), ValueError, _finite("gamma", ">= 0", "inf")),
    "gamma_nan": (lambda: FocalLoss(gamma=NAN), ValueError, _finite("gamma", ">= 0", "nan")),
    "gamma_inf_function": (lambda: focal_loss(X, Y, gamma=INF), ValueError, _finite("gamma", ">= 0", "inf")),
    "binary_gamma_inf": (lambda: BinaryFocalLoss(gamma=INF), ValueError, _finite("gamma", ">= 0", "inf")),
    "binary_gamma_inf_function": (
        lambda: binary_focal_loss(X, T, gamma=INF),
        ValueError,
        _finite("gamma", ">= 0", "inf"),
    ),
    "binary_alpha_inf": (lambda: BinaryFocalLoss(alpha=INF), ValueError, _finite("alpha", "in [0, 1]", "inf")),
    "arcface_scale_inf": (lambda: ArcFaceLoss(3, 2, scale=INF), ValueError, _finite("scale", "> 0", "inf")),
    "arcface_scale_inf_function": (
        lambda: arcface_loss(E, Y, W, scale=INF),
        ValueError,
        _finite("scale", "> 0", "inf"),
    ),
    "arcface_margin_nan": (
        lambda: ArcFaceLoss(3, 2, margin=NAN),
        ValueError,
        _finite("margin", "in [0, pi/2)", "nan"),
    ),
    "label_smoothing_nan": (
        lambda: CrossEntropyLoss(label_smoothing=NAN),
        ValueError,
        _finite("label_smoothing", "in [0, 1]", "nan"),
    ),
    "pos_weight_inf": (
        lambda: BinaryCrossEntropyLoss(pos_weight=INF),
        ValueError,
        _finite("pos_weight", ">= 0", "inf"),
    ),
    "center_lr_inf": (
        lambda: CenterLoss(3, 2, update="moving_average", center_lr=INF),
        ValueError,
        _finite("center_lr", "in [0, 1]", "inf"),
    ),
    "center_lr_nan_function": (
        lambda: update_centers_(W.clone(), E, Y, center_lr=NAN),
        ValueError,
        _finite("center_lr", "in [0, 1]", "nan"),
    ),
    "beta_inf": (
        lambda: FocalLoss(alpha="effective_number", beta=INF),
        ValueError,
        _finite("beta", "in [0, 1)", "inf"),
    ),
    # -- class counts are whole numbers >= 0 ----------------------------------------------------------------
    "class_counts_nan": (
        lambda: class_weights_from_counts([10, NAN, 3], "inverse_frequency"),
        ValueError,
        f"{_COUNTS} nan at index 1.",
    ),
    "class_counts_inf": (
        lambda: class_weights_from_counts(torch.tensor([10.0, INF]), "effective_number"),
        ValueError,
        f"{_COUNTS} inf at index 1.",
    ),
    "class_counts_negative": (
        lambda: class_weights_from_counts([10, -3], "inverse_frequency"),
        ValueError,
        f"{_COUNTS} -3.0 at index 1.",
    ),
    "class_counts_fractional": (
        lambda: class_weights_from_counts([10, 2.5], "inverse_frequency"),
        ValueError,
        f"{_COUNTS} 2.5 at index 1.",
    ),
    "class_counts_string": (
        lambda: class_weights_from_counts("10,3", "inverse_frequency"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `class_counts` to be a sequence or 1-d tensor of sample counts, but got str '10,3'.",
    ),
    "set_class_counts_nan": (
        lambda: FocalLoss(alpha="inverse_frequency").set_class_counts([10, NAN, 3]),
        ValueError,
        f"{_COUNTS} nan at index 1.",
    ),
    "set_class_counts_nan_already_resolved": (
        lambda: BalancedCrossEntropyLoss(alpha=[1.0, 2.0]).set_class_counts([10, NAN]),
        ValueError,
        f"{_COUNTS} nan at index 1.",
    ),
    # -- binary targets: NaN is not in [0, 1] ---------------------------------------------------------------
    "bce_target_nan": (lambda: binary_cross_entropy(X, T_NAN), ValueError, _TARGET_NAN),
    "bce_module_target_nan": (lambda: BinaryCrossEntropyLoss()(X, T_NAN), ValueError, _TARGET_NAN),
    "binary_focal_target_nan": (lambda: binary_focal_loss(X, T_NAN), ValueError, _TARGET_NAN),
    "binary_focal_output_target_nan": (lambda: binary_focal_loss_output(X, T_NAN), ValueError, _TARGET_NAN),
    "binary_focal_module_target_nan": (lambda: BinaryFocalLoss()(X, T_NAN), ValueError, _TARGET_NAN),
    "cross_entropy_probability_target_nan": (lambda: cross_entropy(X, SOFT_NAN), ValueError, _TARGET_NAN),
    # -- class weights are finite and >= 0, also given to the functions as tensors -------------------------
    "weight_negative_function": (
        lambda: cross_entropy(X, Y, weight=torch.tensor([1.0, -1.0, 1.0])),
        ValueError,
        _entry("weight", "-1.0", 1),
    ),
    "weight_nan_function": (
        lambda: cross_entropy(X, Y, weight=torch.tensor([1.0, 1.0, NAN])),
        ValueError,
        _entry("weight", "nan", 2),
    ),
    "weight_negative_probability_targets_function": (
        lambda: cross_entropy(X, SOFT, weight=torch.tensor([-1.0, 1.0, 1.0])),
        ValueError,
        _entry("weight", "-1.0", 0),
    ),
    "weight_negative": (lambda: CrossEntropyLoss(weight=[1.0, -1.0, 1.0]), ValueError, _entry("weight", "-1.0", 1)),
    "weight_nan": (lambda: CrossEntropyLoss(weight=[1.0, NAN, 1.0]), ValueError, _entry("weight", "nan", 1)),
    "alpha_inf": (lambda: FocalLoss(alpha=[1.0, INF, 1.0]), ValueError, _entry("alpha", "inf", 1)),
    "alpha_negative_function": (
        lambda: focal_loss(X, Y, alpha=torch.tensor([1.0, 1.0, -0.5])),
        ValueError,
        _entry("alpha", "-0.5", 2),
    ),
    "balanced_alpha_nan_function": (
        lambda: balanced_cross_entropy(X, Y, alpha=torch.tensor([NAN, 1.0, 1.0])),
        ValueError,
        _entry("alpha", "nan", 0),
    ),
    "balanced_alpha_negative": (
        lambda: BalancedCrossEntropyLoss(alpha=[1.0, -2.0, 1.0]),
        ValueError,
        _entry("alpha", "-2.0", 1),
    ),
    "pos_weight_negative_function": (
        lambda: binary_cross_entropy(X, T, pos_weight=torch.tensor([1.0, -1.0, 1.0])),
        ValueError,
        _entry("pos_weight", "-1.0", 1),
    ),
    "pos_weight_number_function": (
        lambda: binary_cross_entropy(X, T, pos_weight=2.0),  # type: ignore[arg-type]
        TypeError,
        "Expected `pos_weight` to be a tensor (one weight, or one per class), but got float. "
        "`BinaryCrossEntropyLoss(pos_weight=...)` also takes numbers.",
    ),
    "pos_weight_entry_nan": (
        lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, NAN]),
        ValueError,
        _entry("pos_weight", "nan", 1),
    ),
    # -- integers are integers, booleans are booleans -------------------------------------------------------
    "ignore_index_float": (
        lambda: CrossEntropyLoss(ignore_index=1.5),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float 1.5.",
    ),
    "ignore_index_whole_float": (
        lambda: FocalLoss(ignore_index=-100.0),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float -100.0.",
    ),
    "ignore_index_bool": (
        lambda: BalancedCrossEntropyLoss(alpha=[1.0, 1.0], ignore_index=True),
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got bool True.",
    ),
    "ignore_index_float_function": (
        lambda: cross_entropy(X, Y, ignore_index=1.5),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float 1.5.",
    ),
    "ignore_index_float_focal_function": (
        lambda: focal_loss(X, Y, ignore_index=0.5),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float 0.5.",
    ),
    "validate_args_string": (
        lambda: CrossEntropyLoss(validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_int": (
        lambda: FocalLoss(validate_args=0),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "int 0"),
    ),
    "validate_args_balanced": (
        lambda: BalancedCrossEntropyLoss(alpha=[1.0, 1.0], validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_bce": (
        lambda: BinaryCrossEntropyLoss(validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_binary_focal": (
        lambda: BinaryFocalLoss(validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_arcface": (
        lambda: ArcFaceLoss(3, 2, validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_center": (
        lambda: CenterLoss(3, 2, validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_function": (
        lambda: cross_entropy(X, Y, validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "str 'no'"),
    ),
    "validate_args_binary_focal_function": (
        lambda: binary_focal_loss(X, T, validate_args=None),  # type: ignore[arg-type]
        TypeError,
        _bool("validate_args", "NoneType None"),
    ),
    "easy_margin_string": (
        lambda: ArcFaceLoss(3, 2, easy_margin="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("easy_margin", "str 'no'"),
    ),
    "easy_margin_string_function": (
        lambda: arcface_loss(E, Y, W, easy_margin="no"),  # type: ignore[arg-type]
        TypeError,
        _bool("easy_margin", "str 'no'"),
    ),
    # -- arguments that would do nothing --------------------------------------------------------------------
    "positives_with_sum": (
        lambda: BinaryFocalLoss(normalization="positives", reduction="sum"),
        ValueError,
        _POSITIVES.format("sum"),
    ),
    "positives_with_none": (
        lambda: BinaryFocalLoss(normalization="positives", reduction="none"),
        ValueError,
        _POSITIVES.format("none"),
    ),
    "positives_with_sum_function": (
        lambda: binary_focal_loss(X, T, reduction="sum", normalization="positives"),
        ValueError,
        _POSITIVES.format("sum"),
    ),
    "positives_with_none_output_function": (
        lambda: binary_focal_loss_output(X, T, reduction="none", normalization="positives"),
        ValueError,
        _POSITIVES.format("none"),
    ),
    "beta_with_alpha_list": (
        lambda: FocalLoss(alpha=[0.2, 0.8], beta=0.9),
        ValueError,
        _BETA.format("per-class alpha weights"),
    ),
    "beta_without_alpha": (lambda: FocalLoss(beta=0.9), ValueError, _BETA.format("alpha=None")),
    "beta_with_inverse_frequency": (
        lambda: BalancedCrossEntropyLoss(alpha="inverse_frequency", beta=0.9),
        ValueError,
        _BETA.format("alpha='inverse_frequency'"),
    ),
    "center_lr_with_optimizer": (lambda: CenterLoss(3, 2, center_lr=0.1), ValueError, _CENTER_LR),
    "lr_with_moving_average": (
        lambda: CenterLoss(3, 2, update="moving_average", lr=0.1),
        ValueError,
        "Expected argument `lr` to be None with update='moving_average', but got 0.1: it is the learning rate of "
        "centers the optimizer trains, and these move by their moving average. Use `center_lr` instead.",
    ),
    "arcface_lr_zero": (
        lambda: ArcFaceLoss(3, 2, lr=0.0),
        ValueError,
        "Expected argument `lr` to be a number > 0, but got 0.0.",
    ),
    "ignore_index_with_probability_targets": (
        lambda: CrossEntropyLoss(ignore_index=0)(X, SOFT),
        ValueError,
        _IGNORE_SOFT.format(0),
    ),
    "ignore_index_with_probability_targets_function": (
        lambda: cross_entropy(X, SOFT, ignore_index=3),
        ValueError,
        _IGNORE_SOFT.format(3),
    ),
    # -- state the transforms cannot carry ------------------------------------------------------------------
    "moving_average_under_torch_func": (
        lambda: grad(lambda e: CenterLoss(3, 2, update="moving_average")(e, Y))(E),
        RuntimeError,
        "CenterLoss(update='moving_average') moves its centers in place in training mode, which a torch.func "
        "transform (grad, vmap) cannot do. Use update='optimizer' (the centers are then a parameter, with per-sample "
        "gradients), or call `loss.eval()` (no update) under the transform.",
    ),
}


@parametrize_error_cases(BAD_INPUTS)
def test_bad_input_raises(call: object, error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)  # type: ignore[arg-type]


# -- the checks themselves --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e400])
def test_check_number_refuses_non_finite_values_in_any_interval(value: float) -> None:
    for low, high in ((-math.inf, math.inf), (0.0, math.inf), (0.0, 1.0)):
        with pytest.raises(ValueError, match="to be a finite number"):
            check_number("x", value, low, high)


def test_check_number_keeps_its_message_for_finite_values_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"^Expected argument `x` to be a number >= 0, but got -1\.$"):
        check_number("x", -1, 0.0)
    assert check_number("x", 3, 0.0) == 3.0


@pytest.mark.parametrize("value", ["no", "", 0, 1, None, 1.0, torch.tensor(True)])
def test_check_bool_takes_only_bools(value: object) -> None:
    with pytest.raises(TypeError, match="to be True or False"):
        check_bool("flag", value)


def test_check_bool_and_check_int_return_their_value() -> None:
    assert check_bool("flag", True) is True
    assert check_bool("flag", False) is False
    assert check_int("index", -100) == -100
    assert check_int("index", torch.tensor(3).item()) == 3


@pytest.mark.parametrize("value", [1.5, 1.0, True, "1", None])
def test_check_int_takes_only_integers(value: object) -> None:
    with pytest.raises(TypeError, match="to be an integer"):
        check_int("index", value)


def test_check_class_counts_returns_float64_and_allows_zero() -> None:
    counts = check_class_counts(torch.tensor([3, 0, 7]))
    assert counts.dtype == torch.float64
    assert counts.tolist() == [3.0, 0.0, 7.0]
    with pytest.raises(ValueError, match="non-empty 1-d"):
        check_class_counts([])


def test_check_probability_target_refuses_nan_only_when_validating() -> None:
    with pytest.raises(ValueError, match="but got nan"):
        check_probability_target(X, T_NAN, validate_args=True)
    check_probability_target(X, T_NAN, validate_args=False)


def test_transform_detection() -> None:
    assert not functorch_transform_active()
    assert not is_traced()
    seen: list[tuple[bool, bool]] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append((functorch_transform_active(), is_traced()))
        return x.sum()

    grad(probe)(torch.zeros(2))
    vmap(probe)(torch.zeros(2, 3))
    assert seen == [(True, True), (True, True)]
    assert not functorch_transform_active()
    compiled = torch.compile(lambda x: x + float(is_traced()), fullgraph=True, backend="eager")
    torch._dynamo.reset()
    assert compiled(torch.zeros(1)).item() == 1.0
