"""ArcFace against a float64 reference written with acos and cos(theta + m)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from lossplug.functional import arcface_logits, arcface_loss, arcface_loss_output
from tests.helpers import (
    HALF_DTYPES,
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_raises_message,
    make_embedding_case,
    parametrize_error_cases,
    reduce,
)

MARGINS = [0.0, 0.2, 0.5, 1.0, 1.5]


def make_case(
    n: int = 8, d: int = 5, c: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Embeddings, their targets and the ArcFace weight (of this file's default sizes)."""
    return make_embedding_case(n, d, c, seed, dtype)


def cosines(embeddings: Tensor, weight: Tensor) -> Tensor:
    unit_embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)
    unit_weight = weight / weight.norm(dim=1, keepdim=True)
    return unit_embeddings @ unit_weight.T


def psi_reference(cos_theta: Tensor, margin: float, easy_margin: bool) -> Tensor:
    """cos(theta + m) while theta + m <= pi, else cos(theta) - m sin(m); easy: margin only where cos > 0."""
    theta = torch.acos(cos_theta.clamp(-1.0, 1.0))
    shifted = torch.cos(theta + margin)
    if easy_margin:
        return torch.where(cos_theta > 0, shifted, cos_theta)
    return torch.where(theta + margin <= math.pi, shifted, cos_theta - margin * math.sin(margin))


def arcface_reference_logits(
    embeddings: Tensor, target: Tensor, weight: Tensor, scale: float, margin: float, easy_margin: bool
) -> Tensor:
    cos = cosines(embeddings.double(), weight.double())
    rows = torch.arange(len(target))
    logits = scale * cos
    logits[rows, target] = scale * psi_reference(cos[rows, target], margin, easy_margin)
    return logits


def arcface_reference(
    embeddings: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: float,
    margin: float,
    easy_margin: bool,
    reduction: str,
) -> Tensor:
    logits = arcface_reference_logits(embeddings, target, weight, scale, margin, easy_margin)
    log_probs = logits - logits.logsumexp(dim=1, keepdim=True)
    return reduce(-log_probs[torch.arange(len(target)), target], reduction)


# -- reference parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
@pytest.mark.parametrize("margin", MARGINS, ids=[f"m_{m}" for m in MARGINS])
@pytest.mark.parametrize("scale", [1.0, 30.0, 64.0], ids=["s_1", "s_30", "s_64"])
def test_arcface_matches_float64_reference(scale: float, margin: float, easy_margin: bool) -> None:
    embeddings, target, weight = make_case(n=16)
    for reduction in REDUCTIONS:
        expected = arcface_reference(embeddings, target, weight, scale, margin, easy_margin, reduction)
        got = arcface_loss(
            embeddings, target, weight, scale=scale, margin=margin, easy_margin=easy_margin, reduction=reduction
        )
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10, msg=lambda m, r=reduction: f"{r}: {m}")


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.2], ids=["m_0", "m_0.5", "m_1.2"])
def test_arcface_gradient_matches_float64_reference(margin: float, easy_margin: bool) -> None:
    embeddings, target, weight = make_case(n=12)
    embeddings.requires_grad_()
    weight.requires_grad_()
    expected = arcface_reference(embeddings, target, weight, 8.0, margin, easy_margin, "mean")
    got = arcface_loss(embeddings, target, weight, scale=8.0, margin=margin, easy_margin=easy_margin)
    expected_grads = torch.autograd.grad(expected, (embeddings, weight))
    got_grads = torch.autograd.grad(got, (embeddings, weight))
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_reference_covers_both_branches() -> None:
    # the parity tests mean something only if some target angles pass pi - m and some have cos < 0
    embeddings, target, weight = make_case(n=16)
    cos_y = cosines(embeddings, weight)[torch.arange(16), target]
    assert bool((cos_y < -math.cos(1.0)).any())
    assert bool((cos_y > 0).any())
    assert bool((cos_y < 0).any())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale", [1.0, 64.0], ids=["s_1", "s_64"])
def test_margin_0_is_cross_entropy_over_scaled_cosines(scale: float, reduction: str) -> None:
    embeddings, target, weight = make_case()
    embeddings.requires_grad_()
    expected = F.cross_entropy(scale * cosines(embeddings, weight), target, reduction=reduction)
    got = arcface_loss(embeddings, target, weight, scale=scale, margin=0.0, reduction=reduction)
    assert_close_with_grad(got, expected, embeddings, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
def test_arcface_logits_match_reference(easy_margin: bool) -> None:
    embeddings, target, weight = make_case()
    got = arcface_logits(embeddings, target, weight, scale=10.0, margin=0.5, easy_margin=easy_margin)
    expected = arcface_reference_logits(embeddings, target, weight, 10.0, 0.5, easy_margin)
    assert got.shape == (8, 6)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("margin", MARGINS, ids=[f"m_{m}" for m in MARGINS])
def test_target_logit_never_increases_as_theta_grows(margin: float) -> None:
    # sweep a 2-d embedding around the half circle from its class weight (theta = 0) to the opposite side
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    embeddings = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]], dtype=torch.float64)
    target = torch.zeros(len(theta), dtype=torch.long)
    target_logit = arcface_logits(embeddings, target, weight, scale=1.0, margin=margin)[:, 0]
    steps = target_logit[1:] - target_logit[:-1]
    assert float(steps.max()) <= 1e-12
    torch.testing.assert_close(target_logit, psi_reference(torch.cos(theta), margin, False), rtol=0, atol=1e-12)
    # the extension past pi - m keeps going down: at theta = pi the logit is -1 - m sin m
    torch.testing.assert_close(target_logit[-1].item(), -1 - margin * math.sin(margin), rtol=0, atol=1e-12)


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.2], ids=["m_0", "m_0.5", "m_1.2"])
def test_cosine_exactly_plus_minus_one_is_finite(margin: float, easy_margin: bool) -> None:
    # embeddings exactly parallel and antiparallel to their class weight: cos theta is exactly +-1
    embeddings = torch.tensor([[2.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], requires_grad=True)
    weight = torch.eye(3, requires_grad=True)
    target = torch.tensor([0, 0, 1])
    cos_y = cosines(embeddings.detach(), weight.detach())[torch.arange(3), target]
    assert cos_y.tolist() == [1.0, -1.0, 1.0]
    loss = arcface_loss(embeddings, target, weight, scale=16.0, margin=margin, easy_margin=easy_margin)
    assert torch.isfinite(loss)
    expected = arcface_reference(embeddings.detach(), target, weight.detach(), 16.0, margin, easy_margin, "mean")
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    embedding_grad, weight_grad = torch.autograd.grad(loss, (embeddings, weight))
    assert bool(torch.isfinite(embedding_grad).all())
    assert bool(torch.isfinite(weight_grad).all())


def test_output_fields() -> None:
    embeddings, target, weight = make_case()
    embeddings.requires_grad_()
    out = arcface_loss_output(embeddings, target, weight, scale=10.0, margin=0.3, reduction="none")
    logits = arcface_reference_logits(embeddings.detach(), target, weight, 10.0, 0.3, False)
    assert out.per_sample.shape == (8,)
    assert out.p_t is not None
    assert out.p_t.shape == (8,)
    assert not out.p_t.requires_grad
    # p_t under the margin-adjusted softmax
    torch.testing.assert_close(out.p_t, logits.softmax(dim=1)[torch.arange(8), target], rtol=1e-9, atol=1e-12)
    assert bool(((out.p_t >= 0) & (out.p_t <= 1)).all())
    assert out.valid.all()
    assert out.task == "multiclass"
    assert out.num_classes == 6
    assert out.target is target


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_is_zero(reduction: str) -> None:
    embeddings = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = arcface_loss(embeddings, torch.zeros(0, dtype=torch.long), weight, reduction=reduction)
    assert bool((loss == 0).all())
    assert loss.shape == (() if reduction != "none" else (0,))
    _, weight_grad = torch.autograd.grad(loss.sum(), (embeddings, weight), allow_unused=True)
    assert weight_grad is None or bool((weight_grad == 0).all())


# -- gradcheck ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("easy_margin", [False, True], ids=["hard_margin", "easy_margin"])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.2], ids=["m_0", "m_0.5", "m_1.2"])
def test_gradcheck_embeddings_and_weight(margin: float, easy_margin: bool) -> None:
    embeddings, target, weight = make_case(n=4, d=3, c=3, seed=3)
    cos_y = cosines(embeddings, weight)[torch.arange(4), target]
    # keep away from the kinks of psi (where its branch switches), where no derivative exists
    assert bool(((cos_y + math.cos(margin)).abs() > 1e-3).all())
    assert bool((cos_y.abs() > 1e-3).all())
    embeddings.requires_grad_()
    weight.requires_grad_()

    def fn(e: Tensor, w: Tensor) -> Tensor:
        return arcface_loss(e, target, w, scale=4.0, margin=margin, easy_margin=easy_margin, reduction="none")

    assert gradcheck(fn, (embeddings, weight))
    assert gradgradcheck(fn, (embeddings, weight), fast_mode=True)


# -- numerics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
def test_half_precision_embeddings_match_float32(dtype: torch.dtype) -> None:
    embeddings, target, weight = make_case(dtype=torch.float32)
    low = embeddings.to(dtype).requires_grad_()
    got = arcface_loss(low, target, weight, scale=16.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, arcface_loss(embeddings, target, weight, scale=16.0), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(got, low)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("scale", [1.0, 64.0], ids=["s_1", "s_64"])
def test_cpu_autocast_matches_float32(scale: float) -> None:
    embeddings, target, weight = make_case(n=8, d=16, c=10, dtype=torch.float32)
    embeddings.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = arcface_loss(embeddings, target, weight, scale=scale)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, arcface_loss(embeddings, target, weight, scale=scale), rtol=1e-2, atol=1e-2)
    (grad,) = torch.autograd.grad(got, embeddings)
    assert bool(torch.isfinite(grad).all())


def test_nan_input_propagates() -> None:
    embeddings, target, weight = make_case(dtype=torch.float32)
    embeddings[2, 1] = float("nan")
    assert torch.isnan(arcface_loss(embeddings, target, weight))
    assert torch.isnan(arcface_loss(embeddings, target, weight, reduction="none")[2])


# -- bad input ------------------------------------------------------------------------------------------

E, T, W = make_case(n=4, d=3, c=5, dtype=torch.float32)

ERROR_CASES: ErrorCases = {
    "margin_negative": (
        lambda: arcface_loss(E, T, W, margin=-0.1),
        ValueError,
        "`margin` to be a number in [0, pi/2), but got -0.1",
    ),
    "margin_pi_over_2": (
        lambda: arcface_loss(E, T, W, margin=math.pi / 2),
        ValueError,
        "`margin` to be a number in [0, pi/2)",
    ),
    "margin_large": (lambda: arcface_loss(E, T, W, margin=3.0), ValueError, "`margin` to be a number in [0, pi/2)"),
    "scale_zero": (lambda: arcface_loss(E, T, W, scale=0.0), ValueError, "`scale` to be a number > 0, but got 0.0"),
    "scale_negative": (lambda: arcface_loss(E, T, W, scale=-1.0), ValueError, "`scale` to be a number > 0"),
    "embedding_dim_mismatch": (
        lambda: arcface_loss(torch.zeros(4, 7), T, W),
        ValueError,
        "`embeddings` of shape (N, 3), but got shape (4, 7)",
    ),
    "embeddings_3d": (
        lambda: arcface_loss(torch.zeros(4, 3, 1), T, W),
        ValueError,
        "`embeddings` of shape (N, 3), but got shape (4, 3, 1)",
    ),
    "weight_1d": (
        lambda: arcface_loss(E, T, torch.zeros(3)),
        ValueError,
        "`weight` of shape (num_classes, embedding_dim), but got shape (3,)",
    ),
    "batch_mismatch": (
        lambda: arcface_loss(E, torch.tensor([0, 1]), W),
        ValueError,
        "`target` of shape (4,) to match `embeddings` of shape (4, 3), but got shape (2,)",
    ),
    "class_out_of_range": (
        lambda: arcface_loss(E, torch.tensor([0, 1, 5, 0]), W),
        ValueError,
        "`target` class index to be in [0, 4], but got 5",
    ),
    "negative_class": (
        lambda: arcface_loss(E, torch.tensor([0, -1, 2, 0]), W),
        ValueError,
        "`target` class index to be in [0, 4], but got -1",
    ),
    "float_target": (
        lambda: arcface_loss(E, torch.zeros(4), W),
        TypeError,
        "`target` to hold integer class indices",
    ),
    "integer_embeddings": (
        lambda: arcface_loss(E.long(), T, W),
        TypeError,
        "`embeddings` to be a floating-point tensor",
    ),
    "reduction": (
        lambda: arcface_loss(E, T, W, reduction="max"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'max'",
    ),
}


@parametrize_error_cases(ERROR_CASES)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
