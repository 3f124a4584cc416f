"""CenterLoss module: centers trained by the optimizer, or by the paper's moving average in training mode."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lossplug.functional import center_loss_output
from lossplug.losses import CenterLoss
from tests.helpers import (
    ErrorCases,
    assert_compiled_matches_eager,
    assert_raises_message,
    make_class_indices,
    make_embeddings,
    parametrize_error_cases,
)


def update_reference(centers: Tensor, features: Tensor, target: Tensor, center_lr: float) -> Tensor:
    """c_j <- c_j - lr * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), written as a loop over samples."""
    centers64, features64 = centers.double(), features.double()
    steps = torch.zeros_like(centers64)
    counts = [0] * centers.shape[0]
    for x, y in zip(features64, target.tolist(), strict=True):
        steps[y] += centers64[y] - x
        counts[y] += 1
    for j, n_j in enumerate(counts):
        steps[j] /= 1 + n_j
    return centers64 - center_lr * steps


def test_optimizer_centers_are_a_parameter_with_the_right_gradient() -> None:
    loss = CenterLoss(num_classes=4, feature_dim=3)
    assert isinstance(loss.centers, torch.nn.Parameter)
    assert loss.centers.shape == (4, 3)
    assert loss.input_kind == "embeddings"
    x = make_embeddings(12, 3).requires_grad_()
    y = make_class_indices(12, 4)
    loss(x, y).backward()
    assert loss.centers.grad is not None
    # d/dc_j of mean_i 1/2 |x_i - c_{y_i}|^2 = sum_{i: y_i = j} (c_j - x_i) / N
    expected = torch.zeros(4, 3)
    for features, label in zip(x.detach(), y.tolist(), strict=True):
        expected[label] += (loss.centers.detach()[label] - features) / len(y)
    torch.testing.assert_close(loss.centers.grad, expected)


@pytest.mark.parametrize("update", ["optimizer", "moving_average"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_equals_function(update: str, reduction: str) -> None:
    loss = CenterLoss(4, 3, update=update, reduction=reduction).eval()  # type: ignore[arg-type]
    x, y = make_embeddings(12, 3), make_class_indices(12, 4)
    out = loss.evaluate(x, y)
    expected = center_loss_output(x, y, loss.centers, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(out.per_sample, expected.per_sample)
    assert out.p_t is None


@pytest.mark.parametrize("update", ["optimizer", "moving_average"])
def test_never_negative(update: str) -> None:
    loss = CenterLoss(4, 3, update=update, reduction="none").eval()  # type: ignore[arg-type]
    y = make_class_indices(12, 4)
    x = loss.centers.detach()[y].clone()  # the first half exactly on their centers
    x[6:] += make_embeddings(12, 3)[6:]
    per_sample = loss(x, y)
    assert bool((per_sample >= 0).all())
    assert bool((per_sample[:6] == 0).all())
    loss.train()
    for _ in range(3):
        assert bool((loss(make_embeddings(12, 3), y) >= 0).all())


@pytest.mark.parametrize("center_lr", [0.1, 0.5, 1.0])
def test_moving_average_update_in_training_mode_matches_formula(center_lr: float) -> None:
    torch.manual_seed(0)  # the centers are drawn at random: not from whatever state earlier tests left
    loss = CenterLoss(4, 3, update="moving_average", center_lr=center_lr).train()
    x, y = make_embeddings(12, 3), make_class_indices(12, 4)
    y[y == 3] = 0  # class 3 gets no sample this batch and must not move
    before = loss.centers.clone()
    expected_loss = center_loss_output(x, y, before).loss
    value = loss(x, y)
    # the loss is computed with the centers before the update
    torch.testing.assert_close(value, expected_loss)
    # float32 centers against the float64 formula: equal to float32 accuracy
    torch.testing.assert_close(loss.centers, update_reference(before, x, y, center_lr).float())
    torch.testing.assert_close(loss.centers[3], before[3], rtol=0, atol=0)
    # a second call moves them again, from where they are
    second = loss.centers.clone()
    loss(x, y)
    torch.testing.assert_close(loss.centers, update_reference(second, x, y, center_lr).float())


def test_moving_average_centers_get_no_gradient_and_are_a_buffer() -> None:
    loss = CenterLoss(4, 3, update="moving_average").train()
    assert "centers" in dict(loss.named_buffers())
    assert list(loss.parameters()) == []
    assert not loss.centers.requires_grad
    x = make_embeddings(12, 3).requires_grad_()
    value = loss(x, make_class_indices(12, 4))
    value.backward()
    assert loss.centers.grad is None
    assert not loss.centers.requires_grad
    assert x.grad is not None
    assert "centers" in loss.state_dict()


def test_moving_average_centers_do_not_move_in_eval_mode() -> None:
    loss = CenterLoss(4, 3, update="moving_average").eval()
    before = loss.centers.clone()
    loss(make_embeddings(12, 3), make_class_indices(12, 4))
    torch.testing.assert_close(loss.centers, before, rtol=0, atol=0)
    loss.train()
    loss(make_embeddings(12, 3), make_class_indices(12, 4))
    assert not torch.equal(loss.centers, before)


def test_optimizer_centers_do_not_move_without_an_optimizer_step() -> None:
    loss = CenterLoss(4, 3).train()
    before = loss.centers.detach().clone()
    loss(make_embeddings(12, 3), make_class_indices(12, 4)).backward()
    torch.testing.assert_close(loss.centers.detach(), before, rtol=0, atol=0)


def test_moving_average_pulls_centers_to_the_class_means() -> None:
    loss = CenterLoss(2, 2, update="moving_average", center_lr=1.0).train()
    x = torch.tensor([[1.0, 1.0], [3.0, 1.0], [-2.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    for _ in range(60):
        loss(x, y)
    torch.testing.assert_close(loss.centers, torch.tensor([[2.0, 1.0], [-2.0, 0.0]]), rtol=0, atol=1e-5)


CONSTRUCTION_ERRORS: ErrorCases = {
    "update": (
        lambda: CenterLoss(4, 3, update="sgd"),
        ValueError,
        "`update` to be one of ['optimizer', 'moving_average'], but got 'sgd'",
    ),  # type: ignore[arg-type]
    "center_lr_above_1": (
        lambda: CenterLoss(4, 3, update="moving_average", center_lr=1.5),
        ValueError,
        "`center_lr` to be a number in [0, 1], but got 1.5",
    ),
    "center_lr_negative": (
        lambda: CenterLoss(4, 3, update="moving_average", center_lr=-0.5),
        ValueError,
        "`center_lr` to be a number in [0, 1], but got -0.5",
    ),
    "num_classes_missing": (lambda: CenterLoss(), ValueError, "`num_classes` to be an integer >= 2, but got None"),
    "feature_dim_missing": (lambda: CenterLoss(3), ValueError, "`feature_dim` to be an integer >= 1, but got None"),
    "num_classes_1": (lambda: CenterLoss(1, 3), ValueError, "`num_classes` to be an integer >= 2, but got 1"),
    "feature_dim_0": (lambda: CenterLoss(4, 0), ValueError, "`feature_dim` to be an integer >= 1, but got 0"),
    "reduction": (
        lambda: CenterLoss(4, 3, reduction="avg"),
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
    "feature_dim_mismatch": (
        lambda: CenterLoss(4, 3)(torch.zeros(12, 5), make_class_indices(12, 4)),
        ValueError,
        "`features` of shape (N, 3), but got shape (12, 5)",
    ),
    "batch_mismatch": (
        lambda: CenterLoss(4, 3)(make_embeddings(12, 3), make_class_indices(5, 4)),
        ValueError,
        "`target` of shape (12,) to match `features` of shape (12, 3)",
    ),
    "out_of_range": (
        lambda: CenterLoss(4, 3)(make_embeddings(2, 3), torch.tensor([0, 4])),
        ValueError,
        "class index to be in [0, 3], but got 4",
    ),
    "negative": (
        lambda: CenterLoss(4, 3)(make_embeddings(2, 3), torch.tensor([0, -1])),
        ValueError,
        "class index to be in [0, 3], but got -1",
    ),
    "float_target": (
        lambda: CenterLoss(4, 3)(make_embeddings(2, 3), torch.zeros(2)),
        TypeError,
        "`target` to hold integer class indices",
    ),
}


@parametrize_error_cases(CALL_ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_bad_input_does_not_move_moving_average_centers() -> None:
    loss = CenterLoss(4, 3, update="moving_average").train()
    before = loss.centers.clone()
    with pytest.raises(ValueError, match="but got 4"):
        loss(make_embeddings(2, 3), torch.tensor([0, 4]))
    torch.testing.assert_close(loss.centers, before, rtol=0, atol=0)


def test_torch_compile_fullgraph_matches_eager() -> None:
    assert_compiled_matches_eager(CenterLoss(4, 3), lambda: make_embeddings(12, 3), make_class_indices(12, 4))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_moving_average_gradient_is_that_of_the_centers_before_the_update(reduction: str) -> None:
    # The min-cut partitioner (inductor's; aot_eager_decomp_partition runs it without code generation)
    # recomputes c_y in backward from the centers it was given: with the update applied to those centers
    # in place, backward read the updated ones. Compiled and eager copies must stay step for step equal.
    torch.manual_seed(0)
    eager = CenterLoss(4, 3, update="moving_average", reduction=reduction).train()
    compiled_loss = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_loss, fullgraph=True, backend="aot_eager_decomp_partition")
    for step in range(3):
        x_compiled = make_embeddings(16, 3, seed=step).requires_grad_()
        x_eager = make_embeddings(16, 3, seed=step).requires_grad_()
        y = make_class_indices(16, 4, seed=step)
        compiled(x_compiled, y).sum().backward()
        eager(x_eager, y).sum().backward()
        assert x_compiled.grad is not None
        assert x_eager.grad is not None
        torch.testing.assert_close(x_compiled.grad, x_eager.grad)
        torch.testing.assert_close(compiled_loss.centers, eager.centers)
    assert "centers" in dict(compiled_loss.named_buffers())


def test_center_lr_is_recorded_as_given_and_defaults_for_moving_average() -> None:
    assert CenterLoss(4, 3).center_lr is None
    assert CenterLoss(4, 3).init_args["center_lr"] is None
    moving = CenterLoss(4, 3, update="moving_average")
    assert moving.center_lr == 0.5
    assert moving.init_args["center_lr"] is None
    given = CenterLoss(4, 3, update="moving_average", center_lr=0.2)
    assert given.center_lr == 0.2
    assert given.init_args["center_lr"] == 0.2
    assert type(given)(**given.init_args).center_lr == 0.2


def test_moving_average_in_training_mode_under_torch_func_names_the_fix() -> None:
    loss = CenterLoss(4, 3, update="moving_average").train()
    x, y = make_embeddings(5, 3), make_class_indices(5, 4)
    before = loss.centers.clone()
    with pytest.raises(RuntimeError, match=re.escape("Use update='optimizer'")):
        torch.func.grad(lambda x: loss(x, y))(x)
    torch.testing.assert_close(loss.centers, before, rtol=0, atol=0)
    # in eval mode nothing moves, and the transforms work
    loss.eval()
    grads = torch.func.vmap(torch.func.grad(lambda x_i, y_i: loss(x_i[None], y_i[None])))(x, y)
    torch.testing.assert_close(grads, x - loss.centers[y])
