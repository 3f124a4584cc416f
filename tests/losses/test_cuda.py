"""Every loss on a CUDA device: float32 against the same loss in float64 on the CPU, and half precision.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/losses/test_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from lossplug.losses import BalancedSoftmaxLoss, BaseLoss, BinaryFocalLoss, LDAMLoss, LogitAdjustedLoss, PolyLoss
from lossplug.losses.base import ModelOutput
from tests.helpers import HALF_DTYPES
from tests.losses.test_func_transforms import CASES, Case, build, class_indices, logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

COUNTS = [500, 60, 12, 3]
ALL_CASES: dict[str, Case] = {
    **CASES,
    "logit_adjusted": Case(lambda: LogitAdjustedLoss(class_counts=COUNTS), logits, class_indices),
    "balanced_softmax": Case(lambda: BalancedSoftmaxLoss(class_counts=COUNTS), logits, class_indices),
    "ldam": Case(lambda: LDAMLoss(class_counts=COUNTS), logits, class_indices),
    "poly": Case(PolyLoss, logits, class_indices),
}


def _leaves(output: ModelOutput) -> dict[str, Tensor]:
    return {"": output} if isinstance(output, Tensor) else dict(output)


def _run(loss: BaseLoss, output: ModelOutput, target: Tensor, dtype: torch.dtype, device: str) -> dict[str, Tensor]:
    """The loss, p_t and the gradients of the input(s) and of the loss's parameters, all as float64 on the CPU."""
    # parameters and class weights in float32 for half-precision inputs, as under autocast
    loss = copy.deepcopy(loss).to(device, torch.float64 if dtype == torch.float64 else torch.float32)
    leaves = {key: value.to(device, dtype).requires_grad_() for key, value in _leaves(output).items()}
    result = loss.evaluate_output(leaves.get("", leaves), target.to(device))
    wrt = [*leaves.values(), *loss.parameters()]
    grads = torch.autograd.grad(result.loss, wrt)
    assert all(grad.device.type == device for grad in grads)
    named = {"loss": result.loss, **{f"grad{index}": grad for index, grad in enumerate(grads)}}
    if result.p_t is not None:
        named["p_t"] = result.p_t
    return {name: value.detach().to("cpu", torch.float64) for name, value in named.items()}


@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_float32_on_cuda_matches_float64_on_the_cpu(case: Case) -> None:
    loss, output, target = build(case), case.input(), case.target()
    expected = _run(loss, output, target, torch.float64, "cpu")
    got = _run(loss, output, target, torch.float32, "cuda")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", HALF_DTYPES.values(), ids=HALF_DTYPES.keys())
@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_half_precision_on_cuda_is_finite_and_near_float32(case: Case, dtype: torch.dtype) -> None:
    loss, output, target = build(case), case.input(), case.target()
    reference = _run(loss, output, target, torch.float32, "cuda")
    got = _run(loss, output, target, dtype, "cuda")
    for name in reference:
        assert torch.isfinite(got[name]).all(), name
        # the inputs themselves are rounded to 8 (bfloat16) or 11 (float16) bits
        tolerance = 0.05 if dtype == torch.bfloat16 else 0.01
        torch.testing.assert_close(got[name], reference[name], rtol=tolerance, atol=tolerance, msg=lambda m, n=name: f"{n}: {m}")


def test_binary_focal_on_cuda_matches_the_chunked_cpu_kernels_at_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(4096, 80, generator=generator)
    target = (torch.rand(4096, 80, generator=generator) < 0.05).float()
    loss = BinaryFocalLoss(gamma=2.0, alpha=0.25)
    expected = _run(loss, logits, target, torch.float32, "cpu")
    got = _run(loss, logits, target, torch.float32, "cuda")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
