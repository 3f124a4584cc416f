"""LogitAdjustedLoss and BalancedSoftmaxLoss modules, and what every loss built from class counts shares
(ClassCountsLoss: counts given or set later, buffers, checkpoints, devices), LDAMLoss included."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

import lossplug
from lossplug.functional.logit_adjusted import (
    balanced_softmax_loss_output,
    log_class_prior,
    logit_adjusted_loss_output,
)
from lossplug.losses import BalancedSoftmaxLoss, ClassCountsLoss, LogitAdjustedLoss
from lossplug.losses import logit_adjusted as module
from lossplug.losses.ldam import LDAMLoss
from lossplug.serialization import build_loss, loss_config
from tests.helpers import (
    REDUCTIONS,
    ErrorCases,
    assert_close_with_grad,
    assert_compiled_matches_eager,
    assert_func_transforms_match_autograd,
    assert_raises_message,
    make_float32_logits,
    make_target,
    parametrize_error_cases,
    save_and_load,
)

COUNTS = [500, 60, 12, 3]
SHAPE = (2, 4, 3, 2)


def assert_outputs_equal(got: tuple[object, ...], expected: tuple[object, ...]) -> None:
    for got_field, expected_field in zip(got, expected, strict=True):
        if isinstance(got_field, Tensor):
            assert isinstance(expected_field, Tensor)
            torch.testing.assert_close(got_field, expected_field)
        else:
            assert got_field == expected_field


# -- module == function -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5], ids=["tau_0", "tau_1", "tau_1.5"])
def test_logit_adjusted_module_equals_function(tau: float, reduction: str) -> None:
    x, y = make_float32_logits(SHAPE), make_target(SHAPE, ignore_index=-100)
    loss = LogitAdjustedLoss(tau=tau, class_counts=COUNTS, reduction=reduction)  # type: ignore[arg-type]
    out = loss.evaluate(x, y)
    assert_outputs_equal(out, logit_adjusted_loss_output(x, y, COUNTS, tau=tau, reduction=reduction))  # type: ignore[arg-type]
    torch.testing.assert_close(loss(x, y), out.loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_balanced_softmax_module_equals_function_and_logit_adjustment_at_tau_1(reduction: str) -> None:
    x, y = make_float32_logits(SHAPE), make_target(SHAPE, ignore_index=-100)
    loss = BalancedSoftmaxLoss(COUNTS, reduction=reduction)  # type: ignore[arg-type]
    out = loss.evaluate(x, y)
    assert_outputs_equal(out, balanced_softmax_loss_output(x, y, COUNTS, reduction=reduction))  # type: ignore[arg-type]
    assert_outputs_equal(out, LogitAdjustedLoss(1.0, COUNTS, reduction=reduction).evaluate(x, y))  # type: ignore[arg-type]
    torch.testing.assert_close(loss(x, y), out.loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equal_counts_equal_torch_cross_entropy(reduction: str) -> None:
    x, y = make_float32_logits(SHAPE).requires_grad_(), make_target(SHAPE, ignore_index=-100)
    expected = nn.CrossEntropyLoss(reduction=reduction)(x, y)
    got = BalancedSoftmaxLoss([5, 5, 5, 5], reduction=reduction)(x, y)  # type: ignore[arg-type]
    assert_close_with_grad(got, expected, x, rtol=1e-5, atol=1e-6)


def test_balanced_softmax_records_its_own_arguments() -> None:
    loss = BalancedSoftmaxLoss(COUNTS)
    assert loss.init_args == {"class_counts": COUNTS, "ignore_index": -100, "reduction": "mean", "validate_args": True}
    assert loss.tau == 1.0
    assert repr(loss).startswith("BalancedSoftmaxLoss(class_counts=[500, 60, 12, 3]")


# -- class counts: given, set later, loaded (every ClassCountsLoss) ---------------------------------------

COUNT_LOSSES: dict[str, Callable[..., ClassCountsLoss]] = {
    "logit_adjusted": lambda counts=None: LogitAdjustedLoss(tau=0.5, class_counts=counts),
    "balanced_softmax": lambda counts=None: BalancedSoftmaxLoss(class_counts=counts),
    "ldam": lambda counts=None: LDAMLoss(max_margin=0.4, scale=5.0, class_counts=counts),
    "ldam_drw": lambda counts=None: LDAMLoss(class_counts=counts, drw_epoch=0),
}
BUFFERS = {
    "logit_adjusted": ["log_prior"],
    "balanced_softmax": ["log_prior"],
    "ldam": ["margins"],
    "ldam_drw": ["margins", "drw_weight"],
}
parametrize_count_losses = pytest.mark.parametrize("name", COUNT_LOSSES.keys())


def _x() -> Tensor:
    return make_float32_logits((8, 4))


def _y() -> Tensor:
    return make_target((8, 4), ignore_index=-100)


@parametrize_count_losses
def test_counts_given_or_set_later_give_the_same_float32_buffers(name: str) -> None:
    given = COUNT_LOSSES[name](COUNTS)
    assert not given.needs_class_counts
    later = COUNT_LOSSES[name]()
    assert later.needs_class_counts
    later.set_class_counts(torch.tensor(COUNTS))  # as a data module gives them
    assert not later.needs_class_counts
    state = given.state_dict()
    assert [key for key in state if key != "_extra_state"] == BUFFERS[name]
    for key in BUFFERS[name]:
        assert state[key].dtype == torch.float32
        torch.testing.assert_close(later.state_dict()[key], state[key], rtol=0, atol=0)
    torch.testing.assert_close(later(_x(), _y()), given(_x(), _y()))
    # resolved once: later counts change nothing
    later.set_class_counts([1, 1, 1, 1])
    torch.testing.assert_close(later(_x(), _y()), given(_x(), _y()))


def test_log_prior_buffer_is_the_log_prior_in_float32() -> None:
    loss = LogitAdjustedLoss(class_counts=COUNTS)
    assert loss.log_prior is not None
    torch.testing.assert_close(loss.log_prior, log_class_prior(COUNTS).float())


@parametrize_count_losses
def test_evaluating_before_the_counts_are_known_says_how_to_give_them(name: str) -> None:
    loss = COUNT_LOSSES[name]()
    message = (
        f"Expected the training class counts of {type(loss).__name__} to be known when it is evaluated, but got "
        "none: pass `class_counts=[...]` (training samples per class) to the constructor, or call "
        "`loss.set_class_counts(counts)` first (LossMixin does this at its first step, from the data module's "
        "`class_counts`)."
    )
    for call in (lambda: loss(_x(), _y()), lambda: loss.evaluate(_x(), _y())):
        with pytest.raises(RuntimeError, match=re.escape(message)):
            call()
    assert loss.state_dict().keys() <= {"_extra_state"}  # nothing resolved, nothing saved


@parametrize_count_losses
def test_checkpoint_loads_into_a_freshly_configured_loss(name: str) -> None:
    trained = COUNT_LOSSES[name]()
    trained.set_class_counts(COUNTS)
    state = save_and_load(trained.state_dict())
    fresh = COUNT_LOSSES[name]()
    assert fresh.needs_class_counts
    fresh.load_state_dict(state)
    assert not fresh.needs_class_counts
    for key in BUFFERS[name]:
        torch.testing.assert_close(getattr(fresh, key), getattr(trained, key), rtol=0, atol=0)
    torch.testing.assert_close(fresh(_x(), _y()), trained(_x(), _y()))
    # an unresolved loss's state loads into an unresolved loss
    unresolved = COUNT_LOSSES[name]()
    unresolved.load_state_dict(COUNT_LOSSES[name]().state_dict())
    assert unresolved.needs_class_counts


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter in the checkpoint to a meta parameter")
@parametrize_count_losses
def test_buffers_follow_to_and_are_resolved_where_the_module_is(name: str) -> None:
    # .to() carries resolved buffers (meta stands in for an accelerator)
    loss = COUNT_LOSSES[name](COUNTS).to("meta")
    for key in BUFFERS[name]:
        assert getattr(loss, key).device.type == "meta"
    # counts set after .to() are resolved on that device, as the mixin sets them at the first step
    later = COUNT_LOSSES[name]().to("meta")
    later.set_class_counts(COUNTS)
    for key in BUFFERS[name]:
        assert getattr(later, key).device.type == "meta"
    x = torch.empty(8, 4, device="meta")
    assert isinstance(later, LogitAdjustedLoss | LDAMLoss)
    later.validate_args = False  # checking target values reads them: meta tensors have none
    assert later(x, torch.zeros(8, dtype=torch.long, device="meta")).device.type == "meta"
    # and a checkpoint loaded after .to() lands there too
    fresh = COUNT_LOSSES[name]().to("meta")
    fresh.load_state_dict(COUNT_LOSSES[name](COUNTS).state_dict())
    for key in BUFFERS[name]:
        assert getattr(fresh, key).device.type == "meta"
    # the device tracker is no part of the state
    assert "_device_tracker" not in fresh.state_dict()


@parametrize_count_losses
def test_buffer_dtypes_follow_to_but_stay_float32_under_half(name: str) -> None:
    assert getattr(COUNT_LOSSES[name](COUNTS).double(), BUFFERS[name][0]).dtype == torch.float64
    later = COUNT_LOSSES[name]().double()
    later.set_class_counts(COUNTS)
    assert getattr(later, BUFFERS[name][0]).dtype == torch.float64
    half = COUNT_LOSSES[name]().half()
    half.set_class_counts(COUNTS)
    assert getattr(half, BUFFERS[name][0]).dtype == torch.float32
    x = _x().half()
    assert half(x, _y()).dtype == torch.float32


@parametrize_count_losses
def test_config_round_trip(name: str) -> None:
    loss = COUNT_LOSSES[name](COUNTS)
    rebuilt = build_loss(loss_config(loss))
    assert type(rebuilt) is type(loss)
    assert rebuilt.init_args == loss.init_args
    torch.testing.assert_close(rebuilt(_x(), _y()), loss(_x(), _y()))


@parametrize_count_losses
def test_device_mismatch_is_named(name: str) -> None:
    loss = COUNT_LOSSES[name](COUNTS)
    buffer = BUFFERS[name][0]
    with pytest.raises(ValueError, match=re.escape(f"`input` on meta, `{buffer}` on cpu")):
        loss.evaluate(torch.empty(8, 4, device="meta"), torch.zeros(8, dtype=torch.long, device="meta"))


# -- torch.compile ----------------------------------------------------------------------------------------

COMPILE_CASES = {
    "logit_adjusted": lambda: LogitAdjustedLoss(tau=1.0, class_counts=COUNTS),
    "logit_adjusted_ignore_sum": lambda: LogitAdjustedLoss(tau=0.5, class_counts=COUNTS, reduction="sum"),
    "balanced_softmax": lambda: BalancedSoftmaxLoss(COUNTS),
}


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_compile_fullgraph_forward_and_backward(make: Callable[[], nn.Module]) -> None:
    assert_compiled_matches_eager(make(), lambda: make_float32_logits((8, 4)), _y())


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_func_grad_and_vmap(make: Callable[[], nn.Module]) -> None:
    assert_func_transforms_match_autograd(make())


# -- shipped configs --------------------------------------------------------------------------------------

CONFIGS = Path(lossplug.__file__).parent / "configs"


@pytest.mark.parametrize(
    ("file", "class_name", "init_args"),
    [
        ("logit_adjusted.yaml", "LogitAdjustedLoss", {"tau": 1.0}),
        ("balanced_softmax.yaml", "BalancedSoftmaxLoss", {}),
    ],
)
def test_shipped_config(file: str, class_name: str, init_args: dict[str, object]) -> None:
    text = (CONFIGS / file).read_text()
    assert text.startswith("# ")
    config = yaml.safe_load(text)["model"]["loss"]
    assert config["class_path"] == f"lossplug.losses.{class_name}"
    assert (config.get("init_args") or {}) == init_args
    loss = getattr(module, class_name)(**init_args)
    assert loss.needs_class_counts  # the counts come from the data module


# -- bad arguments ----------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

CONSTRUCTION_ERRORS: ErrorCases = {
    "tau_inf": (
        lambda: LogitAdjustedLoss(tau=float("inf")),
        ValueError,
        "Expected argument `tau` to be a finite number",
    ),
    "tau_string": (lambda: LogitAdjustedLoss(tau="1"), TypeError, "`tau` to be a number, but got str '1'"),  # type: ignore[arg-type]
    "zero_count": (
        lambda: LogitAdjustedLoss(class_counts=[10, 0, 3]),
        ValueError,
        "Expected every entry of `class_counts` to be >= 1 (the log prior of a class without samples is -inf), "
        "but got 0 for classes [1]",
    ),
    "zero_count_balanced": (
        lambda: BalancedSoftmaxLoss([10, 0, 3]),
        ValueError,
        "`class_counts` to be >= 1 (the log prior of a class without samples is -inf)",
    ),
    "fractional_count": (
        lambda: BalancedSoftmaxLoss([10, 2.5, 3]),  # type: ignore[list-item]
        ValueError,
        "but got 2.5 at index 1",
    ),
    "nan_count": (lambda: BalancedSoftmaxLoss([10, float("nan"), 3]), ValueError, "but got nan at index 1"),  # type: ignore[list-item]
    "reduction": (
        lambda: LogitAdjustedLoss(reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
    "ignore_index": (
        lambda: BalancedSoftmaxLoss(ignore_index=1.0),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `ignore_index` to be an integer, but got float 1.0",
    ),
    "validate_args": (
        lambda: LogitAdjustedLoss(validate_args="no"),  # type: ignore[arg-type]
        TypeError,
        "Expected argument `validate_args` to be True or False, but got str 'no'",
    ),
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


def test_zero_count_from_the_data_module_is_refused_when_set() -> None:
    loss = BalancedSoftmaxLoss()
    assert_raises_message(
        lambda: loss.set_class_counts(torch.tensor([10, 0, 3])),
        ValueError,
        "to be >= 1 (the log prior of a class without samples is -inf), but got 0 for classes [1]",
    )
    assert loss.needs_class_counts


CALL_ERRORS: ErrorCases = {
    "counts_length": (
        lambda: LogitAdjustedLoss(class_counts=[10, 5])(X, Y),
        ValueError,
        "Expected `class_counts` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "out_of_range": (
        lambda: BalancedSoftmaxLoss([1, 2, 3])(X, torch.tensor([0, 3, 1, 1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
    "float_target": (
        lambda: BalancedSoftmaxLoss([1, 2, 3])(X, torch.zeros(4)),
        TypeError,
        "`target` to hold integer class indices (int64), but got dtype torch.float32",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
