"""Center loss and the moving-average center update against plain float64 references."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional import center_loss, center_loss_output, update_centers_
from tests.helpers import (
    HALF_DTYPES,
    REDUCTIONS,
    ErrorCases,
    assert_raises_message,
    make_embedding_case,
    parametrize_error_cases,
    reduce,
)


def make_case(
    n: int = 10, d: int = 4, c: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Features, their targets and the centers (of this file's default sizes)."""
    return make_embedding_case(n, d, c, seed, dtype)


def center_reference_matrix(features: Tensor, target: Tensor, centers: Tensor) -> Tensor:
    """Per-sample loss from the full N x C matrix of half squared distances, read at each sample's class."""
    distances = 0.5 * ((features.double().unsqueeze(1) - centers.double().unsqueeze(0)) ** 2).sum(dim=2)
    return distances[torch.arange(len(target)), target]


def center_reference_loop(features: Tensor, target: Tensor, centers: Tensor) -> Tensor:
    values = []
    for x, y in zip(features.double().tolist(), target.tolist(), strict=True):
        values.append(0.5 * sum((a - b) ** 2 for a, b in zip(x, centers.double()[y].tolist(), strict=True)))
    return torch.tensor(values, dtype=torch.float64)


def update_reference(centers: Tensor, features: Tensor, target: Tensor, center_lr: float) -> Tensor:
    """c_j <- c_j - lr * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), class by class."""
    new = centers.double().clone()
    for j in range(centers.shape[0]):
        members = features.double()[target == j]
        n_j = members.shape[0]
        delta = (centers.double()[j] - members).sum(dim=0) / (1 + n_j)
        new[j] = centers.double()[j] - center_lr * delta
    return new


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("n", "d", "c"), [(10, 4, 5), (1, 1, 2), (7, 3, 20)], ids=["n10_d4_c5", "n1_d1_c2", "n7_c20"])
def test_center_loss_matches_references(n: int, d: int, c: int, reduction: str) -> None:
    features, target, centers = make_case(n, d, c)
    per_sample = center_reference_matrix(features, target, centers)
    torch.testing.assert_close(per_sample, center_reference_loop(features, target, centers))
    expected = reduce(per_sample, reduction)
    got = center_loss(features, target, centers, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_center_loss_gradients_match_reference() -> None:
    features, target, centers = make_case()
    features.requires_grad_()
    centers.requires_grad_()
    expected = torch.autograd.grad(center_reference_matrix(features, target, centers).mean(), (features, centers))
    got = torch.autograd.grad(center_loss(features, target, centers), (features, centers))
    for got_grad, expected_grad in zip(got, expected, strict=True):
        torch.testing.assert_close(got_grad, expected_grad)
    # analytically: d/dx_i = (x_i - c_{y_i}) / N
    torch.testing.assert_close(got[0], (features - centers[target]).detach() / len(target))


def test_center_loss_is_never_negative() -> None:
    features, target, centers = make_case(n=64, d=8, c=6)
    features[:6] = centers[target[:6]]  # some samples exactly on their center
    per_sample = center_loss(features, target, centers, reduction="none")
    assert bool((per_sample >= 0).all())
    assert bool((per_sample[:6] == 0).all())
    huge = center_loss(features * 1e150, target, centers, reduction="none")
    assert bool((huge >= 0).all())


def test_output_fields() -> None:
    features, target, centers = make_case()
    out = center_loss_output(features, target, centers)
    assert out.per_sample.shape == (10,)
    assert out.p_t is None
    assert out.valid.all()
    assert out.valid.shape == (10,)
    assert out.task == "multiclass"
    assert out.num_classes == 5
    assert out.target is target


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_is_zero(reduction: str) -> None:
    features = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    centers = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = center_loss(features, torch.zeros(0, dtype=torch.long), centers, reduction=reduction)
    assert bool((loss == 0).all())
    assert loss.shape == (() if reduction != "none" else (0,))
    (center_grad,) = torch.autograd.grad(loss.sum(), centers)
    assert bool((center_grad == 0).all())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_features_and_centers(reduction: str) -> None:
    features, target, centers = make_case(n=5, d=3, c=4)
    features.requires_grad_()
    centers.requires_grad_()

    def fn(x: Tensor, c: Tensor) -> Tensor:
        return center_loss(x, target, c, reduction=reduction)

    assert gradcheck(fn, (features, centers))
    assert gradgradcheck(fn, (features, centers), fast_mode=True)


# -- moving-average update ------------------------------------------------------------------------------


@pytest.mark.parametrize("center_lr", [0.0, 0.1, 0.5, 1.0])
def test_update_centers_matches_formula(center_lr: float) -> None:
    features, target, centers = make_case(n=12, c=6)
    target[target == 5] = 0  # class 5 has no sample: it must not move
    expected = update_reference(centers, features, target, center_lr)
    updated = centers.clone()
    returned = update_centers_(updated, features, target, center_lr)
    assert returned is updated  # in place
    torch.testing.assert_close(updated, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(updated[5], centers[5], rtol=0, atol=0)
    if center_lr == 0.0:
        torch.testing.assert_close(updated, centers, rtol=0, atol=0)


def test_update_centers_float32_centers_with_float64_features() -> None:
    features, target, centers = make_case()
    centers32 = centers.float()
    update_centers_(centers32, features, target, 0.5)
    assert centers32.dtype == torch.float32
    torch.testing.assert_close(
        centers32.double(), update_reference(centers.float(), features, target, 0.5), rtol=1e-6, atol=1e-6
    )


def test_update_centers_does_not_track_gradients() -> None:
    features, target, centers = make_case()
    features.requires_grad_()
    update_centers_(centers, features, target, 0.5)
    assert not centers.requires_grad
    assert centers.grad_fn is None


def test_update_centers_empty_batch_changes_nothing() -> None:
    _, _, centers = make_case()
    before = centers.clone()
    update_centers_(centers, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long), 0.5)
    torch.testing.assert_close(centers, before, rtol=0, atol=0)


# -- numerics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
def test_half_precision_features_are_computed_in_float32(dtype: torch.dtype) -> None:
    features, target, centers = make_case(dtype=torch.float32)
    low = features.to(dtype)
    got = center_loss(low, target, centers)
    torch.testing.assert_close(got.float(), center_loss(features, target, centers), rtol=1e-2, atol=1e-2)
    assert got.dtype == torch.float32


def test_float16_features_far_from_their_center_do_not_overflow() -> None:
    # 0.5 * 4 * 300^2 = 180000 is beyond float16 (max 65504) but an ordinary float32 value
    features = torch.full((2, 4), 300.0, dtype=torch.float16)
    centers = torch.zeros(3, 4)
    got = center_loss(features, torch.tensor([0, 1]), centers)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.float(), torch.tensor(180000.0))


def test_cpu_autocast_matches_float32() -> None:
    features, target, centers = make_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = center_loss(features, target, centers)
    torch.testing.assert_close(got.float(), center_loss(features, target, centers), rtol=1e-2, atol=1e-2)


def test_nan_input_propagates() -> None:
    features, target, centers = make_case(dtype=torch.float32)
    features[3, 0] = float("nan")
    assert torch.isnan(center_loss(features, target, centers))
    assert torch.isnan(center_loss(features, target, centers, reduction="none")[3])


# -- bad input ------------------------------------------------------------------------------------------

X, Y, C = make_case(n=4, d=3, c=5, dtype=torch.float32)

ERROR_CASES: ErrorCases = {
    "feature_dim_mismatch": (
        lambda: center_loss(torch.zeros(4, 2), Y, C),
        ValueError,
        "`features` of shape (N, 3), but got shape (4, 2)",
    ),
    "centers_1d": (
        lambda: center_loss(X, Y, torch.zeros(3)),
        ValueError,
        "`centers` of shape (num_classes, feature_dim), but got (3,)",
    ),
    "batch_mismatch": (
        lambda: center_loss(X, torch.tensor([0, 1, 2]), C),
        ValueError,
        "`target` of shape (4,) to match `features` of shape (4, 3), but got shape (3,)",
    ),
    "class_out_of_range": (
        lambda: center_loss(X, torch.tensor([0, 1, 9, 0]), C),
        ValueError,
        "`target` class index to be in [0, 4], but got 9",
    ),
    "negative_class": (
        lambda: center_loss(X, torch.tensor([0, -3, 1, 0]), C),
        ValueError,
        "`target` class index to be in [0, 4], but got -3",
    ),
    "float_target": (lambda: center_loss(X, torch.zeros(4), C), TypeError, "`target` to hold integer class indices"),
    "reduction": (
        lambda: center_loss(X, Y, C, reduction="mean_per_class"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none']",
    ),
    "center_lr_above_1": (
        lambda: update_centers_(C.clone(), X, Y, center_lr=1.5),
        ValueError,
        "`center_lr` to be a number in [0, 1], but got 1.5",
    ),
    "center_lr_negative": (
        lambda: update_centers_(C.clone(), X, Y, center_lr=-0.1),
        ValueError,
        "`center_lr` to be a number in [0, 1], but got -0.1",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
