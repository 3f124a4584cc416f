"""ArcFaceLoss module: a learnable weight parameter over the functional ArcFace."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from lossplug.functional import arcface_loss_output
from lossplug.losses import ArcFaceLoss
from tests.helpers import (
    ErrorCases,
    assert_compiled_matches_eager,
    assert_raises_message,
    make_class_indices,
    make_embeddings,
    parametrize_error_cases,
)


def test_weight_is_a_learnable_parameter() -> None:
    loss = ArcFaceLoss(num_classes=5, embedding_dim=4)
    assert isinstance(loss.weight, torch.nn.Parameter)
    assert loss.weight.shape == (5, 4)
    assert loss.weight.requires_grad
    assert bool(torch.isfinite(loss.weight).all())
    assert [name for name, _ in loss.named_parameters()] == ["weight"]
    assert loss.input_kind == "embeddings"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
def test_module_equals_function(easy_margin: bool, reduction: str) -> None:
    loss = ArcFaceLoss(5, 4, scale=16.0, margin=0.4, easy_margin=easy_margin, reduction=reduction)  # type: ignore[arg-type]
    x, y = make_embeddings(8, 4), make_class_indices(8, 5)
    out = loss.evaluate(x, y)
    expected = arcface_loss_output(x, y, loss.weight, 16.0, 0.4, easy_margin, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(out.per_sample, expected.per_sample)
    torch.testing.assert_close(out.p_t, expected.p_t)


def test_margin_0_module_is_cross_entropy_over_scaled_cosines() -> None:
    loss = ArcFaceLoss(5, 4, scale=30.0, margin=0.0)
    x, y = make_embeddings(8, 4), make_class_indices(8, 5)
    cosine = F.normalize(x, dim=1) @ F.normalize(loss.weight, dim=1).T
    torch.testing.assert_close(loss(x, y), F.cross_entropy(30.0 * cosine, y))


def test_gradient_steps_train_the_weight() -> None:
    torch.manual_seed(0)
    loss = ArcFaceLoss(5, 4, scale=8.0, margin=0.3)
    x, y = make_embeddings(8, 4), make_class_indices(8, 5)
    before = loss(x, y).item()
    weight_before = loss.weight.detach().clone()
    for _ in range(5):  # plain SGD on what loss.parameters() hands to an optimizer
        (grad,) = torch.autograd.grad(loss(x, y), list(loss.parameters()))
        with torch.no_grad():
            loss.weight -= 0.5 * grad
    assert not torch.equal(loss.weight.detach(), weight_before)
    assert loss(x, y).item() < before


@pytest.mark.parametrize("margin", [0.0, 0.5], ids=["m_0", "m_0.5"])
def test_embeddings_on_their_class_weight_give_finite_gradients(margin: float) -> None:
    loss = ArcFaceLoss(3, 3, scale=64.0, margin=margin)
    with torch.no_grad():
        loss.weight.copy_(torch.eye(3))
    x = torch.tensor([[5.0, 0.0, 0.0], [0.0, -2.0, 0.0]], requires_grad=True)  # cos theta = 1 and -1
    value = loss(x, torch.tensor([0, 1]))
    assert torch.isfinite(value)
    value.backward()
    assert x.grad is not None
    assert loss.weight.grad is not None
    assert bool(torch.isfinite(x.grad).all())
    assert bool(torch.isfinite(loss.weight.grad).all())


def test_evaluate_output_routes_embeddings() -> None:
    loss = ArcFaceLoss(5, 4)
    x, y = make_embeddings(8, 4), make_class_indices(8, 5)
    routed = loss.evaluate_output({"logits": torch.zeros(8, 5), "embeddings": x}, y)
    torch.testing.assert_close(routed.loss, loss(x, y))
    with pytest.raises(
        ValueError, match=re.escape("ArcFaceLoss consumes 'embeddings', but the model output has keys ['logits']")
    ):
        loss.evaluate_output({"logits": torch.zeros(8, 5)}, y)


CONSTRUCTION_ERRORS: ErrorCases = {
    "num_classes_missing": (lambda: ArcFaceLoss(), ValueError, "`num_classes` to be an integer >= 2, but got None"),
    "embedding_dim_missing": (
        lambda: ArcFaceLoss(3),
        ValueError,
        "`embedding_dim` to be an integer >= 1, but got None",
    ),
    "num_classes_1": (lambda: ArcFaceLoss(1, 4), ValueError, "`num_classes` to be an integer >= 2, but got 1"),
    "num_classes_float": (lambda: ArcFaceLoss(2.5, 4), ValueError, "`num_classes` to be an integer >= 2, but got 2.5"),  # type: ignore[arg-type]
    "embedding_dim_0": (lambda: ArcFaceLoss(3, 0), ValueError, "`embedding_dim` to be an integer >= 1, but got 0"),
    "margin_negative": (
        lambda: ArcFaceLoss(3, 4, margin=-0.5),
        ValueError,
        "`margin` to be a number in [0, pi/2), but got -0.5",
    ),
    "margin_pi_over_2": (
        lambda: ArcFaceLoss(3, 4, margin=math.pi / 2),
        ValueError,
        "`margin` to be a number in [0, pi/2)",
    ),
    "scale_zero": (lambda: ArcFaceLoss(3, 4, scale=0.0), ValueError, "`scale` to be a number > 0, but got 0.0"),
    "scale_negative": (lambda: ArcFaceLoss(3, 4, scale=-64.0), ValueError, "`scale` to be a number > 0, but got -64.0"),
    "reduction": (
        lambda: ArcFaceLoss(3, 4, reduction="avg"),
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none']",
    ),  # type: ignore[arg-type]
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


CALL_ERRORS: ErrorCases = {
    "embedding_dim_mismatch": (
        lambda: ArcFaceLoss(5, 4)(torch.zeros(8, 6), make_class_indices(8, 5)),
        ValueError,
        "`embeddings` of shape (N, 4), but got shape (8, 6)",
    ),
    "batch_mismatch": (
        lambda: ArcFaceLoss(5, 4)(make_embeddings(8, 4), make_class_indices(3, 5)),
        ValueError,
        "`target` of shape (8,) to match `embeddings` of shape (8, 4), but got shape (3,)",
    ),
    "out_of_range": (
        lambda: ArcFaceLoss(5, 4)(make_embeddings(2, 4), torch.tensor([0, 5])),
        ValueError,
        "class index to be in [0, 4], but got 5",
    ),
    "negative": (
        lambda: ArcFaceLoss(5, 4)(make_embeddings(2, 4), torch.tensor([-100, 1])),
        ValueError,
        "class index to be in [0, 4], but got -100",
    ),
    "float_target": (
        lambda: ArcFaceLoss(5, 4)(make_embeddings(2, 4), torch.tensor([0.0, 1.0])),
        TypeError,
        "`target` to hold integer class indices",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_cosine_logits_are_scaled_cosines_without_margin() -> None:
    loss = ArcFaceLoss(5, 4, scale=10.0, margin=0.5)
    x = make_embeddings(8, 4)
    expected = 10.0 * F.normalize(x, dim=1) @ F.normalize(loss.weight, dim=1).T
    torch.testing.assert_close(loss.cosine_logits(x), expected)


@pytest.mark.parametrize(
    ("embedding_dtype", "weight_dtype", "expected_dtype"),
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float64),
    ],
    ids=["float16_embeddings", "bfloat16_embeddings", "float64_embeddings", "float64_weights"],
)
def test_cosine_logits_take_embeddings_of_another_dtype_than_the_weights(
    embedding_dtype: torch.dtype, weight_dtype: torch.dtype, expected_dtype: torch.dtype
) -> None:
    # as the loss does: computed in the promoted dtype, at least float32
    loss = ArcFaceLoss(5, 4, scale=10.0).to(weight_dtype)
    x = make_embeddings(8, 4).to(embedding_dtype)
    got = loss.cosine_logits(x)
    assert got.dtype == expected_dtype
    expected = 10.0 * F.normalize(x.double(), dim=1) @ F.normalize(loss.weight.double(), dim=1).T
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    loss(x, make_class_indices(8, 5))  # the loss itself accepts the same inputs


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
def test_torch_compile_fullgraph_matches_eager(easy_margin: bool) -> None:
    # the compiled path of arcface_logits differs from the eager one: both must give the same values
    loss = ArcFaceLoss(5, 4, scale=16.0, margin=0.5, easy_margin=easy_margin)
    assert_compiled_matches_eager(loss, lambda: make_embeddings(8, 4), make_class_indices(8, 5))
