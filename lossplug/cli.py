"""The ``lossplug`` command: LightningCLI over the demo model and digits, with an embedded default.

``lossplug fit`` with no arguments trains focal loss on long-tailed digits and ends with a summary
on the balanced test split; ``lossplug fit --config configs/arcface.yaml`` picks another loss.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import warnings
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from rich.console import Console
from rich.table import Table

from lossplug import losses
from lossplug.data import DigitsDataModule
from lossplug.models import DemoClassifier

DEFAULT_CONFIG = str(files("lossplug") / "configs" / "default.yaml")
SUBCOMMANDS = ("fit", "validate", "test", "predict")

def available_losses() -> list[str]:
    """Names of the lossplug losses a config can pick by short name."""
    return sorted(name for name in losses.__all__ if name not in ("BaseLoss", "ClassWeightedLoss", "select_input"))


class LossplugArgumentParser(LightningArgumentParser):
    """A parser whose errors are one short paragraph instead of jsonargparse's nested report."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        Console(stderr=True).print(f"[bold red]error:[/] {summarize_config_error(message)}", highlight=False)
        Console(stderr=True).print("Run with --help for the options, --print_config for the full configuration.")
        raise SystemExit(2)

    def save(self, cfg: Any, path: Any, *args: Any, skip_validation: bool = True, **kwargs: Any) -> None:
        """jsonargparse's ``save``, without checking ``cfg`` again by default.

        LightningCLI saves the config it parsed and checked: checking it a second time, type by type,
        took half of the saving (about 10 of 20 ms per run here) and found nothing new.
        """
        super().save(cfg, path, *args, skip_validation=skip_validation, **kwargs)


def summarize_config_error(message: str) -> str:
    """Turn jsonargparse's nested error report into the line a user needs.

    Example:
        >>> summarize_config_error("Option 'gama' is not accepted")
        'unknown option `gama` (did you mean `gamma`?).'
    """
    key = re.search(r'Parser key "([^"]+)"', message)
    where = f"`{key.group(1)}`: " if key else ""
    unknown_class = re.search(r"Expected a path but (\S+) either not accessible or invalid", message) or re.search(
        r"Import path (\S+) does not correspond", message
    )
    if unknown_class is not None:
        name = unknown_class.group(1).strip("'\"")
        return (
            f"{where}unknown loss {name!r}{_suggestion(name, available_losses())}. Available losses: "
            f"{', '.join(available_losses())}; a torch loss can be given by import path (torch.nn.CrossEntropyLoss)."
        )
    unknown_option = re.search(r"Option '([^']+)' is not accepted", message)
    if unknown_option is not None:
        option = unknown_option.group(1)
        owner = re.search(r"Problem with given class_path '([\w.]+)'", message)
        owner_text = f" of {owner.group(1).rsplit('.', 1)[-1]}" if owner else ""
        return f"{where}unknown option `{option}`{owner_text}{_suggestion(option, _loss_options())}."
    leaves: list[str] = []
    for line in message.splitlines():
        text = line.strip().removeprefix("- ").strip()
        if text and not text.endswith(":") and not text.startswith(_WRAPPERS) and text not in leaves:
            leaves.append(text)
    return where + (" ".join(leaves[:2]) if leaves else message.strip())


_WRAPPERS = ("Given value", "Subtypes:", "Does not validate", "Errors:", "Expected a dot import path")


def _loss_options() -> list[str]:
    names = {
        name
        for loss_name in available_losses()
        for name in inspect.signature(getattr(losses, loss_name)).parameters
        if name != "self"
    }
    return sorted(names)


def _suggestion(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


class LossplugCLI(LightningCLI):
    """LightningCLI with data-to-model links, short config errors and an end-of-fit summary."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_dim", "model.input_dim", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _fill_loss_dimensions(config)
        _share_logger_version(config)
        _honour_disabled_progress_bar(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as error:
            # constructors validate their arguments: a bad value in the config is a user error, not a crash
            self.parser.error(str(error))

    def after_fit(self) -> None:
        if self.trainer.interrupted or (not self.trainer.is_global_zero and self.trainer.world_size > 1):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and getattr(checkpoint, "best_model_path", None) else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        if self.trainer.is_global_zero and results:
            print_summary(results[0], self.model.class_names, self.trainer.log_dir, ckpt_path)


def _fill_loss_dimensions(config: Namespace) -> None:
    """Fill ``num_classes`` and the embedding size into every loss config that leaves them unset.

    A link reaches only ``model.loss`` itself; this also reaches :class:`WeightedSum` terms, so that
    no config repeats what the data module and the model already say.
    """
    embedding_dim = config.model.get("embedding_dim")
    known = {"num_classes": DigitsDataModule.num_classes, "embedding_dim": embedding_dim, "feature_dim": embedding_dim}

    def visit(node: Any) -> None:
        if isinstance(node, Namespace):
            init_args = node.get("init_args")
            if isinstance(init_args, Namespace):
                for key, value in known.items():
                    if key in init_args and init_args[key] is None:
                        init_args[key] = value
            for value in vars(node).values():
                visit(value)
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config.model.get("loss"))


def _share_logger_version(config: Namespace) -> None:
    """Give loggers writing under the same directory one version, so a run's logs sit in one folder."""
    loggers = config.trainer.get("logger")
    if not isinstance(loggers, list):
        return
    by_root: dict[Path, list[Namespace]] = {}
    for logger in loggers:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init_args, Namespace) and "save_dir" in init_args and init_args.get("version") is None:
            root = Path(str(init_args.save_dir)) / str(init_args.get("name") or "lightning_logs")
            by_root.setdefault(root, []).append(init_args)
    for root, group in by_root.items():
        if len(group) > 1:
            existing = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
            version = max(existing, default=-1) + 1
            for init_args in group:
                init_args.version = version


def _honour_disabled_progress_bar(config: Namespace) -> None:
    """``--trainer.enable_progress_bar=false`` removes the default's rich progress bar instead of
    failing on it (Lightning refuses a progress-bar callback on a trainer without one)."""
    callbacks = config.trainer.get("callbacks")
    if config.trainer.get("enable_progress_bar") is False and isinstance(callbacks, list):
        config.trainer.callbacks = [
            callback
            for callback in callbacks
            if not (isinstance(callback, Namespace) and str(callback.get("class_path", "")).endswith("ProgressBar"))
        ]


def print_summary(results: Mapping[str, float], class_names: list[str], log_dir: str | None, ckpt_path: str | None) -> None:
    """Print accuracy, macro-F1 and per-class recall on the test split, and where the logs are."""
    console = Console()
    source = "best checkpoint" if ckpt_path else "last weights"
    console.rule(f"Test split, balanced ({source})")
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("recall", style="dim")
    recalls = [(name, results.get(f"test/recall/{name}")) for name in class_names]
    recalls = [(name, value) for name, value in recalls if value is not None]
    for name, _ in recalls:
        table.add_column(name, justify="right")
    table.add_row("", *(f"{value:.2f}" for _, value in recalls))
    console.print(table)
    console.print(
        f"accuracy [bold]{results.get('test/acc', float('nan')):.3f}[/]   "
        f"macro-F1 [bold]{results.get('test/macro_f1', float('nan')):.3f}[/]   "
        f"loss {results.get('test/loss', float('nan')):.4f}"
    )
    if log_dir:
        console.print(f"logs: [cyan]{log_dir}[/]  (tensorboard --logdir {Path(log_dir).parent})")


def build_cli(args: list[str] | None = None, run: bool = True) -> LossplugCLI:
    """The ``lossplug`` CLI on ``args`` (default ``sys.argv[1:]``); no arguments means ``fit``.

    With ``run=False`` nothing is run and no subcommand is given: the classes are only parsed and
    instantiated (what tests use).
    """
    arguments = args
    if run and ((args is None and len(sys.argv) == 1) or args == []):
        arguments = ["fit"]  # `lossplug` alone trains the embedded default
    # allow_abbrev=False: a misspelled option is an error, never silently taken as a prefix of another
    defaults: dict[str, Any] = {"default_config_files": [DEFAULT_CONFIG]}
    return LossplugCLI(
        DemoClassifier,
        DigitsDataModule,
        parser_class=LossplugArgumentParser,
        parser_kwargs={"allow_abbrev": False, **({name: dict(defaults) for name in SUBCOMMANDS} if run else defaults)},
        save_config_kwargs={"overwrite": True},
        args=arguments,
        run=run,
    )


def main() -> None:
    """Entry point of the ``lossplug`` command."""
    # Lightning's own use of a torch API deprecated in newer torch: nothing a user of the command can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)
    build_cli()
