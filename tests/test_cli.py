"""The `lossplug` command: your model and data, the demo by default, shipped configs, mistakes before training."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from lossplug.cli import available_losses, build_cli, shipped_configs
from lossplug.losses import ArcFaceLoss, CenterLoss, FocalLoss, WeightedSum
from lossplug.models import DemoClassifier
from tests.user_project import ANIMALS, ZooData, ZooNet

CONFIG_DIR = Path(__file__).parents[1] / "lossplug" / "configs"
QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--trainer.logger=false"]
ZOO = ["--model", "tests.user_project.ZooNet", "--data", "tests.user_project.ZooData"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default config logs under ./lightning_logs


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """The one-line error of a command that must fail before training."""
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err  # the error, and where to look for the options
    assert lines[1].startswith("Run with --help")
    assert not list(Path().glob("lightning_logs/version_*/*")), "training must not have started"
    return lines[0]


# -- your model, your data ---------------------------------------------------------------------------------------
def test_your_model_and_data_by_class_path_with_arcface_and_center_loss() -> None:
    cli = build_cli(["fit", *ZOO, "--config", "arcface_center", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"])
    model = cli.model
    assert isinstance(model, ZooNet)
    assert isinstance(cli.datamodule, ZooData)
    assert model.num_classes == 6  # filled from ZooData.num_classes
    loss = model.loss
    assert isinstance(loss, WeightedSum)
    assert loss.terms["arcface"].weight.shape == (6, 12)  # ZooData's classes, ZooNet's embedding_dim
    assert loss.terms["center"].centers.shape == (6, 12)
    for callback in cli.trainer.callbacks:
        getattr(callback, "wait_for_plot", lambda: None)()
    run = Path(cli.trainer.log_dir)
    rows = _rows(run / "per_class_loss.csv")
    assert {row["term"] for row in rows} == {"total", "arcface", "center"}
    assert [row["class"] for row in rows if row["epoch"] == "0" and row["stage"] == "train" and row["term"] == "total"] == ANIMALS
    assert {row["epoch"] for row in rows} == {"0", "1"}
    assert (run / "hardness_histogram.png").exists()


def test_your_model_and_data_in_yaml(tmp_path: Path) -> None:
    config = {
        "model": {
            "class_path": "tests.user_project.ZooNet",
            "init_args": {"width": 8, "loss": {"class_path": "ArcFaceLoss", "init_args": {"scale": 8.0}}},
        },
        "data": {"class_path": "tests.user_project.ZooData", "init_args": {"batch": 8}},
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = build_cli(["--config", str(path)], run=False)
    assert isinstance(cli.model, ZooNet)
    assert cli.model.hparams.width == 8
    assert isinstance(cli.model.loss, ArcFaceLoss)
    assert (cli.model.loss.num_classes, cli.model.loss.embedding_dim, cli.model.loss.scale) == (6, 12, 8.0)
    assert cli.datamodule.batch == 8


def test_a_config_given_before_your_model_applies_to_it() -> None:
    cli = build_cli(["--config", "arcface", "--model", "tests.user_project.ZooNet", "--data", "tests.user_project.ZooData"], run=False)
    assert isinstance(cli.model, ZooNet)
    assert isinstance(cli.model.loss, ArcFaceLoss)
    assert (cli.model.loss.num_classes, cli.model.loss.embedding_dim, cli.model.loss.lr) == (6, 12, 0.01)


def test_a_class_named_after_a_config_that_names_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "lossplug.models.DemoClassifier"}}))
    cli = build_cli(["--config", str(path), "--model", "tests.user_project.ZooNet", "--data", "tests.user_project.ZooData"], run=False)
    assert isinstance(cli.model, ZooNet)


def test_a_torch_loss_trains_with_the_default_config_and_one_line_on_the_diagnostics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli = build_cli(["fit", "--model.loss=torch.nn.CrossEntropyLoss", *QUICK, "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "off for this run" in line]
    assert len(notes) == 1, err
    assert notes[0].startswith("PerClassLossMonitor, HardnessHistogram, LongTailReport: off for this run.")
    assert "lossplug.losses.CrossEntropyLoss gives torch's values" in notes[0]
    assert not [callback for callback in cli.trainer.callbacks if "Hardness" in type(callback).__name__]


def test_torch_s_binary_loss_gets_one_hot_targets() -> None:
    cli = build_cli(["fit", "--model.loss=torch.nn.BCEWithLogitsLoss", *QUICK, *QUIET])
    assert cli.trainer.state.finished


def test_checkpointing_off_leaves_the_default_checkpoint_callback_out() -> None:
    cli = build_cli(["fit", "--trainer.enable_checkpointing=false", *QUICK, "--trainer.enable_progress_bar=false"])
    assert cli.trainer.checkpoint_callback is None
    assert not (Path(cli.trainer.log_dir) / "checkpoints").exists()


def test_fast_dev_run_leaves_no_empty_run_folder(tmp_path: Path) -> None:
    build_cli(["fit", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])
    assert not list(tmp_path.glob("lightning_logs/version_*"))  # Lightning's loggers write nothing in it


def test_the_demo_fills_only_what_you_do_not_name() -> None:
    # the demo model's defaults (lr 3e-3, embedding_dim 32) must not reach ZooNet's arguments of the same names
    cli = build_cli(["--model", "tests.user_project.ZooNet", "--model.loss=ArcFaceLoss"], run=False)
    assert cli.model.hparams.learning_rate == 0.02
    assert cli.model.hparams.embedding_dim == 12
    assert cli.model.loss.embedding_dim == 12
    assert cli.model.loss.num_classes == 10  # the demo's digits
    # the demo model on your data: your classes and their names
    cli = build_cli(["--data", "tests.user_project.ZooData"], run=False)
    assert isinstance(cli.model, DemoClassifier)
    assert cli.model.num_classes == 6
    assert cli.model.class_names == ANIMALS
    assert isinstance(cli.model.loss, FocalLoss)  # the demo's loss comes with the demo's model


@pytest.mark.parametrize("config", shipped_configs())
def test_every_shipped_config_trains_your_model(config: str) -> None:
    cli = build_cli(["fit", *ZOO, "--config", config, *QUICK, *QUIET])
    configured = yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())["model"]["loss"]["class_path"]
    assert type(cli.model.loss).__name__ == configured.rsplit(".", 1)[-1]
    assert cli.trainer.state.finished


def test_shipped_configs_set_only_the_loss() -> None:
    for name in shipped_configs():
        content = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        assert list(content) == ["model"], name
        assert list(content["model"]) == ["loss"], name


def test_a_config_by_path_still_works(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((CONFIG_DIR / "arcface.yaml").read_text())
    cli = build_cli(["--config", str(path)], run=False)
    assert isinstance(cli.model.loss, ArcFaceLoss)


# -- the demo, overrides, the saved config -------------------------------------------------------------------
@pytest.mark.parametrize("config", shipped_configs())
def test_config_trains_the_demo_and_its_checkpoint_rebuilds_the_same_loss(config: str, tmp_path: Path) -> None:
    cli = build_cli(["fit", "--config", config, *QUICK, *QUIET])
    model = cli.model
    path = tmp_path / "round_trip.ckpt"
    cli.trainer.save_checkpoint(path)
    restored = DemoClassifier.load_from_checkpoint(path, weights_only=False)
    assert type(restored.loss) is type(model.loss)
    assert str(restored.loss) == str(model.loss)
    for (name, expected), (restored_name, value) in zip(
        model.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        assert name == restored_name
        torch.testing.assert_close(value, expected)
    features = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    target = torch.arange(8) % 10
    model.eval()
    restored.eval()
    with torch.no_grad():
        expected_loss = model.compute_loss(model(features), model.loss_target(target, 10))
        restored_loss = restored.compute_loss(restored(features), restored.loss_target(target, 10))
    torch.testing.assert_close(restored_loss, expected_loss)


def test_num_classes_and_embedding_size_reach_weighted_sum_terms() -> None:
    cli = build_cli(["--config", "arcface_center", "--model.embedding_dim=16"], run=False)
    loss = cli.model.loss
    assert isinstance(loss, WeightedSum)
    arcface, center = loss.terms["arcface"], loss.terms["center"]
    assert isinstance(arcface, ArcFaceLoss)
    assert isinstance(center, CenterLoss)
    assert arcface.weight.shape == (10, 16)
    assert center.centers.shape == (10, 16)


def test_command_line_overrides_and_short_class_names() -> None:
    cli = build_cli(["--config", "focal", "--model.loss.gamma=1"], run=False)
    assert isinstance(cli.model.loss, FocalLoss)
    assert cli.model.loss.gamma == 1.0
    cli = build_cli(["--model.loss=ArcFaceLoss", "--model.loss.margin=0.2"], run=False)
    assert isinstance(cli.model.loss, ArcFaceLoss)
    assert (cli.model.loss.num_classes, cli.model.loss.embedding_dim, cli.model.loss.margin) == (10, 32, 0.2)


def test_default_is_the_demo_with_focal_loss_and_class_balanced_alpha() -> None:
    cli = build_cli([], run=False)
    assert isinstance(cli.model, DemoClassifier)
    assert isinstance(cli.model.loss, FocalLoss)
    assert cli.model.loss.alpha_strategy == "effective_number"


@pytest.mark.parametrize("config", [None, "arcface"])
def test_print_config_round_trips(config: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *(["--config", config] if config else []), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lossplug.models.DemoClassifier" in printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed


def test_saved_config_is_what_a_checked_save_writes(tmp_path: Path) -> None:
    # the run's config.yaml is saved unchecked (it was checked when parsed): the same text as checked
    from jsonargparse import ArgumentParser

    cli = build_cli([*QUICK, "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = Path(cli.trainer.log_dir) / "config.yaml"
    checked = tmp_path / "checked.yaml"
    ArgumentParser.save(cli.parser, cli.config, str(checked), skip_none=False, skip_validation=False)
    assert saved.read_text() == checked.read_text()
    assert "class_path: lossplug.losses." in saved.read_text()


def test_fit_ends_with_a_test_summary_and_writes_the_diagnostics(capsys: pytest.CaptureFixture[str]) -> None:
    cli = build_cli(["fit", *QUICK, "--trainer.enable_progress_bar=false"])
    for callback in cli.trainer.callbacks:
        getattr(callback, "wait_for_plot", lambda: None)()
    out = " ".join(capsys.readouterr().out.split())
    assert "Test split (last weights)" in out
    for shown in ("accuracy", "macro-F1", "recall many / medium / few", "ECE"):
        assert shown in out, shown
    assert "logs: lightning_logs/version_0" in out
    run = Path("lightning_logs") / "version_0"
    for name in ("metrics.csv", "per_class_loss.csv", "hardness_histogram.csv", "hardness_histogram.png"):
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["class_names"] == [str(digit) for digit in range(10)]
    assert metrics["class_counts"] == [118, 87, 60, 45, 32, 23, 16, 12, 8, 6]
    assert {"test/acc", "test/macro_f1", "test/recall_few", "test/ece", "test/recall/9"} <= metrics["metrics"].keys()


def test_post_hoc_logit_adjustment_is_an_option_of_the_test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    cli = build_cli(["fit", *QUICK, "--trainer.enable_progress_bar=false", "--config", "ce", "--logit_adjustment=1.0"])
    assert "post-hoc logit adjustment tau=1" in " ".join(capsys.readouterr().out.split())
    features = torch.randn(4, 64)
    output = cli.model(features)
    log_prior = torch.log(torch.tensor([118, 87, 60, 45, 32, 23, 16, 12, 8, 6]) / 407.0)
    torch.testing.assert_close(cli.model.prediction_logits(output), output["logits"] - log_prior)


# -- help ----------------------------------------------------------------------------------------------------------
def test_help_says_what_the_command_does_and_lists_losses_and_configs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_cli(["--help"])
    out = capsys.readouterr().out
    assert "LossMixin" in out
    assert "Lightning Trainer command line tool" not in out
    for name in [*available_losses(), *shipped_configs()]:
        assert name in out, name


def test_loss_help_lists_losses_not_every_module(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_cli(["fit", "--model.help", "DemoClassifier"])
    out = " ".join(capsys.readouterr().out.split())
    assert "lossplug.losses.FocalLoss" in out
    assert "torch.nn.CrossEntropyLoss" in out
    assert "torch.nn.ReLU" not in out
    loss_help = out[out.index("--model.loss LOSS") :]
    assert "required" not in loss_help[: loss_help.index("known subclasses")]


def test_available_losses_are_the_public_losses() -> None:
    assert available_losses() == [
        "ArcFaceLoss",
        "BalancedCrossEntropyLoss",
        "BalancedSoftmaxLoss",
        "BinaryCrossEntropyLoss",
        "BinaryFocalLoss",
        "CenterLoss",
        "CrossEntropyLoss",
        "FocalLoss",
        "LDAMLoss",
        "LogitAdjustedLoss",
        "PolyLoss",
        "WeightedSum",
    ]


# -- mistakes, before training, in one line -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.loss=FocalLoss", "--model.loss.gama=1"], r"unknown option `gama` \(did you mean `gamma`\?\)"),
        (["--model.loss=FocalLos"], r"unknown loss 'FocalLos' \(did you mean `FocalLoss`\?\)\. Available losses: ArcFaceLoss"),
        (["--model", "tests.user_project.Nope"], r"`model`: cannot import 'tests.user_project.Nope' \(module 'tests.user_project' has no attribute 'Nope'\)"),
        (["--model.loss.gamma=-1"], r"Expected argument `gamma` to be a number >= 0, but got -1\.0"),
        (["--model.loss.gamma=nan"], r"Expected argument `gamma` to be a finite number, but got nan\."),
        (["--trainer.max_epoch=3"], r"unrecognized arguments: --trainer\.max_epoch=3"),
        (["--model.loss=ArcFaceLoss", "--model.loss.margin=2"], r"`margin` to be a number in \[0, pi/2\), but got 2\.0"),
        (["--config", "arcfce"], r"--config 'arcfce' is neither a file nor a shipped config \(did you mean `arcface`\?\)"),
        (["--config", "nowhere/mine.yaml"], r"--config 'nowhere/mine.yaml' is neither a file nor a shipped config"),
        (
            ["--model.loss=FocalLoss", "--model.loss.alpha=[0.5,0.5,0.5]"],
            r"Expected `alpha` of FocalLoss to have one entry per class \(10 classes in DigitsDataModule\), but got 3",
        ),
        (
            [*ZOO, "--model.loss=ArcFaceLoss", "--model.loss.embedding_dim=7"],
            r"Expected `embedding_dim` of ArcFaceLoss to be the model's embedding size \(ZooNet.embedding_dim=12\), but got 7",
        ),
        (
            [*ZOO, "--config", "{model: {loss: {class_path: WeightedSum, init_args: {terms: {ce: {class_path: CrossEntropyLoss}, center: {class_path: CenterLoss, init_args: {feature_dim: 5}}}}}}}"],
            r"Expected `feature_dim` of CenterLoss to be the model's embedding size \(ZooNet.embedding_dim=12\), but got 5",
        ),
        (["--model.loss=CrossEntropyLoss", "--model.loss.reduction=none"], r"reduction='none'.*Use reduction='mean' or 'sum'"),
        (
            ["--model", "tests.user_project.ZooNet", "--data", "tests.user_project.UncountedZooData", "--config", "focal"],
            r"FocalLoss needs the training class counts, but UncountedZooData has no `class_counts`",
        ),
        (
            ["--model", "tests.user_project.ZooNet", "--data", "tests.user_project.UnnumberedZooData"],
            r"ZooNet needs `num_classes`, and UnnumberedZooData has no `num_classes` attribute",
        ),
        (
            ["--model", "tests.user_project.LogitsOnly", "--data", "tests.user_project.ZooData", "--model.loss=ArcFaceLoss"],
            r"ArcFaceLoss needs `embedding_dim`, and LogitsOnly has no `embedding_dim` argument",
        ),
        (
            ["--model", "tests.user_project.Unrelated", "--data", "tests.user_project.ZooData"],
            r"Expected the model to use lossplug.LossMixin, but Unrelated does not",
        ),
        (["--model.num_classes=7"], r"Expected `model.num_classes` to be the data module's 10 classes"),
        (
            ["--model", "tests.user_project.NoLossByDefault", "--data", "tests.user_project.ZooData"],
            r"Expected NoLossByDefault to have a loss, but it has none: give one \(`--model.loss=FocalLoss`",
        ),
    ],
    ids=[
        "misspelled-option",
        "unknown-loss",
        "unknown-model",
        "negative-gamma",
        "nan-gamma",
        "abbreviated-option",
        "arcface-margin",
        "unknown-config-name",
        "missing-config-file",
        "alpha-length",
        "arcface-embedding",
        "center-features",
        "reduction-none",
        "alpha-without-counts",
        "no-num-classes",
        "no-embedding-dim",
        "model-without-mixin",
        "model-classes-differ",
        "model-without-loss",
    ],
)
def test_config_mistakes_fail_before_training_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _error(capsys, args)
    assert re.search(message, error), error


def test_an_unwritable_log_folder_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(blocker / "logs")}}
    error = _error(capsys, ["--config", yaml.safe_dump({"trainer": {"logger": [logger]}})])
    assert f"Cannot create the run's log folder under {blocker / 'logs' / 'lightning_logs'}" in error
