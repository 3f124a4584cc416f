"""WeightedSum: the weighted sum of its terms, each fed what it consumes from the model output."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck

from lossplug.losses import (
    ArcFaceLoss,
    BalancedCrossEntropyLoss,
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    CenterLoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedSum,
)
from tests.helpers import (
    ErrorCases,
    assert_raises_message,
    make_class_indices,
    parametrize_error_cases,
    save_and_load,
)


def make_output(n: int = 6, c: int = 4, d: int = 3) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"logits": 2 * torch.randn(n, c, generator=generator), "embeddings": torch.randn(n, d, generator=generator)}


def ce_and_center() -> WeightedSum:
    torch.manual_seed(0)
    return WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(4, 3)}, {"ce": 1.0, "center": 0.01})


def test_loss_is_the_weighted_sum_of_the_terms() -> None:
    loss = ce_and_center()
    output, y = make_output(), make_class_indices(6, 4)
    out = loss.evaluate_output(output, y)
    ce = F.cross_entropy(output["logits"], y)
    center = 0.5 * (output["embeddings"] - loss.terms["center"].centers[y]).pow(2).sum(dim=1)
    torch.testing.assert_close(out.loss, ce + 0.01 * center.mean())
    per_sample_ce = F.cross_entropy(output["logits"], y, reduction="none")
    torch.testing.assert_close(out.per_sample, per_sample_ce + 0.01 * center)
    # terms hold each contribution, already weighted
    assert list(out.terms) == ["ce", "center"]
    torch.testing.assert_close(out.terms["ce"].loss, ce)
    torch.testing.assert_close(out.terms["center"].loss, 0.01 * center.mean())
    torch.testing.assert_close(out.terms["center"].per_sample, 0.01 * center)
    torch.testing.assert_close(out.terms["ce"].loss + out.terms["center"].loss, out.loss)
    # p_t, target, task come from the term with class probabilities
    assert out.p_t is not None
    torch.testing.assert_close(out.p_t, (-per_sample_ce).exp())
    assert out.task == "multiclass"
    assert out.num_classes == 4
    torch.testing.assert_close(loss(output, y), out.loss)  # type: ignore[arg-type]


def test_p_t_comes_from_the_first_term_with_probabilities() -> None:
    torch.manual_seed(0)
    loss = WeightedSum({"center": CenterLoss(4, 3), "focal": FocalLoss(gamma=2.0)}, {"center": 0.5, "focal": 2.0})
    output, y = make_output(), make_class_indices(6, 4)
    out = loss.evaluate_output(output, y)
    expected_p_t = output["logits"].softmax(dim=1)[torch.arange(6), y]
    torch.testing.assert_close(out.p_t, expected_p_t)
    torch.testing.assert_close(
        out.loss, 0.5 * loss.terms["center"](output["embeddings"], y) + 2.0 * FocalLoss()(output["logits"], y)
    )


def test_default_weights_are_one() -> None:
    loss = WeightedSum({"ce": CrossEntropyLoss(), "focal": FocalLoss(gamma=1.0)})
    output, y = make_output(), make_class_indices(6, 4)
    expected = F.cross_entropy(output["logits"], y) + FocalLoss(gamma=1.0)(output["logits"], y)
    # every term consumes logits, so a plain tensor is accepted
    torch.testing.assert_close(loss(output["logits"], y), expected)
    torch.testing.assert_close(loss.evaluate_output(output, y).loss, expected)


def test_arcface_plus_center_routes_embeddings_and_trains_both_parameters() -> None:
    torch.manual_seed(0)
    loss = WeightedSum(
        {"arcface": ArcFaceLoss(4, 3, scale=8.0), "center": CenterLoss(4, 3)}, {"arcface": 1.0, "center": 0.1}
    )
    output, y = make_output(), make_class_indices(6, 4)
    embeddings = output["embeddings"].requires_grad_()
    value = loss.evaluate_output({"embeddings": embeddings}, y).loss
    expected = loss.terms["arcface"](embeddings, y) + 0.1 * loss.terms["center"](embeddings, y)
    torch.testing.assert_close(value, expected)
    value.backward()
    names = {name for name, _ in loss.named_parameters()}
    assert names == {"terms.arcface.weight", "terms.center.centers"}
    for _, parameter in loss.named_parameters():
        assert parameter.grad is not None
        assert bool(parameter.grad.abs().sum() > 0)


def test_valid_is_where_every_term_counts() -> None:
    loss = WeightedSum(
        {"ce": CrossEntropyLoss(ignore_index=-1), "center": CenterLoss(4, 3)}, {"ce": 1.0, "center": 0.0}
    )
    output = make_output()
    y = make_class_indices(6, 4)
    y[2] = -1
    # the center loss cannot gather class -1: the ignored sample is an error for it, not silently dropped
    with pytest.raises(ValueError, match="but got -1"):
        loss.evaluate_output(output, y)
    focal_sum = WeightedSum({"ce": CrossEntropyLoss(ignore_index=-1), "focal": FocalLoss(ignore_index=-1)})
    out = focal_sum.evaluate_output(output, y)
    expected_valid = torch.ones(6, dtype=torch.bool)
    expected_valid[2] = False
    torch.testing.assert_close(out.valid, expected_valid)
    assert float(out.per_sample[2]) == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_term_reductions_are_kept(reduction: str) -> None:
    loss = WeightedSum(
        {"ce": CrossEntropyLoss(reduction=reduction), "focal": FocalLoss(reduction=reduction)},  # type: ignore[arg-type]
        {"ce": 0.5, "focal": 3.0},
    )
    x, y = make_output()["logits"], make_class_indices(6, 4)
    expected = 0.5 * F.cross_entropy(x, y, reduction=reduction) + 3.0 * FocalLoss(reduction=reduction)(x, y)  # type: ignore[arg-type]
    torch.testing.assert_close(loss(x, y), expected)


def test_gradcheck_through_the_sum() -> None:
    torch.manual_seed(0)
    loss = WeightedSum(
        {"ce": CrossEntropyLoss(label_smoothing=0.1), "center": CenterLoss(4, 3)}, {"ce": 1.0, "center": 0.3}
    ).double()
    output = {name: tensor.double().requires_grad_() for name, tensor in make_output(n=4).items()}
    y = make_class_indices(4, 4)

    def fn(logits: Tensor, embeddings: Tensor) -> Tensor:
        return loss.evaluate_output({"logits": logits, "embeddings": embeddings}, y).loss

    assert gradcheck(fn, (output["logits"], output["embeddings"]))


def test_set_class_counts_reaches_every_term() -> None:
    loss = WeightedSum(
        {"focal": FocalLoss(alpha="inverse_frequency"), "balanced": BalancedCrossEntropyLoss(alpha="effective_number")}
    )
    assert loss.needs_class_counts
    with pytest.raises(RuntimeError, match=re.escape("set_class_counts")):
        loss(make_output()["logits"], make_class_indices(6, 4))
    loss.set_class_counts([10, 20, 30, 40])
    assert not loss.needs_class_counts
    assert loss(make_output()["logits"], make_class_indices(6, 4)).isfinite()


def test_state_dict_carries_every_term() -> None:
    loss = ce_and_center()
    loss.terms["ce"] = CrossEntropyLoss(weight=[1.0, 2.0, 3.0, 4.0])
    state = save_and_load(loss.state_dict())
    assert set(state) == {"terms.ce.weight", "terms.center.centers"}
    torch.manual_seed(99)
    fresh = WeightedSum(
        {"ce": CrossEntropyLoss(weight=[0.0, 0.0, 0.0, 0.0]), "center": CenterLoss(4, 3)}, {"ce": 1.0, "center": 0.01}
    )
    fresh.load_state_dict(state)
    output, y = make_output(), make_class_indices(6, 4)
    torch.testing.assert_close(fresh.evaluate_output(output, y).loss, loss.evaluate_output(output, y).loss)


def test_init_args_and_repr() -> None:
    loss = ce_and_center()
    assert loss.init_args["weights"] == {"ce": 1.0, "center": 0.01}
    assert set(loss.init_args["terms"]) == {"ce", "center"}
    assert "weights={'ce': 1.0, 'center': 0.01}" in repr(loss)
    assert loss.input_kind == "mixed"


# -- bad input ------------------------------------------------------------------------------------------

ERRORS: ErrorCases = {
    "weight_names_mismatch": (
        lambda: WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(4, 3)}, {"ce": 1.0, "centre": 0.1}),
        ValueError,
        "`weights` to name the same terms as `terms` ['ce', 'center'], but got ['ce', 'centre']",
    ),
    "weight_missing": (
        lambda: WeightedSum({"ce": CrossEntropyLoss(), "focal": FocalLoss()}, {"ce": 1.0}),
        ValueError,
        "`weights` to name the same terms as `terms` ['ce', 'focal'], but got ['ce']",
    ),
    "index_and_probability_targets_bce": (
        lambda: WeightedSum({"ce": CrossEntropyLoss(), "bce": BinaryCrossEntropyLoss()}),
        ValueError,
        "same kind of target",
    ),
    "not_a_lossplug_term": (
        lambda: WeightedSum({"ce": nn.CrossEntropyLoss()}),  # type: ignore[dict-item]
        TypeError,
        "every term to be a lossplug loss (they give per-sample losses), but term 'ce' is CrossEntropyLoss",
    ),
    "negative_weight": (
        lambda: WeightedSum({"ce": CrossEntropyLoss()}, {"ce": -1.0}),
        ValueError,
        "weight of term 'ce' to be a finite number >= 0, but got -1.0",
    ),
    "nan_weight": (
        lambda: WeightedSum({"ce": CrossEntropyLoss()}, {"ce": float("nan")}),
        ValueError,
        "weight of term 'ce' to be a finite number >= 0",
    ),
    "no_terms": (lambda: WeightedSum({}), ValueError, "`terms` to be a non-empty mapping of name to loss"),
    "missing_embeddings": (
        lambda: ce_and_center().evaluate_output({"logits": make_output()["logits"]}, make_class_indices(6, 4)),
        ValueError,
        "WeightedSum term 'center' (CenterLoss) consumes 'embeddings', but the model output has keys ['logits']",
    ),
    "missing_logits": (
        lambda: ce_and_center().evaluate_output({"embeddings": make_output()["embeddings"]}, make_class_indices(6, 4)),
        ValueError,
        "WeightedSum term 'ce' (CrossEntropyLoss) consumes 'logits', but the model output has keys ['embeddings']",
    ),
    "tensor_for_mixed_terms": (
        lambda: ce_and_center()(make_output()["logits"], make_class_indices(6, 4)),
        ValueError,
        "WeightedSum terms consume ['embeddings', 'logits'] (a tensor is one of them)",
    ),
    "index_and_probability_targets": (
        lambda: WeightedSum({"focal": FocalLoss(), "binary": BinaryFocalLoss()}),
        ValueError,
        "Expected every WeightedSum term to take the same kind of target (they share it), but got "
        "{'focal': 'index', 'binary': 'probability'}",
    ),
}


@parametrize_error_cases(ERRORS)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    assert_raises_message(call, error, message)


def test_target_kind_is_that_of_its_terms() -> None:
    assert WeightedSum({"binary": BinaryFocalLoss(), "bce": BinaryCrossEntropyLoss()}).target_kind == "probability"
    assert ce_and_center().target_kind == "index"
