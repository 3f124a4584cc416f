"""LDAMLoss: module == function, deferred re-weighting switched by set_epoch, its state, torch.compile, errors.

What LDAMLoss shares with the other losses built from class counts (counts set later, buffers,
checkpoints, devices) is tested in test_logit_adjusted.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import Tensor, nn

import lossplug
from lossplug.data import DigitsDataModule
from lossplug.functional.ldam import drw_class_weights, ldam_loss_output, ldam_margins
from lossplug.losses.ldam import LDAMLoss
from lossplug.models import DemoClassifier
from tests.helpers import (
    REDUCTIONS,
    ErrorCases,
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


def x() -> Tensor:
    return 0.5 * make_float32_logits(SHAPE)


def y() -> Tensor:
    return make_target(SHAPE, ignore_index=-100)


def assert_outputs_equal(got: tuple[object, ...], expected: tuple[object, ...]) -> None:
    for got_field, expected_field in zip(got, expected, strict=True):
        if isinstance(got_field, Tensor):
            assert isinstance(expected_field, Tensor)
            torch.testing.assert_close(got_field, expected_field)
        else:
            assert got_field == expected_field


def function_output(reduction: str = "mean", weighted: bool = False, beta: float = 0.9999) -> tuple[object, ...]:
    weight = drw_class_weights(COUNTS, beta).float() if weighted else None
    return ldam_loss_output(x(), y(), COUNTS, 0.5, 30.0, weight, reduction=reduction)  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function(reduction: str) -> None:
    loss = LDAMLoss(max_margin=0.5, scale=30.0, class_counts=COUNTS, reduction=reduction)  # type: ignore[arg-type]
    out = loss.evaluate(x(), y())
    assert_outputs_equal(out, function_output(reduction))
    torch.testing.assert_close(loss(x(), y()), out.loss)


def test_buffers_are_the_margins_and_drw_weights() -> None:
    loss = LDAMLoss(max_margin=0.5, class_counts=COUNTS, drw_epoch=3, drw_beta=0.99)
    assert loss.margins is not None
    assert loss.drw_weight is not None
    torch.testing.assert_close(loss.margins, ldam_margins(COUNTS, 0.5).float())
    torch.testing.assert_close(loss.drw_weight, drw_class_weights(COUNTS, 0.99).float())
    no_drw = LDAMLoss(class_counts=COUNTS)
    assert no_drw.drw_weight is None
    assert "drw_weight" not in no_drw.state_dict()


# -- deferred re-weighting --------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_drw_switches_on_at_drw_epoch(reduction: str) -> None:
    loss = LDAMLoss(class_counts=COUNTS, drw_epoch=2, reduction=reduction)  # type: ignore[arg-type]
    unweighted, weighted = function_output(reduction), function_output(reduction, weighted=True)
    assert loss.epoch == 0
    assert not loss.drw_active
    assert_outputs_equal(loss.evaluate(x(), y()), unweighted)
    for epoch, active in ((0, False), (1, False), (2, True), (7, True), (1, False), (2, True)):
        loss.set_epoch(epoch)
        assert loss.epoch == epoch
        assert loss.drw_active is active
        assert_outputs_equal(loss.evaluate(x(), y()), weighted if active else unweighted)
        torch.testing.assert_close(loss(x(), y()), (weighted if active else unweighted)[0])


def test_drw_mean_divides_by_the_weights_of_the_counted_samples() -> None:
    loss = LDAMLoss(class_counts=COUNTS, drw_epoch=0)
    out = loss.evaluate(x(), y())
    valid = out.valid
    weight = drw_class_weights(COUNTS).float()[y().clamp_min(0)]
    torch.testing.assert_close(out.loss, out.per_sample.sum() / weight[valid].sum())


def test_drw_epoch_0_weights_from_the_start_and_none_never() -> None:
    assert LDAMLoss(class_counts=COUNTS, drw_epoch=0).drw_active
    never = LDAMLoss(class_counts=COUNTS)
    never.set_epoch(10_000)
    assert not never.drw_active
    assert_outputs_equal(never.evaluate(x(), y()), function_output())


def test_evaluation_uses_the_weights_of_the_last_epoch_set() -> None:
    loss = LDAMLoss(class_counts=COUNTS, drw_epoch=2)
    loss.set_epoch(2)
    loss.eval()
    assert_outputs_equal(loss.evaluate(x(), y()), function_output(weighted=True))
    with torch.no_grad():
        torch.testing.assert_close(loss(x(), y()), function_output(weighted=True)[0])


def test_the_epoch_is_saved_so_a_checkpoint_evaluates_as_the_run_did() -> None:
    trained = LDAMLoss(drw_epoch=2)
    trained.set_class_counts(COUNTS)
    trained.set_epoch(5)
    state = save_and_load(trained.state_dict())  # weights_only=True: the epoch is a plain int
    assert state["_extra_state"] == {"epoch": 5}
    fresh = LDAMLoss(drw_epoch=2)
    fresh.load_state_dict(state)
    assert fresh.epoch == 5
    assert fresh.drw_active
    assert_outputs_equal(fresh.evaluate(x(), y()), trained.evaluate(x(), y()))
    early = LDAMLoss(drw_epoch=2)
    early.load_state_dict(save_and_load(LDAMLoss(class_counts=COUNTS, drw_epoch=2).state_dict()))
    assert early.epoch == 0
    assert not early.drw_active


def test_training_takes_counts_and_epochs_from_the_run_and_the_checkpoint_keeps_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = DigitsDataModule()
    model = DemoClassifier(LDAMLoss(scale=10.0, drw_epoch=1), num_classes=10)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    loss = model.loss
    assert isinstance(loss, LDAMLoss)
    assert loss.margins is not None
    torch.testing.assert_close(loss.margins, ldam_margins(data.class_counts, 0.5).float())
    assert (loss.epoch, loss.drw_active) == (1, True)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = DemoClassifier.load_from_checkpoint(tmp_path / "last.ckpt")
    assert isinstance(loaded.loss, LDAMLoss)
    assert (loaded.loss.epoch, loaded.loss.drw_active) == (1, True)
    assert loaded.loss.drw_weight is not None
    torch.testing.assert_close(loaded.loss.drw_weight, drw_class_weights(data.class_counts).float())


# -- torch.compile ----------------------------------------------------------------------------------------

COMPILE_CASES: dict[str, Callable[[], LDAMLoss]] = {
    "ldam": lambda: LDAMLoss(class_counts=COUNTS),
    "ldam_drw_active": lambda: LDAMLoss(class_counts=COUNTS, drw_epoch=0),
    "ldam_drw_inactive_sum": lambda: LDAMLoss(class_counts=COUNTS, drw_epoch=3, reduction="sum"),
}


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_compile_fullgraph_forward_and_backward(make: Callable[[], LDAMLoss]) -> None:
    assert_compiled_matches_eager(make(), lambda: 0.5 * make_float32_logits((8, 4)), make_target((8, 4)))


@pytest.mark.parametrize("make", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_torch_func_grad_and_vmap(make: Callable[[], nn.Module]) -> None:
    assert_func_transforms_match_autograd(make())


# -- shipped config ---------------------------------------------------------------------------------------


def test_shipped_config() -> None:
    text = (Path(lossplug.__file__).parent / "configs" / "ldam_drw.yaml").read_text()
    assert text.startswith("# ")
    config = yaml.safe_load(text)["model"]["loss"]
    assert config["class_path"] == "lossplug.losses.LDAMLoss"
    assert config["init_args"] == {"max_margin": 0.5, "scale": 30.0, "drw_epoch": 10, "drw_beta": 0.9999}
    loss = LDAMLoss(**config["init_args"])
    assert loss.needs_class_counts  # the counts come from the data module
    loss.set_class_counts(COUNTS)
    loss.set_epoch(9)
    assert not loss.drw_active
    loss.set_epoch(10)
    assert loss.drw_active


# -- bad arguments ----------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 0])

CONSTRUCTION_ERRORS: ErrorCases = {
    "max_margin_negative": (
        lambda: LDAMLoss(max_margin=-0.5),
        ValueError,
        "Expected argument `max_margin` to be a number >= 0, but got -0.5",
    ),
    "max_margin_inf": (
        lambda: LDAMLoss(max_margin=float("inf")),
        ValueError,
        "Expected argument `max_margin` to be a finite number >= 0, but got inf",
    ),
    "scale_zero": (lambda: LDAMLoss(scale=0), ValueError, "Expected argument `scale` to be a number > 0, but got 0"),
    "scale_inf": (
        lambda: LDAMLoss(scale=float("inf")),
        ValueError,
        "Expected argument `scale` to be a finite number > 0, but got inf",
    ),
    "drw_epoch_negative": (
        lambda: LDAMLoss(drw_epoch=-1),
        ValueError,
        "Expected argument `drw_epoch` to be an integer >= 0, but got -1",
    ),
    "drw_epoch_float": (
        lambda: LDAMLoss(drw_epoch=2.0),  # type: ignore[arg-type]
        ValueError,
        "Expected argument `drw_epoch` to be an integer >= 0, but got 2.0",
    ),
    "drw_epoch_bool": (
        lambda: LDAMLoss(drw_epoch=True),
        ValueError,
        "Expected argument `drw_epoch` to be an integer >= 0, but got True",
    ),
    "drw_beta_1": (
        lambda: LDAMLoss(drw_beta=1.0),
        ValueError,
        "Expected argument `drw_beta` to be a number in [0, 1), but got 1.0",
    ),
    "zero_count": (
        lambda: LDAMLoss(class_counts=[10, 0, 3]),
        ValueError,
        "Expected every entry of `class_counts` to be >= 1 (the margin n^(-1/4) of a class without samples is "
        "infinite), but got 0 for classes [1]",
    ),
    "negative_count": (lambda: LDAMLoss(class_counts=[10, -3, 3]), ValueError, "but got -3.0 at index 1"),
    "reduction": (
        lambda: LDAMLoss(reduction="avg"),  # type: ignore[arg-type]
        ValueError,
        "`reduction` to be one of ['mean', 'sum', 'none'], but got 'avg'",
    ),
}


@parametrize_error_cases(CONSTRUCTION_ERRORS)
def test_construction_errors_are_raised_at_construction(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    assert_raises_message(call, error, message)


CALL_ERRORS: ErrorCases = {
    "counts_length": (
        lambda: LDAMLoss(class_counts=[10, 5])(X, Y),
        ValueError,
        "Expected `class_counts` to have one entry per class (3 classes in `input`), but got 2 entries",
    ),
    "set_epoch_negative": (
        lambda: LDAMLoss().set_epoch(-1),
        ValueError,
        "Expected argument `epoch` to be an integer >= 0, but got -1",
    ),
    "out_of_range": (
        lambda: LDAMLoss(class_counts=[1, 2, 3])(X, torch.tensor([0, 3, 1, 1])),
        ValueError,
        "class index to be in [0, 2] or ignore_index=-100, but got 3",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)
