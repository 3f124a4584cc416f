"""``lossplug compare``: train several loss configs over several seeds on the same data and model, and
tabulate the test metrics as mean ± standard deviation over the seeds.

Each run is ``lossplug fit`` in a process of its own (what one run sets up cannot leak into the next),
writing into ``OUT/runs/<config>/seed_<n>/`` with its console output beside it in ``seed_<n>.log``.
The table goes to the console, ``OUT/comparison.csv`` and ``OUT/comparison.md``; the per-class recall
against each class's training samples to ``OUT/recall_by_frequency.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lossplug.cli import RUN_DEFAULTS, ConfigError, resolve_config, shipped_configs

COLUMNS = (
    ("test/acc", "accuracy"),
    ("test/macro_f1", "macro-F1"),
    ("test/recall_many", "many-shot recall"),
    ("test/recall_medium", "medium-shot recall"),
    ("test/recall_few", "few-shot recall"),
    ("test/ece", "ECE"),
)


@dataclass
class Run:
    """One config trained with one seed."""

    label: str
    config: str
    seed: int
    folder: Path
    metrics: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def log(self) -> Path:
        return self.folder.with_suffix(".log")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossplug compare",
        description="Train each config for each seed on the same data and model, and compare their test metrics "
        "(mean ± std over seeds). Any other --key=value is passed to every run, as to `lossplug fit` "
        "(--model my_pkg.MyModel --data my_pkg.MyData, --trainer.max_epochs=10, ...).",
        epilog=f"Shipped configs: {', '.join(shipped_configs())}.",
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="shipped config names or config files")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config: 0, 1, ... (default 3)")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="output folder (default ./compare)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    return parser


def plan(args: Sequence[str]) -> tuple[list[Run], list[str], int, Path]:
    """The runs that ``args`` ask for, the overrides for every run, the jobs and the output folder.

    Raises:
        ConfigError: An unknown config, a bad count, or an override that is not ``--key=value``.
    """
    parser = _parser()
    options, overrides = parser.parse_known_args(list(args))
    if options.seeds < 1:
        raise ConfigError(f"Expected argument `--seeds` to be an integer >= 1, but got {options.seeds}.")
    if options.jobs < 1:
        raise ConfigError(f"Expected argument `--jobs` to be an integer >= 1, but got {options.jobs}.")
    takes_value = False
    for token in overrides:  # `--key=value`, or `--key value`; a bare word anywhere else is a misplaced config
        if token.startswith("--"):
            takes_value = "=" not in token
        elif takes_value:
            takes_value = False
        else:
            raise ConfigError(
                f"Expected the configs before the --key=value overrides, but got {token!r} among the overrides."
            )
    runs: list[Run] = []
    labels: dict[str, int] = {}
    out = options.out.resolve()
    for config in options.configs:
        path = resolve_config(config)  # a config name that is neither shipped nor a file is an error here
        label = Path(config).stem
        labels[label] = labels.get(label, 0) + 1
        if labels[label] > 1:
            label = f"{label}_{labels[label]}"
        runs += [Run(label, path, seed, out / "runs" / label / f"seed_{seed}") for seed in range(options.seeds)]
    return runs, overrides, options.jobs, out


def _command(run: Run, overrides: list[str]) -> list[str]:
    # the default config's loggers, each writing into this run's folder
    folder = {"save_dir": str(run.folder.parent.parent), "name": run.label, "version": run.folder.name}
    defaults = yaml.safe_load(RUN_DEFAULTS.read_text())["trainer"]["logger"]
    loggers = [{**logger, "init_args": {**logger.get("init_args", {}), **folder}} for logger in defaults]
    return [
        sys.executable, "-m", "lossplug", "fit",
        "--config", run.config,
        f"--seed_everything={run.seed}",
        "--trainer.enable_progress_bar=false",
        *overrides,
        "--config", yaml.safe_dump({"trainer": {"logger": loggers}}),  # last: every run in its own folder
    ]  # fmt: skip


def _train(run: Run, overrides: list[str]) -> Run:
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "w") as log:
        finished = subprocess.run(_command(run, overrides), stdout=log, stderr=subprocess.STDOUT, check=False)
    report = run.folder / "test_metrics.json"
    if finished.returncode != 0:
        said = [line for line in run.log.read_text().splitlines() if line.startswith("error:")]
        run.error = said[0] if said else f"exit {finished.returncode}"
    elif not report.exists():
        run.error = "no test metrics: the model needs a test_step, and the data module a test_dataloader"
    else:
        content = json.loads(report.read_text())
        run.metrics, run.class_names = content["metrics"], content["class_names"]
        run.class_counts = content.get("class_counts") or []
    return run


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """Per config: the number of finished runs and each column's mean and standard deviation over seeds."""
    rows = []
    for label in dict.fromkeys(run.label for run in runs):
        finished = [run for run in runs if run.label == label and run.error is None]
        row: dict[str, Any] = {"config": label, "seeds": len(finished)}
        for key, name in COLUMNS:
            values = [run.metrics[key] for run in finished if key in run.metrics and not math.isnan(run.metrics[key])]
            row[f"{name} mean"] = statistics.fmean(values) if values else math.nan
            row[f"{name} std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], name: str) -> str:
    mean, std = row[f"{name} mean"], row[f"{name} std"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def write_tables(rows: list[dict[str, Any]], out: Path) -> Table:
    """``comparison.csv`` and ``comparison.md`` in ``out``; returns the rich table."""
    with open(out / "comparison.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    names = [name for _, name in COLUMNS]
    lines = ["| config | seeds | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    lines += [f"| {row['config']} | {row['seeds']} | " + " | ".join(_cell(row, name) for name in names) + " |" for row in rows]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    table = Table(title="Test metrics, mean ± std over seeds", title_justify="left")
    table.add_column("config")
    table.add_column("seeds", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row["config"], str(row["seeds"]), *(_cell(row, name) for name in names))
    return table


def draw_recall(runs: list[Run], path: Path) -> bool:
    """Each config's per-class test recall (mean over seeds) against the class's training samples."""
    finished = [run for run in runs if run.error is None and run.class_counts]
    if not finished:
        return False
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    names, counts = finished[0].class_names, finished[0].class_counts
    order = sorted(range(len(counts)), key=lambda index: counts[index])
    labels = list(dict.fromkeys(run.label for run in finished))
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    colours = [palette(index) for index in range(palette.N)]
    for number, label in enumerate(labels):
        of_label = [run for run in finished if run.label == label]
        recall = [
            statistics.fmean(run.metrics.get(f"test/recall/{names[index]}", math.nan) for run in of_label) for index in order
        ]
        ax.plot(
            [counts[index] for index in order],
            recall,
            marker="osD^v<>ph*"[number % 10],
            color=colours[number % len(colours)],
            linewidth=1.6,
            label=f"{label} ({len(of_label)} seeds)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training samples of the class (log scale)")
    ax.set_ylabel("test recall of the class (mean over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-class recall by class frequency", loc="left", fontweight="bold")
    ax.grid(color="#e6e6e6")
    ax.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, facecolor="white")
    return True


def check_configs(runs: list[Run], overrides: list[str]) -> bool:
    """Parse each config with the overrides, as its runs will (no class is built): a mistake shows once,
    in one line, before any run starts. False when one fails."""
    from contextlib import redirect_stdout

    from lossplug.cli import build_cli

    for config in dict.fromkeys(run.config for run in runs):
        try:
            with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
                build_cli(["fit", "--config", config, *overrides, "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code not in (0, None):
                return False
    return True


def compare(args: Sequence[str]) -> int:
    """Run ``lossplug compare`` on ``args``; the exit status (1 when a run failed, 2 for a mistake)."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        runs, overrides, jobs, out = plan(args)
    except ConfigError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    if not check_configs(runs, overrides):
        return 2
    if (out / "runs").exists():
        console.print(f"{out} holds earlier runs: runs of the same config and seed are replaced.", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        task = progress.add_task(f"training {len(runs)} runs", total=len(runs))
        for run in pool.map(lambda run: _train(run, overrides), runs):
            note = f"[red]failed ({run.error}): see {run.log}[/]" if run.error else "done"
            progress.console.print(f"{run.label} seed {run.seed}: {note}", highlight=False)
            progress.advance(task)
    rows = summarize(runs)
    # a table this wide wraps in a pipe's default 80 columns
    wide = Console(width=None if sys.stdout.isatty() else 160)
    wide.print(write_tables(rows, out))
    drawn = draw_recall(runs, out / "recall_by_frequency.png")
    wide.print(
        f"tables: {out / 'comparison.csv'}, {out / 'comparison.md'}"
        + (f"; plot: {out / 'recall_by_frequency.png'}" if drawn else "")
        + f"; runs: {out / 'runs'}",
        highlight=False,
    )
    return 1 if any(run.error for run in runs) else 0


def main(args: Sequence[str] | None = None) -> None:
    """``lossplug compare``."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(compare(sys.argv[2:] if args is None else args))
