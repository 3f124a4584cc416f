"""Inputs and checks shared by the loss tests in tests/functional and tests/losses."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping

import pytest
import torch
from torch import Tensor, nn

from lossplug.output import LossOutput

REDUCTIONS = ["mean", "sum", "none"]
LOGIT_SHAPES = {"2d": (8, 4), "4d": (2, 4, 3, 2)}
"""Logits ``(N, C)`` and ``(N, C, d1, d2)``, by name."""
IGNORE_CASES = {"no_ignore": None, "ignore_-100": -100, "ignore_class_1": 1}
"""``ignore_index`` values by name: none, torch's default, and a real class."""
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

ErrorCases = dict[str, tuple[Callable[[], object], type[Exception], str]]
"""Named bad calls, each with the exception it raises and a part of that exception's message."""


# -- inputs -----------------------------------------------------------------------------------------------


def make_logits(
    shape: tuple[int, ...], seed: int = 0, scale: float = 3.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Seeded ``scale * N(0, 1)`` logits of ``shape``, drawn in float64 and then cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def make_float32_logits(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """Seeded ``3 * N(0, 1)`` logits of ``shape``, drawn in float32 (the inputs of the module tests)."""
    return 3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make_target(shape: tuple[int, ...], ignore_index: int | None = None, seed: int = 1) -> Tensor:
    """Class indices for logits of ``shape``; with ``ignore_index``, about a third of them set to it."""
    generator = torch.Generator().manual_seed(seed)
    target_shape = (shape[0], *shape[2:])
    target = torch.randint(0, shape[1], target_shape, generator=generator)
    if ignore_index is not None:
        mask = torch.rand(target_shape, generator=generator) < 0.35
        mask.view(-1)[0] = True  # at least one ignored
        mask.view(-1)[-1] = False  # at least one counted
        target = torch.where(mask, torch.full_like(target, ignore_index), target)
    return target


def make_embeddings(n: int, d: int, seed: int = 0) -> Tensor:
    """Seeded float32 ``N(0, 1)`` embeddings (or features) of shape ``(n, d)``."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def make_class_indices(n: int, c: int, seed: int = 1) -> Tensor:
    """Seeded class indices in ``[0, c)`` for ``n`` samples."""
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def make_embedding_case(
    n: int, d: int, c: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded embeddings ``(n, d)``, class indices ``(n,)`` and class vectors ``(c, d)`` (ArcFace's weight,
    the center loss's centers); the floating-point ones drawn in float64 and then cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype)
    class_vectors = torch.randn(c, d, generator=generator, dtype=torch.float64).to(dtype)
    target = torch.randint(0, c, (n,), generator=generator)
    return embeddings, target, class_vectors


def ignore_kwargs(ignore_index: int | None) -> dict[str, int]:
    """``ignore_index`` as a keyword argument, or none at all (the default) for ``None``."""
    return {} if ignore_index is None else {"ignore_index": ignore_index}


def labelled(reduction: str) -> Callable[[str], str]:
    """Prefixes an assertion message with the reduction it is about."""
    return lambda message: f"{reduction}: {message}"


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """``per_sample`` as it is ("none"), summed ("sum") or averaged ("mean")."""
    return {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]


# -- checks -----------------------------------------------------------------------------------------------


def assert_close_with_grad(
    got: Tensor,
    expected: Tensor,
    wrt: Tensor,
    *,
    rtol: float,
    atol: float,
    msg: str | Callable[[str], str] | None = None,
) -> None:
    """``got`` is close to ``expected``, and so is the gradient of its sum with respect to ``wrt``."""
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=msg)
    (expected_grad,) = torch.autograd.grad(expected.sum(), wrt)
    (got_grad,) = torch.autograd.grad(got.sum(), wrt)
    torch.testing.assert_close(got_grad, expected_grad, rtol=rtol, atol=atol, msg=msg)


def assert_multiclass_output(out: LossOutput, target: Tensor, valid: Tensor, expected_p_t: Tensor, num_classes: int) -> None:
    """The fields of a multiclass :class:`~lossplug.output.LossOutput` for class-index ``target``: per-sample
    values of the target's shape, zero where not ``valid``; p_t detached, in [0, 1] and ``expected_p_t``
    where valid; the task, the number of classes and the target itself."""
    assert out.per_sample.shape == target.shape
    assert out.p_t is not None
    assert out.p_t.shape == target.shape
    assert not out.p_t.requires_grad
    assert bool(((out.p_t >= 0) & (out.p_t <= 1)).all())
    torch.testing.assert_close(out.p_t[valid], expected_p_t[valid])
    torch.testing.assert_close(out.valid, valid)
    assert bool((out.per_sample[~valid] == 0).all())
    assert out.task == "multiclass"
    assert out.num_classes == num_classes
    assert out.target is target


def assert_func_transforms_match_autograd(loss: nn.Module) -> None:
    """``torch.func.grad`` of ``loss`` on 4-class logits (one target ignored) gives autograd's gradient, and
    ``vmap`` over the samples gives each sample's loss computed alone."""
    x, y = 0.5 * make_float32_logits((6, 4)), torch.tensor([0, 1, 2, 3, -100, 1])
    leaf = x.clone().requires_grad_()
    loss(leaf, y).backward()
    torch.testing.assert_close(torch.func.grad(lambda z: loss(z, y))(x), leaf.grad)
    per_sample = torch.func.vmap(lambda xi, yi: loss(xi.unsqueeze(0), yi.unsqueeze(0)))(x, y)
    torch.testing.assert_close(per_sample, torch.stack([loss(x[i : i + 1], y[i : i + 1]) for i in range(6)]))


def parametrize_error_cases(cases: ErrorCases) -> pytest.MarkDecorator:
    """Parametrizes a test over ``cases`` as ``(call, error, message)``, with the case names as ids."""
    return pytest.mark.parametrize(("call", "error", "message"), cases.values(), ids=cases.keys())


def assert_raises_message(call: Callable[[], object], error: type[Exception], message: str) -> None:
    """``call()`` raises ``error`` with ``message`` in its text (matched literally, not as a regex)."""
    with pytest.raises(error, match=re.escape(message)):
        call()


def save_and_load(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` after a round trip through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_compiled_matches_eager(loss: nn.Module, make_input: Callable[[], Tensor], target: Tensor) -> None:
    """``torch.compile(loss, fullgraph=True)`` gives the eager loss and the eager gradient of its input.

    fullgraph=True fails on any graph break; aot_eager traces forward and backward (the custom autograd
    functions included) without the minutes of C++ code generation the default backend costs on CPU.
    """
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x = make_input().requires_grad_()
    value = compiled(x, target)
    value.backward()
    x_eager = make_input().requires_grad_()
    expected = loss(x_eager, target)
    expected.backward()
    torch.testing.assert_close(value, expected)
    assert x.grad is not None
    assert x_eager.grad is not None
    torch.testing.assert_close(x.grad, x_eager.grad)
