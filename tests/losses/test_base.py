"""What every lossplug loss module shares: forward/evaluate/evaluate_output, recorded arguments, state,
empty batches, NaN propagation, gradcheck through the module and its parameters, weights given as strategies."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from lossplug.functional import class_weights_from_counts
from lossplug.losses import (
    ArcFaceLoss,
    BalancedCrossEntropyLoss,
    BaseLoss,
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    CenterLoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedSum,
    select_input,
)
from tests.helpers import save_and_load


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits(n: int = 6, c: int = 4) -> Tensor:
    return 2 * torch.randn(n, c, generator=_generator(1))


def indices(n: int = 6, c: int = 4) -> Tensor:
    return torch.randint(0, c, (n,), generator=_generator(2))


def probabilities(n: int = 6, c: int = 4) -> Tensor:
    return torch.rand(n, c, generator=_generator(3))


def embeddings(n: int = 6, d: int = 3) -> Tensor:
    return torch.randn(n, d, generator=_generator(4))


@dataclass(frozen=True)
class Case:
    """A configured loss, an input and a target for it, and whether it gives class probabilities."""

    make: Callable[[], BaseLoss]
    input: Callable[[], Tensor]
    target: Callable[[], Tensor]
    kind: str  # what the loss consumes from a model output
    has_p_t: bool = True
    binary: bool = False


CASES: dict[str, Case] = {
    "cross_entropy": Case(
        lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1), logits, indices, "logits"
    ),
    "cross_entropy_soft": Case(lambda: CrossEntropyLoss(), logits, lambda: probabilities().softmax(dim=1), "logits"),
    "balanced_cross_entropy": Case(
        lambda: BalancedCrossEntropyLoss(alpha=[0.25, 0.5, 0.75, 1.0]), logits, indices, "logits"
    ),
    "binary_cross_entropy": Case(
        lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0, 3.0, 0.5]), logits, probabilities, "logits", binary=True
    ),
    "focal": Case(lambda: FocalLoss(gamma=2.0, alpha=[0.25, 0.5, 0.75, 1.0]), logits, indices, "logits"),
    "binary_focal": Case(lambda: BinaryFocalLoss(gamma=2.0, alpha=0.25), logits, probabilities, "logits", binary=True),
    "arcface": Case(lambda: ArcFaceLoss(num_classes=4, embedding_dim=3, scale=8.0), embeddings, indices, "embeddings"),
    "center": Case(lambda: CenterLoss(num_classes=4, feature_dim=3), embeddings, indices, "embeddings", has_p_t=False),
    "center_moving_average": Case(
        lambda: CenterLoss(num_classes=4, feature_dim=3, update="moving_average").eval(),
        embeddings,
        indices,
        "embeddings",
        has_p_t=False,
    ),
}


def build(case: Case) -> BaseLoss:
    torch.manual_seed(0)  # ArcFace weights and centers are initialized randomly
    return case.make()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_evaluate_and_evaluate_output_agree(case: Case) -> None:
    loss = build(case)
    x, y = case.input(), case.target()
    out = loss.evaluate(x, y)
    torch.testing.assert_close(loss(x, y), out.loss)
    assert loss.input_kind == case.kind
    other = "embeddings" if case.kind == "logits" else "logits"
    routed = loss.evaluate_output({case.kind: x, other: torch.full((6, 9), float("nan"))}, y)
    torch.testing.assert_close(routed.loss, out.loss)
    torch.testing.assert_close(loss.evaluate_output(x, y).loss, out.loss)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_output_fields_have_documented_shapes(case: Case) -> None:
    loss = build(case)
    x, y = case.input(), case.target()
    out = loss.evaluate(x, y)
    expected_shape = x.shape if case.binary else (x.shape[0],)
    assert out.loss.shape == ()
    assert out.per_sample.shape == expected_shape
    assert out.valid.shape == expected_shape
    assert out.valid.dtype == torch.bool
    if case.has_p_t:
        assert out.p_t is not None
        assert out.p_t.shape == expected_shape
        assert not out.p_t.requires_grad
        assert bool(((out.p_t >= 0) & (out.p_t <= 1)).all())
    else:
        assert out.p_t is None
    assert out.task == ("binary" if case.binary else "multiclass")
    assert out.num_classes == 4
    assert out.terms == {}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_reduction_none_and_sum_from_per_sample(case: Case) -> None:
    x, y = case.input(), case.target()
    per_sample = build(case).evaluate(x, y).per_sample
    for reduction, expected in (("none", per_sample), ("sum", per_sample.sum())):
        torch.manual_seed(0)
        loss = type(build(case))(**{**build(case).init_args, "reduction": reduction})
        if isinstance(loss, CenterLoss | ArcFaceLoss):
            loss.load_state_dict(build(case).state_dict())
        loss.train(build(case).training)
        torch.testing.assert_close(loss(x, y), expected)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_init_args_rebuild_the_same_loss(case: Case) -> None:
    loss = build(case)
    rebuilt = type(loss)(**loss.init_args)
    rebuilt.load_state_dict(loss.state_dict())
    rebuilt.train(loss.training)
    x, y = case.input(), case.target()
    torch.testing.assert_close(rebuilt(x, y), loss(x, y))
    for name, value in loss.init_args.items():
        assert f"{name}=" in repr(loss)
        assert getattr(rebuilt, "init_args")[name] == value  # noqa: B009


def test_init_args_record_defaults_and_given_values() -> None:
    assert FocalLoss(gamma=1.0).init_args == {
        "gamma": 1.0,
        "alpha": None,
        "beta": None,
        "ignore_index": -100,
        "reduction": "mean",
        "validate_args": True,
    }
    assert ArcFaceLoss(5, 8, margin=0.3).init_args["margin"] == 0.3
    assert CenterLoss(5, 8, update="moving_average").init_args["update"] == "moving_average"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_state_dict_survives_torch_save_and_load(case: Case) -> None:
    loss = build(case)
    state = save_and_load(loss.state_dict())
    assert state.keys() == loss.state_dict().keys()
    torch.manual_seed(123)  # a different random init, overwritten by the load
    fresh = type(loss)(**loss.init_args)
    fresh.load_state_dict(state)
    fresh.train(loss.training)
    for name, tensor in loss.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)
    x, y = case.input(), case.target()
    torch.testing.assert_close(fresh(x, y), loss(x, y))


STATE = {
    "cross_entropy_weight": (lambda: CrossEntropyLoss(weight=[1.0, 2.0]), "weight", False),
    "balanced_alpha": (lambda: BalancedCrossEntropyLoss(alpha=[0.5, 1.0]), "alpha", False),
    "focal_alpha": (lambda: FocalLoss(alpha=[0.5, 1.0]), "alpha", False),
    "bce_pos_weight": (lambda: BinaryCrossEntropyLoss(pos_weight=[2.0, 3.0]), "pos_weight", False),
    "bce_scalar_pos_weight": (lambda: BinaryCrossEntropyLoss(pos_weight=2.0), "pos_weight", False),
    "arcface_weight": (lambda: ArcFaceLoss(3, 2), "weight", True),
    "center_centers": (lambda: CenterLoss(3, 2), "centers", True),
    "center_moving_average_centers": (lambda: CenterLoss(3, 2, update="moving_average"), "centers", False),
}


@pytest.mark.parametrize(("make", "name", "is_parameter"), STATE.values(), ids=STATE.keys())
def test_weights_are_buffers_and_learnable_weights_parameters(
    make: Callable[[], BaseLoss], name: str, is_parameter: bool
) -> None:
    loss = make()
    tensor = getattr(loss, name)
    assert isinstance(tensor, Tensor)
    assert tensor.dtype == torch.float32
    assert name in loss.state_dict()
    assert (name in dict(loss.named_parameters())) == is_parameter
    assert (name in dict(loss.named_buffers())) == (not is_parameter)
    assert isinstance(tensor, nn.Parameter) == is_parameter
    # .to() carries them: a dtype, and a device (meta stands in for an accelerator)
    assert getattr(loss.to(torch.float64), name).dtype == torch.float64
    assert getattr(loss.to("meta"), name).device.type == "meta"


CLASS_WEIGHT_BUFFERS = {key: (make, name) for key, (make, name, is_parameter) in STATE.items() if not is_parameter}
del CLASS_WEIGHT_BUFFERS["center_moving_average_centers"]  # centers are features, not class weights


@pytest.mark.parametrize(("make", "name"), CLASS_WEIGHT_BUFFERS.values(), ids=CLASS_WEIGHT_BUFFERS.keys())
def test_class_weights_and_alphas_stay_float32_after_half(make: Callable[[], BaseLoss], name: str) -> None:
    # the issue: "weights and alphas stay float32 buffers" (a module inside a model that is .half()-ed)
    loss = make().half()
    assert getattr(loss, name).dtype == torch.float32


@pytest.mark.parametrize(
    "make",
    [
        lambda: CrossEntropyLoss(weight=[1.0, 1.0, 1.0]),
        lambda: BalancedCrossEntropyLoss(alpha=[1.0, 1.0, 1.0]),
        lambda: FocalLoss(gamma=0.0, alpha=[1.0, 1.0, 1.0]),
    ],
    ids=["cross_entropy", "balanced_cross_entropy", "focal"],
)
def test_half_module_mean_over_many_pixels(make: Callable[[], BaseLoss]) -> None:
    # a segmentation batch of 90000 counted pixels: the sum of their class weights exceeds float16's range
    x = torch.randn(1, 3, 300, 300, generator=_generator(5))
    y = torch.randint(0, 3, (1, 300, 300), generator=_generator(6))
    expected = torch.nn.functional.cross_entropy(x, y)
    got = make().half()(x.half(), y)
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_half_input_keeps_buffers_float32(case: Case) -> None:
    loss = build(case)
    x, y = case.input(), case.target()
    got = loss(x.half(), y.half() if y.is_floating_point() else y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, loss(x, y), rtol=1e-2, atol=1e-2)
    for tensor in [*loss.buffers(), *loss.parameters()]:
        assert tensor.dtype == torch.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_empty_batch_is_zero_with_zero_gradient(case: Case, reduction: str) -> None:
    loss = type(build(case))(**{**build(case).init_args, "reduction": reduction})
    x = case.input()[:0].clone().requires_grad_()
    y = case.target()[:0]
    value = loss(x, y)
    assert not bool(torch.isnan(value).any())
    assert bool((value == 0).all())
    assert value.shape == (() if reduction != "none" else (x.shape if case.binary else (0,)))
    value.sum().backward()
    for parameter in loss.parameters():
        assert parameter.grad is None or bool((parameter.grad == 0).all())


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_nan_input_propagates(case: Case) -> None:
    loss = build(case)
    x, y = case.input(), case.target()
    x[1, 0] = float("nan")
    assert torch.isnan(loss(x, y))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradcheck_through_module_inputs_and_parameters(case: Case) -> None:
    loss = build(case).double()
    x = case.input()[:4].double().requires_grad_()
    y = case.target()[:4]
    y = y.double() if y.is_floating_point() else y
    names = [name for name, _ in loss.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in loss.named_parameters())

    def fn(x: Tensor, *params: Tensor) -> Tensor:
        return functional_call(loss, dict(zip(names, params, strict=True)), (x, y))

    assert gradcheck(fn, (x, *params))
    assert gradgradcheck(fn, (x, *params), fast_mode=True)


# -- weights given as a strategy -------------------------------------------------------------------------

STRATEGY_LOSSES = {
    "focal": lambda alpha: FocalLoss(gamma=2.0, alpha=alpha),
    "balanced_cross_entropy": lambda alpha: BalancedCrossEntropyLoss(alpha=alpha),
}
COUNTS = [100, 10, 50, 5]


@pytest.mark.parametrize("strategy", ["inverse_frequency", "effective_number"])
@pytest.mark.parametrize("make", STRATEGY_LOSSES.values(), ids=STRATEGY_LOSSES.keys())
def test_strategy_is_resolved_by_set_class_counts(make: Callable[[object], BaseLoss], strategy: str) -> None:
    loss = make(strategy)
    assert loss.needs_class_counts
    with pytest.raises(RuntimeError, match=re.escape("call `loss.set_class_counts(counts)` first")):
        loss(logits(), indices())
    loss.set_class_counts(COUNTS)
    assert not loss.needs_class_counts
    expected_alpha = class_weights_from_counts(COUNTS, strategy)  # type: ignore[arg-type]
    torch.testing.assert_close(loss.alpha, expected_alpha)
    assert "alpha" in dict(loss.named_buffers())
    torch.testing.assert_close(loss(logits(), indices()), make(expected_alpha.tolist())(logits(), indices()))
    # resolved once: later counts do not change it
    loss.set_class_counts([1, 1, 1, 1])
    torch.testing.assert_close(loss.alpha, expected_alpha)


@pytest.mark.parametrize("make", STRATEGY_LOSSES.values(), ids=STRATEGY_LOSSES.keys())
def test_resolved_state_loads_into_a_fresh_unresolved_loss(make: Callable[[object], BaseLoss]) -> None:
    trained = make("inverse_frequency")
    trained.set_class_counts(COUNTS)
    state = save_and_load(trained.state_dict())
    fresh = make("inverse_frequency")
    assert "alpha" not in fresh.state_dict()
    fresh.load_state_dict(state)
    assert not fresh.needs_class_counts
    assert fresh.alpha is not None
    torch.testing.assert_close(fresh.alpha, trained.alpha)
    torch.testing.assert_close(fresh(logits(), indices()), trained(logits(), indices()))
    # the loaded alpha is a buffer: .to() carries it
    assert fresh.to(torch.float64).alpha.dtype == torch.float64


@pytest.mark.parametrize("make", STRATEGY_LOSSES.values(), ids=STRATEGY_LOSSES.keys())
def test_unresolved_state_loads_into_a_fresh_unresolved_loss(make: Callable[[object], BaseLoss]) -> None:
    fresh = make("effective_number")
    fresh.load_state_dict(make("effective_number").state_dict())
    assert fresh.needs_class_counts


def test_set_class_counts_is_a_noop_for_given_weights() -> None:
    loss = FocalLoss(alpha=[0.5, 1.0])
    loss.set_class_counts([10, 1])
    torch.testing.assert_close(loss.alpha, torch.tensor([0.5, 1.0]))
    assert not CrossEntropyLoss().needs_class_counts
    CrossEntropyLoss().set_class_counts([1, 2])


def test_set_class_counts_errors_on_empty_class() -> None:
    with pytest.raises(ValueError, match=re.escape("classes [1] have none")):
        FocalLoss(alpha="inverse_frequency").set_class_counts([10, 0, 3])


# -- select_input -----------------------------------------------------------------------------------------


def test_select_input() -> None:
    x = torch.zeros(2, 3)
    assert select_input(x, "embeddings", "Loss") is x
    assert select_input({"logits": x, "embeddings": torch.ones(2)}, "logits", "Loss") is x
    with pytest.raises(
        ValueError, match=re.escape("ArcFaceLoss consumes 'embeddings', but the model output has keys ['logits']")
    ):
        select_input({"logits": x}, "embeddings", "ArcFaceLoss")
    with pytest.raises(TypeError, match=re.escape("a tensor or a mapping with 'logits' and/or 'embeddings'")):
        select_input([x], "logits", "Loss")  # type: ignore[arg-type]


def test_evaluate_output_missing_key_names_the_loss() -> None:
    with pytest.raises(
        ValueError, match=re.escape("FocalLoss consumes 'logits', but the model output has keys ['embeddings']")
    ):
        FocalLoss().evaluate_output({"embeddings": torch.zeros(2, 3)}, torch.tensor([0, 1]))


def test_weighted_sum_of_every_loss_kind_is_a_base_loss() -> None:
    assert isinstance(WeightedSum({"ce": CrossEntropyLoss()}), BaseLoss)
