"""PolyLoss: identity with torch's cross-entropy, module == function, torch.compile, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

import lossplug
from lossplug.functional.poly import poly_loss_output
from lossplug.losses.poly import PolyLoss
from lossplug.serialization import build_loss, loss_config
from tests.helpers import (
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_compiled_matches_eager,
    assert_func_transforms_match_autograd,
    assert_raises_message,
    ignore_kwargs,
    make_float32_logits,
    make_target,
    parametrize_error_cases,
)

SHAPES = {"2d": (8, 4), "4d": (2, 4, 3, 2)}
IGNORE = {"no_ignore": None, "ignore_-100": -100, "ignore_class_2": 2}


@pytest.mark.parametrize("ignore_index", IGNORE.values(), ids=IGNORE.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_epsilon_0_equals_torch_cross_entropy(shape: tuple[int, ...], reduction: str, ignore_index: int | None) -> None:
    kwargs = {"reduction": reduction, "label_smoothing": 0.1, **ignore_kwargs(ignore_index)}
    x = make_float32_logits(shape).requires_grad_()
    y = make_target(shape, ignore_index)
    expected = nn.CrossEntropyLoss(**kwargs)(x, y)  # type: ignore[arg-type]
    got = PolyLoss(epsilon=0.0, **kwargs)(x, y)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["no_smoothing", "smoothing_0.1"])
@pytest.mark.parametrize("epsilon", [-1.0, 1.0, 3.0], ids=["epsilon_-1", "epsilon_1", "epsilon_3"])
def test_module_equals_function(epsilon: float, smoothing: float, reduction: str) -> None:
    x = make_float32_logits((2, 4, 3, 2))
    y = make_target((2, 4, 3, 2), ignore_index=-100)
    loss = PolyLoss(epsilon=epsilon, label_smoothing=smoothing, reduction=reduction)  # type: ignore[arg-type]
    out = loss.evaluate(x, y)
    expected = poly_loss_output(x, y, epsilon, label_smoothing=smoothing, reduction=reduction)  # type: ignore[arg-type]
    for got_field, expected_field in zip(out, expected, strict=True):
        if isinstance(got_field, Tensor):
            torch.testing.assert_close(got_field, expected_field)
        else:
            assert got_field == expected_field
    torch.testing.assert_close(loss(x, y), out.loss)


def test_no_class_counts_and_no_state() -> None:
    loss = PolyLoss()
    assert not loss.needs_class_counts
    loss.set_class_counts([1, 2, 3])  # a no-op
    assert loss.state_dict() == {}
    rebuilt = build_loss(loss_config(PolyLoss(epsilon=-0.5, label_smoothing=0.1)))
    assert isinstance(rebuilt, PolyLoss)
    assert (rebuilt.epsilon, rebuilt.label_smoothing) == (-0.5, 0.1)


# -- torch.compile ----------------------------------------------------------------------------------------

COMPILE_CASES: dict[str, Callable[[], PolyLoss]] = {
    "poly": lambda: PolyLoss(epsilon=1.0),
    "poly_minus_1_smoothing": lambda: PolyLoss(epsilon=-1.0, label_smoothing=0.1),
}


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_compile_fullgraph_forward_and_backward(make: Callable[[], PolyLoss]) -> None:
    assert_compiled_matches_eager(make(), lambda: make_float32_logits((8, 4)), make_target((8, 4), ignore_index=-100))


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_func_grad_and_vmap(make: Callable[[], nn.Module]) -> None:
    assert_func_transforms_match_autograd(make())


# -- shipped config ---------------------------------------------------------------------------------------


def test_shipped_config() -> None:
    text = (Path(lossplug.__file__).parent / "configs" / "poly.yaml").read_text()
    assert text.startswith("# ")
    config = yaml.safe_load(text)["model"]["loss"]
    assert config["class_path"] == "lossplug.losses.PolyLoss"
    assert config["init_args"] == {"epsilon": 1.0}
    assert PolyLoss(**config["init_args"]).epsilon == 1.0


# -- bad arguments ----------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

CONSTRUCTION_ERRORS: ErrorCases = {
    "epsilon_below_minus_1": (
        lambda: PolyLoss(epsilon=-2.0),
        ValueError,
        "Expected argument `epsilon` to be a number >= -1, but got -2.0",
    ),
    "epsilon_nan": (
        lambda: PolyLoss(epsilon=float("nan")),
        ValueError,
        "Expected argument `epsilon` to be a finite number >= -1, but got nan",
    ),
    "epsilon_string": (
        lambda: PolyLoss(epsilon="1"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `epsilon` to be a number, but got str '1'",
    ),
    "label_smoothing": (
        lambda: PolyLoss(label_smoothing=-0.1),
        ValueError,
        "Expected argument `label_smoothing` to be a number in [0, 1], but got -0.1",
    ),
    "reduction": (
        lambda: PolyLoss(reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "ignore_index": (
        lambda: PolyLoss(ignore_index="-100"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got str '-100'",
    ),
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


CALL_ERRORS: ErrorCases = {
    "out_of_range": (
        lambda: PolyLoss()(X, torch.tensor([0, 3, 1, 1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "batch_mismatch": (
        lambda: PolyLoss()(X, Y[:2]),
        ValueError,
        "`target` of shape (4,) to match `input` of shape (4, 3)",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
