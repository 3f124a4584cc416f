"""The ``lossplug`` command: LightningCLI for any LightningModule that uses :class:`~lossplug.LossMixin`.

``lossplug fit`` alone trains the digits demo (``configs/demo.yaml``) with the embedded run defaults
(``configs/default.yaml``); ``--model my_pkg.MyModel --data my_pkg.MyData`` (or ``class_path`` in
YAML) trains yours, and ``--config focal`` picks a shipped loss config by name.

What the command reads from your classes, and nothing else:

* the data module's ``num_classes`` (an int), ``class_counts`` (training samples per class, for
  computed alphas and class priors, read when training starts) and ``class_names`` (optional);
* the model's ``embedding_dim`` init argument (for ArcFace and center loss).

It fills every loss dimension the config leaves unset (``num_classes``, ``embedding_dim``,
``feature_dim``, inside :class:`~lossplug.losses.WeightedSum` terms too), and the model's own
``num_classes`` and ``class_names`` init arguments when they are left ``None``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import json
import os
import re
import sys
import warnings
from collections.abc import Collection, Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from rich.console import Console
from rich.table import Table

from lossplug import losses
from lossplug.callbacks import LongTailReport, LossDiagnostics
from lossplug.losses.base import TORCH_COUNTERPARTS, BaseLoss, ClassCountsLoss
from lossplug.mixin import LossMixin

CONFIG_DIR = Path(str(files("lossplug") / "configs"))
RUN_DEFAULTS = CONFIG_DIR / "default.yaml"
DEMO = CONFIG_DIR / "demo.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
_GROUPS = ("model", "data")
_FILLED_LOSS_ARGUMENTS = {"num_classes": "num_classes", "embedding_dim": "embedding_dim", "feature_dim": "embedding_dim"}


def available_losses() -> list[str]:
    """Names of the lossplug losses a config can pick by short name."""
    return sorted(name for name in losses.__all__ if name not in ("BaseLoss", "ClassCountsLoss", "ClassWeightedLoss", "select_input"))


def shipped_configs() -> list[str]:
    """Names of the loss configs shipped with lossplug (``lossplug fit --config NAME``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path not in (RUN_DEFAULTS, DEMO))


def _description() -> str:
    return (
        "Train, validate, test or predict any LightningModule that uses lossplug.LossMixin, the loss picked in\n"
        "YAML, with diagnostics of where the loss comes from. Without --model/--data: the digits demo.\n\n"
        "  lossplug fit                                   the demo: focal loss on long-tailed digits\n"
        "  lossplug fit --config arcface                  a shipped loss config, by name (or a path)\n"
        "  lossplug fit --model my_pkg.MyModel --data my_pkg.MyData --config focal\n"
        "  lossplug fit --model.loss=FocalLoss --model.loss.gamma=1\n"
        "  lossplug fit --ckpt_path last                  resume the latest run in its own folder\n"
        "  lossplug compare ce focal logit_adjusted --seeds 3   train each config per seed, compare on the test split\n\n"
        f"Losses: {', '.join(available_losses())}; torch's losses by import path (torch.nn.CrossEntropyLoss).\n"
        f"Shipped configs: {', '.join(shipped_configs())}."
    )


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the description's own line breaks kept (it lists commands and names)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


class LossplugArgumentParser(LightningArgumentParser):
    """A parser whose errors are one short paragraph instead of jsonargparse's nested report."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"[bold red]error:[/] {summarize_config_error(message)}", highlight=False)
        console.print("Run with --help for the options, --print_config for the full configuration.")
        raise SystemExit(2)

    def save(self, cfg: Any, path: Any, *args: Any, skip_validation: bool = True, **kwargs: Any) -> None:
        """jsonargparse's ``save``, without checking ``cfg`` a second time: LightningCLI saves the config it
        has just parsed and checked."""
        super().save(cfg, path, *args, skip_validation=skip_validation, **kwargs)


def summarize_config_error(message: str) -> str:
    """Turn jsonargparse's nested error report into the line a user needs.

    Example:
        >>> summarize_config_error("Option 'gama' is not accepted")
        'unknown option `gama` (did you mean `gamma`?).'
    """
    key = re.search(r'Parser key "([^"]+)"', message)
    where = f"`{key.group(1)}`: " if key else ""
    fragments = [" ".join(part.split()) for part in re.split(r"\n|\s-\s(?=[A-Z])", message)]
    fragments = [part for part in fragments if part]
    # an argument check of lossplug's (or of the user's classes, in the same voice) says it best
    ours = next((part for part in fragments if re.match(r"Expected (argument )?`", part)), None)
    if ours is not None:
        return where + ours.split(" Given value")[0]
    number = re.search(r"Expected a <class 'float'>\. Got value: (\S+)", message)
    if number is not None:  # jsonargparse refuses nan and inf before our checks see them
        name = key.group(1).rsplit(".", 1)[-1] if key else "value"
        return f"Expected argument `{name}` to be a finite number, but got {number.group(1)}."
    unknown_class = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if unknown_class is not None:
        name = unknown_class.group(1).strip("'\"")
        if key is not None and key.group(1) in _GROUPS:
            detail = re.search(r"Problem with given class_path '[^']+':\s*(.+)", message)
            reason = f" ({' '.join(detail.group(1).split())})" if detail else ""
            return f"{where}cannot import {name!r}{reason}: give the import path of a class (my_pkg.MyClass)."
        return (
            f"{where}unknown loss {name!r}{_suggestion(name, available_losses())}. Available losses: "
            f"{', '.join(available_losses())}; a torch loss by import path (torch.nn.CrossEntropyLoss)."
        )
    unknown_option = re.search(r"Option '([^']+)' is not accepted", message)
    if unknown_option is not None:
        option = unknown_option.group(1)
        owner = re.search(r"Problem with given class_path '([\w.]+)'", message)
        owner_text = f" of {owner.group(1).rsplit('.', 1)[-1]}" if owner else ""
        return f"{where}unknown option `{option}`{owner_text}{_suggestion(option, _loss_options())}."
    leaves = [part.removeprefix("- ") for part in fragments]
    leaves = [part for part in leaves if not part.endswith(":") and not part.startswith(_WRAPPERS)]
    return where + (" ".join(dict.fromkeys(leaves[:2])) if leaves else message.strip())


_WRAPPERS = ("Given value", "Subtypes:", "Does not validate", "Errors:", "Expected a dot import path", "Expected a <class 'NoneType'>")


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


class ConfigError(ValueError):
    """A mistake in the configuration, found before training: reported as one line."""


# -- the arguments, before jsonargparse sees them ------------------------------------------------------------
def resolve_config(value: str) -> str:
    """A ``--config`` value: a path or a YAML string as it is, a shipped config's name as its path.

    Example:
        >>> Path(resolve_config("focal")).name
        'focal.yaml'
    """
    if os.path.exists(value) or any(mark in value for mark in ":{\n"):
        return value  # a file, or the config itself as YAML
    if re.fullmatch(r"[\w-]+(\.ya?ml)?", value):
        shipped = CONFIG_DIR / f"{Path(value).stem}.yaml"
        if shipped.exists() and shipped not in (RUN_DEFAULTS, DEMO):
            return str(shipped)
    raise ConfigError(
        f"--config {value!r} is neither a file nor a shipped config{_suggestion(Path(value).stem, shipped_configs())}. "
        f"Shipped configs: {', '.join(shipped_configs())}."
    )


def _config_values(tokens: list[str]) -> Iterator[tuple[int, str]]:
    """``(index, value)`` of every ``--config``/``-c`` value in ``tokens``; ``index`` is the value's own token."""
    for index, token in enumerate(tokens):
        key, equals, inline = token.partition("=")
        if key in ("-c", "--config"):
            if equals:
                yield index, inline
            elif index + 1 < len(tokens):
                yield index + 1, tokens[index + 1]


def _names_class(config_value: str, group: str) -> bool:
    """Whether a ``--config`` value (a path or a YAML string) picks the class of ``group``."""
    try:
        text = Path(config_value).read_text() if os.path.exists(config_value) else config_value
        content = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return False
    section = content.get(group) if isinstance(content, Mapping) else None
    return isinstance(section, str) or (isinstance(section, Mapping) and "class_path" in section)


def prepare_args(args: list[str], fill: Collection[str] | None = None) -> tuple[list[str], set[str]]:
    """Shipped config names resolved to paths, and the demo's model and data inserted where none is named.

    The demo goes in first, so everything given overrides it. It goes in only for what the user does not
    name: a default class's arguments would otherwise be carried into the user's class wherever their
    names agree (jsonargparse keeps a previous class's ``init_args`` across a ``class_path`` change).

    Args:
        args: The command line, after the program's name.
        fill: The groups to fill from the demo; ``None`` fills those the arguments do not name.

    Returns:
        The arguments to parse, and the groups (``"model"``, ``"data"``) the demo fills.
    """
    tokens = list(args)
    for index, value in list(_config_values(tokens)):
        resolved = resolve_config(value)
        tokens[index] = resolved if tokens[index] == value else f"{tokens[index].partition('=')[0]}={resolved}"
    start = next((index + 1 for index, token in enumerate(tokens) if token in SUBCOMMANDS), 0)
    if start == 0 and any(token in ("-h", "--help") for token in tokens):
        return tokens, set()  # the top-level help
    # a class named on the command line goes first, so that a config given before it (`--config focal
    # --model my_pkg.MyModel`, which sets only the loss) applies to that class
    in_configs = {group for group in _GROUPS for _, value in _config_values(tokens[start:]) if _names_class(value, group)}
    movable = [f"--{group}{suffix}" for group in _GROUPS if group not in in_configs for suffix in ("", ".class_path")]
    classes, rest, index = [], [], start
    while index < len(tokens):
        key, equals, _ = tokens[index].partition("=")
        if key in movable:
            taken = 1 if equals or index + 1 == len(tokens) else 2
            classes += tokens[index : index + taken]
            index += taken
        else:
            rest.append(tokens[index])
            index += 1
    tokens[start:] = classes + rest
    if fill is None:
        given = tokens[start:]
        named = in_configs | {
            group
            for group in _GROUPS
            for token in given
            if token.partition("=")[0] in (f"--{group}", f"--{group}.class_path")
        }
        fill = [group for group in _GROUPS if group not in named]
    demo = yaml.safe_load(DEMO.read_text())
    filled = {group for group in _GROUPS if group in fill}
    if filled:
        tokens[start:start] = ["--config", yaml.safe_dump({group: demo[group] for group in _GROUPS if group in filled})]
    return tokens, filled


# -- the CLI ---------------------------------------------------------------------------------------------------
class LossplugCLI(LightningCLI):
    """LightningCLI for any :class:`~lossplug.LossMixin` model and any data module, with the digits demo as
    default, loss dimensions filled from the data and the model, mistakes caught before training, and a
    test summary at the end of ``fit``."""

    demo_groups: set[str]
    """The groups (``"model"``, ``"data"``) that the demo fills in this run."""
    resumed_run: Path | None = None
    """The run folder that ``--ckpt_path last`` continues."""
    _configured_loss: list[str]  # the loss classes of the config, before a checkpoint's replace them

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--logit_adjustment",
            type=float | None,
            default=None,
            help="Post-hoc logit adjustment (Menon et al. 2021): predict with argmax(z - tau log prior), the prior "
            "being the data module's class_counts. Applies to validation, test and predict.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.add_subclass_arguments(
            pl.LightningModule,
            "model",
            fail_untyped=False,
            required=False,
            help="The model: a LightningModule that uses lossplug.LossMixin, by class path (my_pkg.MyModel) or "
            "class_path/init_args in YAML. None named: the digits demo, lossplug.models.DemoClassifier.",
        )
        parser.add_subclass_arguments(
            pl.LightningDataModule,
            "data",
            fail_untyped=False,
            required=False,
            help="The data module, by class path or class_path/init_args in YAML. It may say num_classes, "
            "class_counts and class_names. None named: the digits demo, lossplug.data.DigitsDataModule.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.demo_groups, self._configured_loss = set(), []
        if isinstance(args, dict | Namespace):
            self.config = parser.parse_object(args)
            return
        given = sys.argv[1:] if args is None else list(args)
        try:
            tokens, self.demo_groups = prepare_args(given)
        except ConfigError as error:
            parser.error(str(error))
        self.config = parser.parse_args(tokens)
        demo = yaml.safe_load(DEMO.read_text())
        config = self._subconfig()
        named_elsewhere = {
            group
            for group in self.demo_groups
            if config.get(group) is not None and config[group].class_path != demo[group]["class_path"]
        }
        if named_elsewhere:  # a class named where `prepare_args` does not look: parsed again without the demo's
            tokens, self.demo_groups = prepare_args(given, fill=self.demo_groups - named_elsewhere)
            self.config = parser.parse_args(tokens)
        config = self._subconfig()
        self._configured_loss = _loss_classes(config)
        _absolute_log_paths(config)
        _honour_disabled_features(config)
        if config.get("ckpt_path") == "last":
            try:
                config.ckpt_path = str(_latest_checkpoint(config))
            except ConfigError as error:
                parser.error(str(error))
            if self.config.get("subcommand") == "fit":
                self.resumed_run = _continue_run(config, Path(config.ckpt_path))

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        from_checkpoint = _loss_classes(config)
        if config.get("ckpt_path") and from_checkpoint != self._configured_loss and _is_first_process():
            # LightningCLI has taken the model's arguments from the checkpoint: say so, never silently
            Console(stderr=True, soft_wrap=True).print(
                f"Using the checkpoint's loss {' + '.join(from_checkpoint)} ({Path(str(config.ckpt_path)).name}); "
                f"the configured {' + '.join(self._configured_loss)} is not used.",
                highlight=False,
            )

    def _subconfig(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def instantiate_classes(self) -> None:
        try:
            self._instantiate()
        except (ValueError, TypeError, MisconfigurationException) as error:
            # constructors and the checks below validate the configuration: a user error, not a crash
            self.parser.error(" ".join(str(error).split()))

    def _instantiate(self) -> None:
        config = self._subconfig()
        if config.get("model") is None:
            raise ConfigError("Expected a model (--model my_pkg.MyModel), but none was given.")
        data = _instantiate_alone(config.get("data"), pl.LightningDataModule, "data")
        facts = DataFacts.of(data)
        model_args = config.model.get("init_args") or Namespace()
        embedding_dim = model_args.get("embedding_dim")
        _fill_model_arguments(model_args, facts, config.model.class_path)
        _fill_loss_dimensions(model_args.get("loss"), facts, embedding_dim, config.model.class_path)
        _step_aside_for_a_torch_loss(config)
        # fast_dev_run replaces the loggers with one that writes nothing: no run folder to claim
        writes = self.subcommand and not config.trainer.get("fast_dev_run")
        claimed = _claim_run_folders(config) if self.resumed_run is None and writes else []
        data_spec = config.get("data")
        try:
            if data is not None:
                config.data = data  # instantiated once: the parser takes it as it is
            with warnings.catch_warnings():
                # LightningCLI writes the config into the model's hyperparameters, where it cannot write the
                # data module's instance (which the model's hyperparameters do not need): said, not an error
                warnings.filterwarnings("ignore", message=r"(?s).*Unable to serialize instance")
                super().instantiate_classes()
            config.data = data_spec  # the config as given, for the config.yaml the run saves
            check_model(self.model, facts, embedding_dim)
            if config.get("logit_adjustment") is not None:
                if config.logit_adjustment and not facts.has_counts:
                    raise ConfigError(
                        f"--logit_adjustment divides by the training class prior, but {facts.owner} has no "
                        "`class_counts`: give the data module that attribute."
                    )
                self.model.set_logit_adjustment(config.logit_adjustment)
            if config.get("ckpt_path") and _is_first_process():
                self._say_which_checkpoint(Path(str(config.ckpt_path)))
        except BaseException:
            for folder in claimed:  # nothing was written there yet
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    def _say_which_checkpoint(self, checkpoint: Path) -> None:
        """One line on the checkpoint a run starts from (and, resuming, the run it continues)."""
        if not checkpoint.is_file():
            return
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("epoch")
        saved = f"{_shown(checkpoint)} (saved in epoch {epoch})"
        if self.resumed_run is not None:
            kept = _keep_earlier_metrics(self.resumed_run)
            text = f"Resuming {_shown(self.resumed_run)} from {saved}{kept}."
        else:
            text = f"Using {saved}."
        Console(stderr=True, soft_wrap=True).print(text, highlight=False)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted or not _has_test_split(self.model, self.datamodule):
            return
        checkpoint = trainer.checkpoint_callback
        # without a monitored metric, the "best" checkpoint is the last epoch's: the weights in memory
        monitored = checkpoint is not None and getattr(checkpoint, "monitor", None)
        ckpt_path = "best" if monitored and getattr(checkpoint, "best_model_path", None) else None
        # every process tests and reads the log folder (both are collectives under DDP); the first one prints
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        log_dir = trainer.log_dir
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, LongTailReport) and results:
                results[0] = {**results[0], **callback.results.get("test", {})}  # each class's recall too
        if trainer.is_global_zero and results:
            title = f"Test split ({'best checkpoint' if ckpt_path else 'last weights'}"
            tau = self._subconfig().get("logit_adjustment")
            title += f", post-hoc logit adjustment tau={tau:g})" if tau else ")"
            print_summary(results[0], log_dir, title)
            if log_dir:
                _write_test_metrics(Path(log_dir) / "test_metrics.json", results[0], self.datamodule)


def _loss_classes(config: Namespace) -> list[str]:
    """The class names of the configured model's loss and its terms."""
    model = config.get("model")
    init_args = model.get("init_args") if isinstance(model, Namespace) else None
    loss = init_args.get("loss") if isinstance(init_args, Namespace) else None
    return [_short(spec.class_path) for spec in _loss_specs(loss)]


def _loggers_with_folders(config: Namespace) -> list[Namespace]:
    """The ``init_args`` of the configured loggers that write into ``save_dir/name/version``."""
    loggers = config.trainer.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return [
        logger.init_args
        for logger in loggers
        if isinstance(logger, Namespace)
        and isinstance(logger.get("init_args"), Namespace)
        and "save_dir" in logger.init_args
        and "version" in logger.init_args
    ]


def _absolute_log_paths(config: Namespace) -> None:
    """Loggers' and checkpoints' folders as absolute paths: what a checkpoint records works from any directory."""
    for init_args in _loggers_with_folders(config):
        init_args.save_dir = os.path.abspath(str(init_args.save_dir))
    callbacks = config.trainer.get("callbacks")
    for callback in callbacks if isinstance(callbacks, list) else []:
        callback_args = callback.get("init_args") if isinstance(callback, Namespace) else None
        if isinstance(callback_args, Namespace) and callback_args.get("dirpath"):
            callback_args.dirpath = os.path.abspath(str(callback_args.dirpath))
    if config.trainer.get("default_root_dir"):
        config.trainer.default_root_dir = os.path.abspath(str(config.trainer.default_root_dir))


def _run_roots(config: Namespace) -> dict[Path, list[Namespace]]:
    """Loggers grouped by the folder that holds their runs (``save_dir/name``)."""
    roots: dict[Path, list[Namespace]] = {}
    for init_args in _loggers_with_folders(config):
        root = Path(str(init_args.save_dir)) / str(init_args.get("name") or "lightning_logs")
        roots.setdefault(root, []).append(init_args)
    return roots


def _is_first_process() -> bool:
    """Whether this process is rank zero of its run: the one that names its folder.

    Lightning starts the other processes of a ``ddp`` run as copies of this command, with ``LOCAL_RANK``
    set (torchrun sets ``RANK`` too); they write no logs and take the folder's name from rank zero.
    """
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _claim_run_folders(config: Namespace) -> list[Path]:
    """Give the loggers writing under one root the same new ``version_N`` folder, created here.

    The folder is created with ``mkdir``, which fails when it exists: runs started at the same moment
    in one directory never share a folder.
    """
    claimed = []
    for root, group in _run_roots(config).items():
        if any(init_args.get("version") is not None for init_args in group) or not _is_first_process():
            continue
        try:
            root.mkdir(parents=True, exist_ok=True)
            versions = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
            version = max(versions, default=-1) + 1
            while True:
                try:
                    (root / f"version_{version}").mkdir()
                    break
                except FileExistsError:  # another run took it first
                    version += 1
        except OSError as error:
            raise ConfigError(f"Cannot create the run's log folder under {root}: {error.strerror or error}.") from None
        claimed.append(root / f"version_{version}")
        for init_args in group:
            init_args.version = version
    return claimed


def _latest_checkpoint(config: Namespace) -> Path:
    """``--ckpt_path last``: the newest ``last.ckpt`` of a run under the loggers' roots (or a checkpoint
    callback's ``dirpath``)."""
    callbacks = config.trainer.get("callbacks")
    candidates = [
        Path(str(callback.init_args.dirpath)) / "last.ckpt"
        for callback in (callbacks if isinstance(callbacks, list) else [])
        if isinstance(callback, Namespace) and isinstance(callback.get("init_args"), Namespace)
        and callback.init_args.get("dirpath")
    ]
    roots = _run_roots(config)
    for root in roots:
        candidates += root.glob("version_*/checkpoints/last.ckpt")
    found = [path for path in candidates if path.is_file()]
    if not found:
        places = ", ".join(str(root) for root in roots) or "the checkpoint folders"
        raise ConfigError(f"--ckpt_path last: no run with a last.ckpt under {places}; nothing to resume.")
    return max(found, key=lambda path: path.stat().st_mtime)


def _continue_run(config: Namespace, checkpoint: Path) -> Path | None:
    """The loggers write into the folder of the run that ``checkpoint`` belongs to; that folder, if they do."""
    run = checkpoint.parent.parent
    if not (run.name.startswith("version_") and run.name[8:].isdigit()):
        return None
    group = _run_roots(config).get(run.parent, [])
    for init_args in group:
        init_args.version = int(run.name[8:])
    return run if group else None


def _keep_earlier_metrics(run: Path) -> str:
    """Lightning's CSV logger deletes a ``metrics.csv`` it finds in its folder: keep the earlier rows beside it
    (never over an earlier copy). Returns what to tell the user."""
    metrics = run / "metrics.csv"
    if not metrics.exists():
        return ""
    earlier, number = run / "metrics.before_resume.csv", 1
    while earlier.exists():
        earlier, number = run / f"metrics.before_resume_{number}.csv", number + 1
    metrics.rename(earlier)
    return f"; Lightning's metrics.csv starts anew, the earlier rows are in {earlier.name}"


def _shown(path: Path | str) -> str:
    """``path`` relative to the working directory when it is under it, else as it is."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _honour_disabled_features(config: Namespace) -> None:
    """``--trainer.enable_progress_bar=false`` and ``--trainer.enable_checkpointing=false`` remove the
    default's progress bar and checkpoint callback instead of failing on them (Lightning refuses such a
    callback on a trainer without the feature)."""
    callbacks = config.trainer.get("callbacks")
    if not isinstance(callbacks, list):
        return
    dropped = [
        suffix
        for flag, suffix in (("enable_progress_bar", "ProgressBar"), ("enable_checkpointing", "ModelCheckpoint"))
        if config.trainer.get(flag) is False
    ]
    config.trainer.callbacks = [
        callback
        for callback in callbacks
        if not (isinstance(callback, Namespace) and str(callback.get("class_path", "")).endswith(tuple(dropped)))
    ]


def _step_aside_for_a_torch_loss(config: Namespace) -> None:
    """With a torch loss (no per-sample values), leave lossplug's diagnostics and report out of the run,
    and say so in one line."""
    model_args = config.model.get("init_args")
    spec = model_args.get("loss") if isinstance(model_args, Namespace) else None
    class_path = str(spec.get("class_path")) if isinstance(spec, Namespace) else ""
    loss_class = _imported(class_path) if class_path else None
    callbacks = config.trainer.get("callbacks")
    if loss_class is None or issubclass(loss_class, BaseLoss) or not isinstance(callbacks, list):
        return
    ours = [
        callback
        for callback in callbacks
        if isinstance(callback, Namespace)
        and issubclass(_imported(str(callback.get("class_path"))) or object, LossDiagnostics | LongTailReport)
    ]
    if not ours:
        return
    config.trainer.callbacks = [callback for callback in callbacks if callback not in ours]
    if _is_first_process():
        names = ", ".join(_short(callback.class_path) for callback in ours)
        Console(stderr=True, soft_wrap=True).print(
            f"{names}: off for this run. They read the per-sample losses of a lossplug loss, and {class_path} "
            f"gives one number per step; lossplug.losses.{TORCH_COUNTERPARTS.get(_short(class_path), 'CrossEntropyLoss')} "
            "gives torch's values and them.",
            highlight=False,
        )


def _imported(class_path: str) -> type | None:
    """The class at ``class_path``, or None when it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _instantiate_alone(spec: Namespace | None, base: type, group: str) -> Any:
    """One class group instantiated on its own (the data module, whose facts the model's config needs)."""
    if spec is None:
        return None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, group, fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({group: spec.as_dict()}))[group]


class DataFacts:
    """What the command reads from the data module: ``num_classes``, ``class_names``, ``class_counts``."""

    def __init__(self, owner: str, num_classes: int | None, class_names: list[str] | None, has_counts: bool) -> None:
        self.owner = owner
        self.num_classes = num_classes
        self.class_names = class_names
        self.has_counts = has_counts

    @classmethod
    def of(cls, data: pl.LightningDataModule | None) -> DataFacts:
        if data is None:
            return cls("no data module", None, None, False)
        owner = type(data).__name__
        num_classes = getattr(data, "num_classes", None)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ConfigError(f"Expected `{owner}.num_classes` to be a positive integer, but got {num_classes!r}.")
        names = getattr(data, "class_names", None)
        if names is not None:
            if isinstance(names, str) or not all(isinstance(name, str | int) for name in names):
                raise ConfigError(f"Expected `{owner}.class_names` to be a list of names, but got {names!r}.")
            names = [str(name) for name in names]
            if num_classes is not None and len(names) != num_classes:
                raise ConfigError(
                    f"Expected `{owner}.class_names` to name its {num_classes} classes, but got {len(names)} names."
                )
        # looked up on the class or the instance only: a property may need the data set up, at the first step
        has_counts = hasattr(type(data), "class_counts") or "class_counts" in vars(data)
        return cls(owner, num_classes, names, has_counts)


def _fill_model_arguments(model_args: Namespace, facts: DataFacts, model_class: str) -> None:
    """The model's ``num_classes`` and ``class_names`` arguments left ``None``, from the data module."""
    for name, value in (("num_classes", facts.num_classes), ("class_names", facts.class_names)):
        if name not in model_args:
            continue
        given = model_args[name]
        if given is None:
            if value is None and name == "num_classes":
                raise ConfigError(
                    f"{_short(model_class)} needs `num_classes`, and {facts.owner} has no `num_classes` attribute: "
                    f"give the data module one, or set `--model.num_classes`."
                )
            model_args[name] = value
        elif name == "num_classes" and value is not None and given != value:
            raise ConfigError(
                f"Expected `model.num_classes` to be the data module's {value} classes ({facts.owner}.num_classes), "
                f"but got {given}. Leave it unset: the command fills it in."
            )


def _fill_loss_dimensions(loss: Any, facts: DataFacts, embedding_dim: int | None, model_class: str) -> None:
    """Fill ``num_classes`` and the embedding size into every loss config that leaves them unset.

    Reaches :class:`~lossplug.losses.WeightedSum` terms too, so that no config repeats what the data
    module and the model already say.
    """
    known = {"num_classes": facts.num_classes, "embedding_dim": embedding_dim}
    providers = {
        "num_classes": f"{facts.owner} has no `num_classes` attribute",
        "embedding_dim": f"{_short(model_class)} has no `embedding_dim` argument",
    }
    for spec in _loss_specs(loss):
        init_args = spec.get("init_args")
        if not isinstance(init_args, Namespace):
            continue
        for argument, source in _FILLED_LOSS_ARGUMENTS.items():
            if argument in init_args and init_args[argument] is None:
                if known[source] is None:
                    raise ConfigError(
                        f"{_short(spec.class_path)} needs `{argument}`, and {providers[source]}: give it one, or "
                        f"set `{argument}` in the loss's init_args."
                    )
                init_args[argument] = known[source]


def _loss_specs(node: Any) -> Iterator[Namespace]:
    """Every ``class_path``/``init_args`` spec in a loss config (the loss, and WeightedSum terms)."""
    if isinstance(node, Namespace):
        if "class_path" in node:
            yield node
        for value in vars(node).values():
            yield from _loss_specs(value)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _loss_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _loss_specs(value)


def _short(class_path: str) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def check_model(model: pl.LightningModule, facts: DataFacts, embedding_dim: int | None) -> None:
    """Raise what the instantiated model and its loss reveal before training: a model without the mixin,
    sizes that differ from the data's classes or the model's embedding, computed weights without counts."""
    name = type(model).__name__
    if not isinstance(model, LossMixin):
        raise ConfigError(
            f"Expected the model to use lossplug.LossMixin, but {name} does not: declare "
            f"`class {name}(LossMixin, L.LightningModule)` and pass the loss with `super().__init__(loss=loss)`."
        )
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ConfigError(
            f"Expected {name} to have a loss, but it has none: give one (`--model.loss=FocalLoss`, `--config focal`), "
            f"or pass it on with `super().__init__(loss=loss)` in `{name}.__init__`."
        )
    for module in loss.modules():
        if not isinstance(module, BaseLoss):
            continue
        for buffer, size in class_sizes(module).items():
            argument = "class_counts" if isinstance(module, ClassCountsLoss) else buffer  # what the user gave
            if facts.num_classes is not None and size != facts.num_classes:
                raise ConfigError(
                    f"Expected `{argument}` of {type(module).__name__} to have one entry per class "
                    f"({facts.num_classes} classes in {facts.owner}), but got {size}."
                )
        for argument in ("embedding_dim", "feature_dim"):
            dimension = getattr(module, argument, None)
            if isinstance(dimension, int) and embedding_dim is not None and dimension != embedding_dim:
                raise ConfigError(
                    f"Expected `{argument}` of {type(module).__name__} to be the model's embedding size "
                    f"({name}.embedding_dim={embedding_dim}), but got {dimension}."
                )
    needing = [  # the losses themselves, not a WeightedSum around them
        module
        for module in loss.modules()
        if isinstance(module, BaseLoss)
        and module.needs_class_counts
        and not any(isinstance(inner, BaseLoss) for inner in list(module.modules())[1:])
    ]
    if needing and not facts.has_counts:
        first = needing[0]
        instead = "`class_counts`" if isinstance(first, ClassCountsLoss) else "`alpha` as one weight per class"
        raise ConfigError(
            f"{type(first).__name__} needs the training class counts, but {facts.owner} has no `class_counts` after "
            f"`__init__`: give the data module that attribute (training samples per class), or give the loss {instead}."
        )


def class_sizes(loss: BaseLoss) -> dict[str, int]:
    """The number of classes each of a loss's own arguments implies: ``{"alpha": 10}``, ``{"num_classes": 10}``."""
    sizes = {}
    for name, value in (*loss.named_parameters(recurse=False), *loss.named_buffers(recurse=False)):
        if value is not None and value.ndim >= 1 and not (name == "pos_weight" and value.numel() == 1):
            sizes[name] = int(value.shape[0])
    num_classes = getattr(loss, "num_classes", None)
    if isinstance(num_classes, int):
        sizes["num_classes"] = num_classes
    return sizes


def _has_test_split(model: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> bool:
    has_loader = (datamodule is not None and is_overridden("test_dataloader", datamodule)) or is_overridden(
        "test_dataloader", model
    )
    return has_loader and is_overridden("test_step", model)


def _write_test_metrics(path: Path, metrics: Mapping[str, float], datamodule: Any) -> None:
    """The test metrics, with the data module's class names and training counts (what `lossplug compare` reads)."""
    counts = getattr(datamodule, "class_counts", None)
    names = getattr(datamodule, "class_names", None)
    content = {
        "metrics": dict(metrics),
        "class_names": None if names is None else [str(name) for name in names],
        "class_counts": None if counts is None else [int(count) for count in counts],
    }
    path.write_text(json.dumps(content, indent=1) + "\n")


def print_summary(results: Mapping[str, float], log_dir: str | None, title: str) -> None:
    """Print the test metrics (per-class recall as a row of its own) and where the logs are."""
    console = Console()
    console.rule(title)
    recall_prefix = "test/recall/"
    recalls = {key.removeprefix(recall_prefix): value for key, value in results.items() if key.startswith(recall_prefix)}
    if recalls:
        table = Table(show_edge=False, box=None, pad_edge=False)
        table.add_column("recall", style="dim")
        for name in recalls:
            table.add_column(name, justify="right")
        table.add_row("", *(f"{value:.2f}" for value in recalls.values()))
        console.print(table)
    shown = [(f"test/{key}", label) for key, label in _SUMMARY]
    parts = [f"{label} [bold]{results[key]:.3f}[/]" for key, label in shown if key in results]
    groups = [results.get(f"test/recall_{group}") for group in ("many", "medium", "few")]
    if all(value is not None for value in groups):
        parts.insert(2, "recall many / medium / few [bold]" + " / ".join(f"{value:.2f}" for value in groups) + "[/]")
    known = {key for key, _ in shown} | {f"test/recall_{group}" for group in ("many", "medium", "few")}
    parts += [
        f"{key.removeprefix('test/')} [bold]{value:.4g}[/]"
        for key, value in results.items()
        if key not in known and not key.startswith(recall_prefix)
    ]
    console.print("   ".join(parts))
    if log_dir:
        console.print(f"logs: [cyan]{_shown(log_dir)}[/]  (tensorboard --logdir {_shown(Path(log_dir).parent)})")


_SUMMARY = (("acc", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE"), ("loss", "loss"))


def build_cli(args: list[str] | None = None, run: bool = True) -> LossplugCLI:
    """The ``lossplug`` CLI on ``args`` (default ``sys.argv[1:]``); no arguments means ``fit``.

    With ``run=False`` nothing is run and no subcommand is given: the classes are only parsed and
    instantiated (what tests use).
    """
    arguments = sys.argv[1:] if args is None else list(args)
    if run and not arguments:
        arguments = ["fit"]  # `lossplug` alone trains the embedded default
    defaults: dict[str, Any] = {"default_config_files": [str(RUN_DEFAULTS)]}
    # allow_abbrev=False: a misspelled option is an error, never silently taken as a prefix of another
    parser_kwargs: dict[str, Any] = {"allow_abbrev": False, "description": _description(), "formatter_class": _HelpFormatter}
    if run:
        parser_kwargs.update({name: dict(defaults) for name in SUBCOMMANDS})
    else:
        parser_kwargs.update(defaults)
    return LossplugCLI(
        parser_class=LossplugArgumentParser,
        parser_kwargs=parser_kwargs,
        save_config_kwargs={"overwrite": True},
        args=arguments,
        run=run,
    )


def main() -> None:
    """Entry point of the ``lossplug`` command (``lossplug compare`` is :mod:`lossplug.compare`)."""
    # as `python -m` does: the user's modules (--model my_pkg.MyModel) import from the current directory
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    # Lightning's own use of a torch API deprecated in newer torch: nothing a user of the command can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)
    if sys.argv[1:2] == ["compare"]:
        from lossplug.compare import main as compare

        compare()
    build_cli()


__all__ = ["LossplugCLI", "available_losses", "build_cli", "main", "shipped_configs"]
