"""The `lossplug` command: every config trains, config mistakes read well, checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lossplug.cli import available_losses, build_cli
from lossplug.losses import ArcFaceLoss, CenterLoss, FocalLoss, WeightedSum
from lossplug.models import DemoClassifier

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default config logs under ./lightning_logs


def test_every_loss_of_the_readme_has_a_config() -> None:
    names = {path.stem for path in CONFIGS}
    assert names == {"ce", "balanced_ce", "focal", "binary_focal", "arcface", "center", "arcface_center"}


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_trains_and_its_checkpoint_rebuilds_the_same_loss(config: Path, tmp_path: Path) -> None:
    cli = build_cli(["fit", "--config", str(config), *QUICK, *QUIET])
    model = cli.model
    path = tmp_path / "round_trip.ckpt"
    cli.trainer.save_checkpoint(path)
    restored = DemoClassifier.load_from_checkpoint(path, weights_only=False)
    assert type(restored.loss) is type(model.loss)
    assert restored.loss.init_args.keys() == model.loss.init_args.keys()
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
    config = Path(__file__).parents[1] / "configs" / "arcface_center.yaml"
    cli = build_cli(["--config", str(config), "--model.embedding_dim=16"], run=False)
    loss = cli.model.loss
    assert isinstance(loss, WeightedSum)
    arcface, center = loss.terms["arcface"], loss.terms["center"]
    assert isinstance(arcface, ArcFaceLoss)
    assert isinstance(center, CenterLoss)
    assert arcface.weight.shape == (10, 16)
    assert center.centers.shape == (10, 16)


def test_command_line_overrides_and_short_class_names() -> None:
    config = Path(__file__).parents[1] / "configs" / "focal.yaml"
    cli = build_cli(["--config", str(config), "--model.loss.gamma=1"], run=False)
    assert isinstance(cli.model.loss, FocalLoss)
    assert cli.model.loss.gamma == 1.0
    cli = build_cli(["--model.loss=ArcFaceLoss", "--model.loss.margin=0.2"], run=False)
    assert isinstance(cli.model.loss, ArcFaceLoss)
    assert (cli.model.loss.num_classes, cli.model.loss.embedding_dim, cli.model.loss.margin) == (10, 32, 0.2)


def test_default_is_focal_loss_with_class_balanced_alpha() -> None:
    cli = build_cli([], run=False)
    assert isinstance(cli.model.loss, FocalLoss)
    assert cli.model.loss.alpha_strategy == "effective_number"


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_print_config_round_trips(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("config", [None, CONFIGS[0]], ids=["default", CONFIGS[0].stem])
def test_saved_config_is_what_a_checked_save_writes(config: Path | None, tmp_path: Path) -> None:
    # the run's config.yaml is saved unchecked (it was checked when parsed): the same text as checked
    from jsonargparse import ArgumentParser

    cli = build_cli([*(["--config", str(config)] if config else []), *QUICK, *QUIET], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = Path(cli.trainer.log_dir) / "config.yaml"
    checked = tmp_path / "checked.yaml"
    ArgumentParser.save(cli.parser, cli.config, str(checked), skip_none=False, skip_validation=False)
    assert saved.read_text() == checked.read_text()
    assert "class_path: lossplug.losses." in saved.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.loss=FocalLoss", "--model.loss.gama=1"], r"unknown option `gama` \(did you mean `gamma`\?\)"),
        (["--model.loss=FocalLos"], r"unknown loss 'FocalLos' \(did you mean `FocalLoss`\?\)\. Available losses: ArcFaceLoss"),
        (["--model.loss.gamma=-1"], r"Expected argument `gamma` to be a number >= 0, but got -1\.0"),
        (["--trainer.max_epoch=3"], r"unrecognized arguments: --trainer\.max_epoch=3"),
        (["--model.loss=ArcFaceLoss", "--model.loss.margin=2"], r"`margin` to be a number in \[0, pi/2\), but got 2\.0"),
    ],
    ids=["misspelled-option", "unknown-loss", "negative-gamma", "abbreviated-option", "arcface-margin"],
)
def test_config_mistakes_give_one_short_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args])
    assert exit_info.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in error
    assert len(error) < 600
    import re

    assert re.search(message, error), error


def test_available_losses_are_the_public_losses() -> None:
    assert available_losses() == [
        "ArcFaceLoss",
        "BalancedCrossEntropyLoss",
        "BinaryCrossEntropyLoss",
        "BinaryFocalLoss",
        "CenterLoss",
        "CrossEntropyLoss",
        "FocalLoss",
        "WeightedSum",
    ]


def test_fit_ends_with_a_test_summary_and_writes_the_diagnostics(capsys: pytest.CaptureFixture[str]) -> None:
    # the default callbacks stay on; disabling the progress bar drops the default's RichProgressBar
    cli = build_cli(["fit", *QUICK, "--trainer.enable_progress_bar=false"])
    for callback in cli.trainer.callbacks:
        getattr(callback, "wait_for_plot", lambda: None)()
    out = " ".join(capsys.readouterr().out.split())
    assert "Test split, balanced" in out
    assert "accuracy" in out
    assert "macro-F1" in out
    assert "recall" in out
    assert "logs: lightning_logs/version_0" in out or "logs: ./lightning_logs/version_0" in out
    run = Path("lightning_logs") / "version_0"
    for name in ("metrics.csv", "per_class_loss.csv", "hardness_histogram.csv", "hardness_histogram.png"):
        assert (run / name).exists(), name
    assert "Hardness · epoch 0" in out
