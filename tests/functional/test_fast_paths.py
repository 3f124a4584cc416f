"""The fast paths of the focal, ArcFace and center losses against plain float64 references.

The fast paths are: the chunked, multi-threaded CPU kernels of the sigmoid focal loss
(``lossplug.functional._kernels``: summed and element-wise), the closed-form softmax focal
gradient computed in place, ArcFace's margin logits written in place, and the center loss with its
closed-form gradient. Each is compared with a plain formula in float64 (values and gradients), at
chunk boundaries where it chunks, with ``gradcheck`` where it runs in float64, and against its
whole-tensor twin (the ``torch.compile`` path). No timings here: speed is in ``benchmarks/``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

import lossplug.functional._kernels as kernels
import lossplug.functional.focal as focal_module
from lossplug.functional import (
    arcface_loss,
    arcface_loss_output,
    binary_focal_loss,
    binary_focal_loss_output,
    center_loss,
    center_loss_output,
    focal_loss,
    focal_loss_output,
)
from lossplug.losses import CenterLoss

GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.5]
ALPHAS = [None, 0.25, 0.0, 1.0]
REDUCTIONS = ["mean", "sum", "none"]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Chunks of 64 elements, so that small tensors cross many chunk boundaries."""
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 64)
    return 64


@pytest.fixture
def threads() -> Iterator[None]:
    """Two torch threads (two chunk workers), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# -- the sigmoid focal loss: chunked kernels -----------------------------------------------------------


def binary_reference(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """Element-wise alpha_t (1 - p_t)^gamma BCE in float64, from its definition (soft targets allowed)."""
    x, t = x.double(), t.double()
    one_minus_p_t = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    bce = t * F.softplus(-x) + (1 - t) * F.softplus(x)  # no cancellation between terms for hard targets
    loss = one_minus_p_t**gamma * bce
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def reduce(loss: Tensor, reduction: str, denominator: float | None = None) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (denominator if denominator is not None else max(loss.numel(), 1))


def make_binary(size: int, kind: str, seed: int = 0, scale: float = 4.0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(size, generator=generator, dtype=torch.float64)
    t = (torch.rand(size, generator=generator, dtype=torch.float64) < 0.3).double()
    if kind == "soft":
        t = torch.rand(size, generator=generator, dtype=torch.float64)
    elif kind == "mixed":  # one chunk of soft targets among hard ones
        t[70:100] = 0.3
    return x, t


def reference_grad(x: Tensor, t: Tensor, gamma: float, alpha: float | None, reduction: str) -> tuple[Tensor, Tensor]:
    x64 = x.detach().double().requires_grad_()
    loss = reduce(binary_reference(x64, t, gamma, alpha), reduction)
    (grad,) = torch.autograd.grad(loss.sum() * 1.5, x64)
    return loss.detach(), grad


@pytest.mark.usefixtures("small_chunks", "threads")
@pytest.mark.parametrize("size", [1, 63, 64, 65, 64 * 5 + 7])
@pytest.mark.parametrize("kind", ["hard", "soft", "mixed"])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_chunked_binary_focal_matches_float64_reference(
    size: int, kind: str, gamma: float, alpha: float | None
) -> None:
    x, t = make_binary(size, kind)
    if kind == "mixed" and size < 100:
        t[size // 2 :] = 0.3
    x32, t32 = x.float().requires_grad_(), t.float()
    for reduction in REDUCTIONS:
        expected, expected_grad = reference_grad(x32, t32, gamma, alpha, reduction)
        x32.grad = None
        loss = binary_focal_loss(x32, t32, gamma, alpha, reduction)
        (loss.sum() * 1.5).backward()
        torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(x32.grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.usefixtures("small_chunks", "threads")
# normalization="positives" only with "mean": with another reduction it would change nothing, an error
@pytest.mark.parametrize(
    ("reduction", "normalization"),
    [("mean", "elements"), ("sum", "elements"), ("none", "elements"), ("mean", "positives")],
)
@pytest.mark.parametrize("kind", ["hard", "mixed"])
def test_chunked_binary_focal_output_matches_reference(reduction: str, normalization: str, kind: str) -> None:
    x, t = make_binary(13 * 15, kind, seed=3)
    x, t = x.view(13, 15).float(), t.view(13, 15).float()
    x.requires_grad_()
    out = binary_focal_loss_output(x, t, 2.0, 0.25, reduction, normalization)
    (out.loss.sum() * 1.5).backward()
    positives = max(float(t.sum()), 1.0) if normalization == "positives" else None
    expected = reduce(binary_reference(x, t, 2.0, 0.25), reduction, positives)
    x64 = x.detach().double().requires_grad_()
    (reduce(binary_reference(x64, t, 2.0, 0.25), reduction, positives).sum() * 1.5).backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    p = torch.sigmoid(x.detach().double())
    torch.testing.assert_close(out.p_t.double(), p * t + (1 - p) * (1 - t), rtol=1e-6, atol=1e-7)
    assert out.per_sample.shape == x.shape
    assert not out.p_t.requires_grad
    # the loss-only function gives the same value as the output variant
    loss = binary_focal_loss(x.detach(), t, 2.0, 0.25, reduction, normalization)
    torch.testing.assert_close(loss, out.loss.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("kind", ["hard", "mixed"])
def test_chunked_binary_focal_gradcheck_float64(gamma: float, kind: str) -> None:
    x, t = make_binary(64 * 2 + 9, kind, seed=5, scale=2.0)
    x.requires_grad_()
    for reduction in REDUCTIONS:
        assert gradcheck(lambda x, reduction=reduction: binary_focal_loss(x, t, gamma, 0.25, reduction), (x,))
        assert gradcheck(
            lambda x, reduction=reduction: binary_focal_loss_output(x, t, gamma, 0.25, reduction).loss, (x,)
        )
    # double backward takes the whole-tensor differentiable gradient
    assert gradgradcheck(lambda x: binary_focal_loss(x, t, gamma, 0.25), (x,))
    assert gradgradcheck(lambda x: binary_focal_loss_output(x, t, gamma, None, "none").loss, (x,))


@pytest.mark.usefixtures("small_chunks")
def test_chunked_results_do_not_depend_on_the_number_of_threads() -> None:
    x, t = make_binary(64 * 9 + 3, "mixed", seed=7)
    x, t = x.float(), t.float()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaf = x.clone().requires_grad_()
            loss = binary_focal_loss(leaf, t)
            loss.backward()
            results.append((loss.detach(), leaf.grad))
    finally:
        torch.set_num_threads(before)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1])


@pytest.mark.usefixtures("small_chunks", "threads")
@pytest.mark.parametrize("function", ["loss", "output"])
def test_chunked_binary_focal_equals_whole_tensor_path(monkeypatch: pytest.MonkeyPatch, function: str) -> None:
    """The chunked kernels and the whole-tensor closed form (compile / non-CPU path) agree."""
    x, t = make_binary(64 * 4 + 1, "mixed", seed=11)
    x, t = x.float().view(-1, 1), t.float().view(-1, 1)

    def run() -> tuple[Tensor, Tensor]:
        leaf = x.clone().requires_grad_()
        if function == "loss":
            loss = binary_focal_loss(leaf, t, 2.0, 0.25)
        else:
            loss = binary_focal_loss_output(leaf, t, 2.0, 0.25).loss
        loss.backward()
        return loss.detach(), leaf.grad

    fast = run()
    monkeypatch.setattr(focal_module, "use_chunked_kernel", lambda input: False)
    whole = run()
    torch.testing.assert_close(fast[0], whole[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast[1], whole[1], rtol=1e-5, atol=1e-9)


def test_compiled_binary_focal_matches_eager_without_graph_break() -> None:
    x, t = make_binary(300, "hard", seed=13)
    x, t = x.float(), t.float()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: binary_focal_loss(x, t, 2.0, 0.25), fullgraph=True, backend="aot_eager")
    leaf, eager_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    value = compiled(leaf, t)
    value.backward()
    expected = binary_focal_loss(eager_leaf, t, 2.0, 0.25)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(leaf.grad, eager_leaf.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.usefixtures("small_chunks", "threads")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_binary_focal_half_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    x, t = make_binary(64 * 3 + 2, "mixed", seed=17, scale=3.0)
    x16, t16 = x.to(dtype).requires_grad_(), t.to(dtype)
    x32 = x16.detach().float().requires_grad_()
    for reduction in REDUCTIONS:
        x16.grad, x32.grad = None, None
        loss16 = binary_focal_loss(x16, t16, 2.0, 0.25, reduction)
        loss32 = binary_focal_loss(x32, t16.float(), 2.0, 0.25, reduction)
        loss16.sum().backward()
        loss32.sum().backward()
        assert loss16.dtype == torch.float32
        assert x16.grad.dtype == dtype
        torch.testing.assert_close(loss16, loss32, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(x16.grad.float(), x32.grad.to(dtype).float(), rtol=0, atol=0)


@pytest.mark.usefixtures("small_chunks", "threads")
@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_chunked_binary_focal_saturated_logits_are_finite(gamma: float) -> None:
    x = torch.tensor([100.0, -100.0, 1e4, -1e4, 30.0, -30.0] * 20).requires_grad_()
    for t_value in (0.0, 1.0):
        x.grad = None
        t = torch.full_like(x, t_value)
        loss = binary_focal_loss(x, t, gamma, 0.25, "sum")
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(x.grad).all()
        expected, expected_grad = reference_grad(x, t, gamma, 0.25, "sum")
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-30)
        # autograd through the plain formula gives NaN where 1 - p_t underflows and gamma < 1
        finite = torch.isfinite(expected_grad)
        torch.testing.assert_close(x.grad.double()[finite], expected_grad[finite] / 1.5, rtol=1e-5, atol=1e-30)
    # a 200-logit gap gives a loss of about 200, not inf and not a clamp value
    loss = binary_focal_loss(torch.tensor([-200.0]), torch.tensor([1.0]), 0.0, None, "sum")
    assert loss.item() == pytest.approx(200.0)


@pytest.mark.usefixtures("small_chunks", "threads")
def test_chunked_binary_focal_empty_and_nan() -> None:
    empty = torch.zeros(0, 5, requires_grad=True)
    for function in (binary_focal_loss, lambda x, t: binary_focal_loss_output(x, t).loss):
        loss = function(empty, torch.zeros(0, 5))
        loss.backward()
        assert loss.item() == 0
        assert empty.grad is not None
        assert empty.grad.shape == (0, 5)
    x, t = make_binary(64 * 3, "hard", seed=19)
    x = x.float()
    x[150] = float("nan")
    assert torch.isnan(binary_focal_loss(x, t.float()))
    x[150] = 0.0
    t = t.float()
    t[10] = float("nan")
    # a NaN target is out of [0, 1]: an error with validate_args, computed as it stands without
    for function in (binary_focal_loss, binary_focal_loss_output):
        with pytest.raises(ValueError, match=re.escape("Expected every `target` value to be in [0, 1], but got nan.")):
            function(x, t)
    assert torch.isnan(binary_focal_loss(x, t, validate_args=False))
    assert torch.isnan(binary_focal_loss_output(x, t, validate_args=False).per_sample[10])


@pytest.mark.usefixtures("small_chunks", "threads")
@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_chunked_binary_focal_reports_the_first_bad_target(bad: float) -> None:
    x, t = make_binary(64 * 6, "hard", seed=23)
    x, t = x.float(), t.float()
    t[300], t[200] = bad, 7.0  # both out of range; the first one (in index order) is reported
    message = f"Expected every `target` value to be in [0, 1], but got {7.0!r}."
    for function in (binary_focal_loss, binary_focal_loss_output):
        with pytest.raises(ValueError, match=re.escape(message)):
            function(x, t)
    # without validation, the formula is computed as it stands
    loss = binary_focal_loss(x.double(), t.double(), validate_args=False, reduction="none")
    torch.testing.assert_close(loss, binary_reference(x, t, 2.0, 0.25))


@pytest.mark.usefixtures("small_chunks", "threads")
def test_chunked_binary_focal_odd_layouts_and_dtypes() -> None:
    x, t = make_binary(17 * 19, "mixed", seed=29)
    x, t = x.view(17, 19).float(), t.view(17, 19).float()
    transposed = x.t().requires_grad_()  # not contiguous
    loss = binary_focal_loss_output(transposed, t.t(), reduction="none").loss
    (loss * torch.arange(loss.numel()).view_as(loss)).sum().backward()  # an element-wise gradient
    leaf = x.t().contiguous().requires_grad_()
    expected = binary_reference(leaf, t.t(), 2.0, 0.25)
    (expected * torch.arange(loss.numel()).view_as(loss)).sum().backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(transposed.grad, leaf.grad.float(), rtol=1e-4, atol=1e-6)
    # float64 input with a float32 target is computed in float64
    mixed = binary_focal_loss(x.double(), t, reduction="none")
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, binary_reference(x, t, 2.0, 0.25))


@pytest.mark.usefixtures("small_chunks", "threads")
def test_chunked_binary_focal_under_inference_mode_and_no_grad() -> None:
    x, t = make_binary(64 * 4 + 3, "mixed", seed=37)
    x, t = x.float(), t.float()
    expected = binary_focal_loss_output(x, t)
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            out = binary_focal_loss_output(x, t)
            loss = binary_focal_loss(x, t)
        torch.testing.assert_close(out.per_sample, expected.per_sample)
        torch.testing.assert_close(out.p_t, expected.p_t)
        torch.testing.assert_close(loss, expected.loss, rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("small_chunks")
def test_chunked_binary_focal_backward_twice_with_retained_graph() -> None:
    x, t = make_binary(64 * 2 + 1, "mixed", seed=31)
    x = x.float().requires_grad_()
    for function in (binary_focal_loss, lambda x, t: binary_focal_loss_output(x, t).loss):
        x.grad = None
        loss = function(x, t.float())
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        loss.backward()
        torch.testing.assert_close(x.grad, 2 * first)


# -- the softmax focal loss: closed-form gradient in place ---------------------------------------------


def softmax_focal_reference(
    x: Tensor, y: Tensor, gamma: float, alpha: Tensor | None, ignore_index: int, reduction: str
) -> Tensor:
    x = x.double()
    log_probs = x.log_softmax(dim=1)
    valid = y != ignore_index
    safe = torch.where(valid, y, torch.zeros_like(y))
    log_p_t = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    weight = valid.double() if alpha is None else torch.where(valid, alpha.double()[safe], 0.0)
    loss = torch.where(valid, -weight * (-torch.expm1(log_p_t)) ** gamma * log_p_t, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    total = weight.sum()
    return loss.sum() / total if total > 0 else loss.sum() * 0


@pytest.mark.parametrize("shape", [(9, 5), (4, 5, 3, 2)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_focal_matches_float64_reference(
    shape: tuple[int, ...], gamma: float, with_alpha: bool, reduction: str
) -> None:
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(shape, generator=generator)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    y.view(-1)[::4] = -100
    alpha = torch.tensor([0.25, 0.5, 0.75, 1.0, 0.125]) if with_alpha else None
    leaf = x.clone().requires_grad_()
    out = focal_loss_output(leaf, y, gamma, alpha, reduction=reduction)
    (out.loss.sum() * 1.5).backward()
    x64 = x.double().requires_grad_()
    expected = softmax_focal_reference(x64, y, gamma, alpha, -100, reduction)
    (expected.sum() * 1.5).backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    valid = y != -100
    torch.testing.assert_close(
        out.p_t[valid].double(), x64.detach().softmax(1).gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)[valid]
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_gradcheck_and_double_backward(gamma: float) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6, 2), generator=generator)
    y[0, 0] = -100
    alpha = [0.25, 0.5, 0.75, 1.0]
    for reduction in REDUCTIONS:
        assert gradcheck(lambda x, reduction=reduction: focal_loss(x, y, gamma, alpha, reduction=reduction), (x,))
    assert gradgradcheck(lambda x: focal_loss(x, y, gamma, alpha), (x,))


def test_softmax_focal_retained_graph_empty_and_all_ignored() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    loss = focal_loss(x, y)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # the log-probabilities were consumed by the first backward: recomputed
    torch.testing.assert_close(x.grad, 2 * first)
    for logits, target in ((torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), (x.detach(), torch.full((5,), -100))):
        leaf = logits.clone().requires_grad_()
        loss = focal_loss(leaf, target)
        loss.backward()
        assert loss.item() == 0
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_softmax_focal_saturated_logits_have_finite_gradients(gamma: float) -> None:
    x = torch.tensor([[100.0, -100.0, 0.0], [1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = focal_loss(x, torch.tensor([0, 0, 0]), gamma)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


def test_compiled_softmax_focal_matches_eager() -> None:
    x = 3 * torch.randn(8, 5)
    y = torch.tensor([0, 1, 2, 3, 4, -100, 1, 2])
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: focal_loss(x, y, 2.0), fullgraph=True, backend="aot_eager")
    leaf, eager_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    value = compiled(leaf, y)
    value.backward()
    expected = focal_loss(eager_leaf, y, 2.0)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(leaf.grad, eager_leaf.grad)


# -- ArcFace: margin logits written in place ------------------------------------------------------------


def arcface_reference(e: Tensor, y: Tensor, w: Tensor, scale: float, margin: float, easy: bool) -> Tensor:
    """Per-sample ArcFace loss in float64 with the angle itself (acos), away from cos = +-1."""
    cosine = F.normalize(e.double(), dim=1) @ F.normalize(w.double(), dim=1).T
    theta = torch.acos(cosine.gather(1, y.unsqueeze(1)))
    target_cosine = torch.cos(theta)
    if easy:
        psi = torch.where(target_cosine > 0, torch.cos(theta + margin), target_cosine)
    else:
        psi = torch.where(
            theta + margin <= math.pi, torch.cos(theta + margin), target_cosine - margin * math.sin(margin)
        )
    logits = (scale * cosine).scatter(1, y.unsqueeze(1), scale * psi)
    return F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.2])
@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_arcface_matches_float64_reference(margin: float, easy_margin: bool, reduction: str) -> None:
    generator = torch.Generator().manual_seed(2)
    e = torch.randn(10, 6, generator=generator)
    w = torch.randn(12, 6, generator=generator)
    y = torch.randint(0, 12, (10,), generator=generator)
    e32, w32 = e.clone().requires_grad_(), w.clone().requires_grad_()
    out = arcface_loss_output(e32, y, w32, 8.0, margin, easy_margin, reduction)
    (out.loss.sum() * 1.5).backward()
    e64, w64 = e.double().requires_grad_(), w.double().requires_grad_()
    expected = reduce(arcface_reference(e64, y, w64, 8.0, margin, easy_margin), reduction)
    (expected.sum() * 1.5).backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e32.grad.double(), e64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w32.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_gradcheck_and_double_backward(easy_margin: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    e = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (5,), generator=generator)
    assert gradcheck(lambda e, w: arcface_loss(e, y, w, 4.0, 0.5, easy_margin), (e, w))
    assert gradcheck(lambda e, w: arcface_loss(e, y, w, 4.0, 0.5, easy_margin, "none"), (e, w))
    assert gradgradcheck(lambda e, w: arcface_loss(e, y, w, 4.0, 0.5, easy_margin), (e, w))


def test_arcface_cosine_of_one_has_finite_gradients_and_compiles() -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = arcface_loss(e, torch.tensor([0, 0]), w)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(e.grad).all()
    assert torch.isfinite(w.grad).all()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda e, w: arcface_loss(e, torch.tensor([0, 1]), w, 4.0), fullgraph=True, backend="aot_eager"
    )
    inputs = (torch.randn(2, 2), torch.randn(2, 2))
    torch.testing.assert_close(compiled(*inputs), arcface_loss(inputs[0], torch.tensor([0, 1]), inputs[1], 4.0))


# -- center loss: closed-form gradient --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_center_matches_float64_reference(reduction: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(11, 5, generator=generator).to(dtype).requires_grad_()
    centers = torch.randn(4, 5, generator=generator).requires_grad_()
    y = torch.randint(0, 4, (11,), generator=generator)
    out = center_loss_output(features, y, centers, reduction)
    (out.loss.sum() * 1.5).backward()
    f64, c64 = features.detach().double().requires_grad_(), centers.detach().double().requires_grad_()
    expected = reduce(0.5 * (f64 - c64[y]).pow(2).sum(dim=1), reduction)
    (expected.sum() * 1.5).backward()
    assert out.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert features.grad.dtype == dtype
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(features.grad.double(), f64.grad, **tolerance)
    torch.testing.assert_close(centers.grad.double(), c64.grad, rtol=1e-5, atol=1e-5)


def test_center_gradcheck_and_double_backward() -> None:
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    centers = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 3, 3, 3])
    for reduction in REDUCTIONS:
        assert gradcheck(lambda f, c, reduction=reduction: center_loss(f, y, c, reduction), (features, centers))
    assert gradgradcheck(lambda f, c: center_loss(f, y, c), (features, centers))
    assert gradgradcheck(lambda f: center_loss(f, y, centers.detach()), (features,))


def test_center_moving_average_update_after_forward_keeps_backward() -> None:
    loss = CenterLoss(num_classes=3, feature_dim=2, update="moving_average")
    loss.train()
    features = torch.randn(5, 2, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    before = loss.centers.clone()
    value = loss(features, y)  # the centers are updated in place after the loss is computed
    value.backward()
    assert not torch.equal(loss.centers, before)
    torch.testing.assert_close(features.grad, (features.detach() - before[y]) / 5)
    empty = torch.zeros(0, 2, requires_grad=True)
    zero = center_loss(empty, torch.zeros(0, dtype=torch.long), before)
    zero.backward()
    assert zero.item() == 0
    assert empty.grad.shape == (0, 2)
