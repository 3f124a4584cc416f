"""LossMixin: loss as a submodule, recording for observers, class counts, hyperparameters."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lossplug import LossMixin, LossOutput, build_loss, loss_config
from lossplug.losses import ArcFaceLoss, CenterLoss, CrossEntropyLoss, FocalLoss, WeightedSum


class TwoHeadModel(LossMixin, L.LightningModule):
    def __init__(self, loss: nn.Module, lr: float = 0.1) -> None:
        super().__init__(loss=loss)
        self.save_hyperparameters()
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 5)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        embeddings = self.encoder(features)
        return {"logits": self.head(embeddings), "embeddings": embeddings}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        return self.compute_loss(self(features), target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameter_groups(self.hparams.lr))


class CountingData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(20, 4, generator=generator)
        self.target = torch.tensor([0] * 10 + [1] * 5 + [2] * 3 + [3] + [4])
        self.class_counts = torch.bincount(self.target, minlength=5)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.features, self.target), batch_size=10)


class Recorder:
    def __init__(self, prediction_stages: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[LossOutput, str]] = []
        self.predictions: list[torch.Tensor | None] = []
        self.prediction_stages = prediction_stages

    def observe_loss(self, output: LossOutput, stage: str, predictions: torch.Tensor | None) -> None:
        self.calls.append((output, stage))
        self.predictions.append(predictions)


def _trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    options: dict[str, object] = {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
    }
    options.update(kwargs)
    return L.Trainer(**options)  # type: ignore[arg-type]


def test_compute_loss_equals_the_loss_and_routes_a_mapping() -> None:
    model = TwoHeadModel(FocalLoss(gamma=0.0))
    features, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    output = model(features)
    expected = F.cross_entropy(output["logits"], target)
    torch.testing.assert_close(model.compute_loss(output, target), expected)
    torch.testing.assert_close(model.compute_loss(output["logits"], target), expected)


def test_a_plain_torch_loss_works_on_logits() -> None:
    model = TwoHeadModel(nn.CrossEntropyLoss())
    output, target = model(torch.randn(6, 4)), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(model.compute_loss(output, target), F.cross_entropy(output["logits"], target))


def test_observers_get_detached_outputs_with_the_stage() -> None:
    model = TwoHeadModel(WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(5, 3)}, {"ce": 1.0, "center": 0.5}))
    recorder = Recorder()
    model.add_loss_observer(recorder)
    model.add_loss_observer(recorder)  # idempotent
    target = torch.tensor([0, 1, 2, 3])
    loss = model.compute_loss(model(torch.randn(4, 4)), target)
    assert len(recorder.calls) == 1
    output, stage = recorder.calls[0]
    assert stage == "train"
    assert loss.requires_grad
    assert not output.loss.requires_grad
    assert not output.per_sample.requires_grad
    assert not output.terms["center"].per_sample.requires_grad
    torch.testing.assert_close(output.loss, loss.detach())
    assert torch.equal(output.target, target)
    assert recorder.predictions == [None]  # nobody asked for them
    model.remove_loss_observer(recorder)
    model.compute_loss(model(torch.randn(4, 4)), target)
    assert len(recorder.calls) == 1


def test_observers_get_the_predictions_in_the_stages_they_ask_for() -> None:
    model = TwoHeadModel(CrossEntropyLoss())
    recorder = Recorder(prediction_stages=("train",))
    model.add_loss_observer(recorder)
    output = model(torch.randn(4, 4))
    model.compute_loss(output, torch.tensor([0, 1, 2, 3]))
    (predictions,) = recorder.predictions
    assert predictions is not None
    assert not predictions.requires_grad
    torch.testing.assert_close(predictions, output["logits"].detach())


def test_each_loss_s_parameters_get_a_group_with_its_own_learning_rate() -> None:
    loss = WeightedSum({"arcface": ArcFaceLoss(5, 3, lr=0.5), "center": CenterLoss(5, 3)})
    model = TwoHeadModel(loss, lr=0.1)
    parameter_ids = {id(p) for p in model.parameters()}
    assert id(loss.terms["arcface"].weight) in parameter_ids
    assert id(loss.terms["center"].centers) in parameter_ids
    assert "loss.terms.center.centers" in model.state_dict()
    own, arcface_group, center_group = model.parameter_groups(0.1, weight_decay=0.01)
    assert (own["lr"], own["weight_decay"]) == (0.1, 0.01)
    assert (arcface_group["lr"], arcface_group["weight_decay"]) == (0.5, 0.0)
    assert (center_group["lr"], center_group["weight_decay"]) == (0.1, 0.0)  # no lr of its own: the model's
    assert [id(p) for p in arcface_group["params"]] == [id(loss.terms["arcface"].weight)]
    assert [id(p) for p in center_group["params"]] == [id(loss.terms["center"].centers)]
    assert len(own["params"]) + 2 == len(list(model.parameters()))


def test_optimizer_trains_the_centers(tmp_path: Path) -> None:
    model = TwoHeadModel(WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(5, 3, lr=0.5)}))
    before = model.loss.terms["center"].centers.detach().clone()
    _trainer(tmp_path).fit(model, CountingData())
    assert not torch.equal(before, model.loss.terms["center"].centers.detach())


class PlainOptimizerModel(TwoHeadModel):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)  # ignores the loss's own lr


def test_a_loss_learning_rate_the_optimizer_ignores_is_an_error(tmp_path: Path) -> None:
    model = PlainOptimizerModel(WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(5, 3, lr=0.5)}))
    with pytest.raises(ValueError, match=r"CenterLoss\(lr=0.5\) with lr=0.5, but it uses lr=0.1: .*parameter_groups"):
        _trainer(tmp_path).fit(model, CountingData())


def test_alpha_strategy_is_resolved_from_the_data_module_and_checkpointed(tmp_path: Path) -> None:
    model = TwoHeadModel(FocalLoss(alpha="inverse_frequency"))
    trainer = _trainer(tmp_path)
    trainer.fit(model, CountingData())
    torch.testing.assert_close(model.loss.alpha, torch.tensor([0.1, 0.2, 1 / 3, 1.0, 1.0]))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = TwoHeadModel.load_from_checkpoint(path, weights_only=False)
    assert isinstance(restored.loss, FocalLoss)
    assert restored.loss.init_args == model.loss.init_args
    torch.testing.assert_close(restored.loss.alpha, model.loss.alpha)


def test_alpha_strategy_without_class_counts_names_the_fix() -> None:
    model = TwoHeadModel(FocalLoss(alpha="effective_number"))
    with pytest.raises(RuntimeError, match=r"no data module is attached.*class_counts"):
        model.compute_loss(model(torch.randn(2, 4)), torch.tensor([0, 1]))


def test_hyperparameters_store_the_loss_as_its_config_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = TwoHeadModel(FocalLoss(gamma=1.5, alpha=[0.1, 0.2, 0.3, 0.4, 0.5]))
    assert model.hparams["loss"] == {
        "class_path": "lossplug.losses.focal.FocalLoss",
        "init_args": {
            "gamma": 1.5,
            "alpha": [0.1, 0.2, 0.3, 0.4, 0.5],
            "beta": None,
            "ignore_index": -100,
            "reduction": "mean",
            "validate_args": True,
        },
    }


def test_loss_config_round_trips_through_build_loss() -> None:
    loss = WeightedSum({"ce": CrossEntropyLoss(label_smoothing=0.1), "center": CenterLoss(5, 3, update="moving_average")})
    rebuilt = build_loss(loss_config(loss))
    assert isinstance(rebuilt, WeightedSum)
    assert loss_config(rebuilt) == loss_config(loss)
    assert rebuilt.terms["center"].update == "moving_average"


def test_build_loss_resolves_short_names_and_rejects_bad_paths() -> None:
    assert isinstance(build_loss({"class_path": "FocalLoss"}), FocalLoss)
    with pytest.raises(ValueError, match="Expected `class_path` to name a loss module, but got 'Focal'"):
        build_loss({"class_path": "Focal"})
    with pytest.raises(ValueError, match="'class_path' and 'init_args'"):
        build_loss({"init_args": {}})


def test_missing_loss_names_the_fix() -> None:
    class NoLoss(LossMixin, L.LightningModule):
        pass

    with pytest.raises(RuntimeError, match=r"super\(\).__init__\(loss=loss\)"):
        NoLoss().compute_loss(torch.zeros(1, 2), torch.tensor([0]))


def test_loss_target_and_prediction_logits() -> None:
    from lossplug.losses import BinaryFocalLoss

    binary = TwoHeadModel(BinaryFocalLoss())
    one_hot = binary.loss_target(torch.tensor([0, 4]), 5)
    assert one_hot.dtype == torch.float32
    assert torch.equal(one_hot, torch.eye(5)[[0, 4]])
    index = TwoHeadModel(CrossEntropyLoss())
    assert torch.equal(index.loss_target(torch.tensor([0, 4]), 5), torch.tensor([0, 4]))

    arcface = ArcFaceLoss(5, 3, scale=10.0)
    model = TwoHeadModel(WeightedSum({"arcface": arcface, "center": CenterLoss(5, 3)}))
    output = model(torch.randn(4, 4))
    expected = F.normalize(output["embeddings"], dim=1) @ F.normalize(arcface.weight, dim=1).T * 10.0
    torch.testing.assert_close(model.prediction_logits(output), expected)
    assert torch.equal(index.prediction_logits(output), output["logits"])


def test_predictions_rank_by_the_scores_of_the_loss() -> None:
    from lossplug.losses import LDAMLoss

    model = TwoHeadModel(WeightedSum({"center": CenterLoss(5, 3), "ldam": LDAMLoss(scale=10.0, class_counts=[5, 4, 3, 2, 1])}))
    output = model(torch.randn(4, 4))
    # center loss has no class scores: the first term that has them, LDAM's scaled logits
    torch.testing.assert_close(model.prediction_logits(output), 10.0 * output["logits"])


def test_post_hoc_logit_adjustment_needs_the_class_counts() -> None:
    model = TwoHeadModel(CrossEntropyLoss())
    model.set_logit_adjustment(1.0)
    with pytest.raises(RuntimeError, match=r"Post-hoc logit adjustment divides by the training class counts, but no data"):
        model.prediction_logits(model(torch.randn(2, 4)))
    with pytest.raises(ValueError, match=r"Expected argument `tau` to be a finite number, but got inf"):
        model.set_logit_adjustment(float("inf"))
    model.set_logit_adjustment(None)
    output = model(torch.randn(2, 4))
    assert torch.equal(model.prediction_logits(output), output["logits"])


def test_a_plain_torch_loss_is_stored_as_config_and_rebuilt(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = TwoHeadModel(nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0]), label_smoothing=0.1))
    assert model.hparams["loss"]["class_path"] == "torch.nn.modules.loss.CrossEntropyLoss"
    trainer = _trainer(tmp_path)
    trainer.fit(model, CountingData())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    restored = TwoHeadModel.load_from_checkpoint(tmp_path / "plain.ckpt", weights_only=False)
    assert isinstance(restored.loss, nn.CrossEntropyLoss)
    assert restored.loss.label_smoothing == 0.1
    torch.testing.assert_close(restored.loss.weight, torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0]))
