"""lossplug benchmark: every loss against its plain-loss floor and a plain autograd formula.

Usage::

    python benchmarks/bench.py            # full run (about 25 minutes on 2 CPU cores, 8 of them the diagnostics)
    python benchmarks/bench.py --quick    # 1 round, no memory pass, no torch.compile rows, 2 pairs of fits (about 5 minutes)
    python benchmarks/bench.py --only binary_focal softmax_focal --rounds 5
    python benchmarks/bench.py --device cuda --rounds 2 --only binary_focal softmax_focal arcface   # on a GPU, in one process

What is measured, for every row: one forward + backward of the loss with respect to its inputs
(and parameters: ArcFace weights, centers), ``torch.set_num_threads(2)``, fresh leaf tensors each
call, after warm-up calls.

* Every row runs in its own subprocess, so no row sees another's allocator or cache state. The
  list of rows (a case's floor, lossplug, the plain formula, ... one after the other) is run
  ``--rounds`` times, every other round backwards, so slow phases of a shared machine hit every
  row alike. Each row is called at least ``--repeats`` times and for at least one second per
  round; the median is over all timed calls of all rounds.
* ``x floor`` divides the row's median by the floor's (the plain torch loss the row modifies);
  ``x plain`` by the plain autograd implementation of the same formula written out below.
* Peak extra memory (a separate pass, one process per row): the growth of the process's peak
  resident set (``VmHWM`` in ``/proc/self/status``, reset by writing ``5`` to
  ``/proc/self/clear_refs``) during one call after a warm-up call, from the resident set just
  before it. It includes the returned gradients. ``tracemalloc`` does not see torch's
  allocations and a CPU has no allocator statistics, so this pass runs with glibc's mmap
  threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): every tensor of 64 KiB or more is
  mapped when allocated and unmapped when freed, and the resident set follows the live tensors.
  (The timing passes run with glibc's defaults.) ``n/a`` where ``clear_refs`` cannot be written.
* The ``torch.compile`` rows are compiled with ``fullgraph=True`` (a graph break fails them); the
  number of graph breaks of ``binary_focal_loss`` under ``torch._dynamo.explain`` is printed too.

The diagnostics lines time ``trainer.fit`` of ``lossplug fit`` (``lossplug.cli.build_cli``: its
default config, loggers and last-epoch checkpointing, with the progress bar and the default's other
callbacks off) with both diagnostics callbacks (``PerClassLossMonitor``, ``HardnessHistogram``, set as
the default config sets them) and without them, in six settings: the default demo (steps of about
5 ms, 6 per epoch) and a wider model (``--model.hidden_dim=16384``, 10 epochs; steps of 20-30 ms),
each with the demo's 10 classes, with 1,000 (the demo's model and loss on synthetic data of 1,000
classes, long-tailed as the demo's and with at least one training sample per class: about 100 steps
per epoch; 5 and 3 epochs), and with 10 classes and the CSV logger only (no TensorBoard: its writer
thread checksums every event in pure Python, and the time it takes from the hooks shows as the
difference).
One child process per setting runs a warm-up pair of fits, then ``--fit-pairs`` pairs (on, off;
every other pair the other way round).

* Hooks: the wall time spent inside the callbacks' own methods (their Lightning hooks, ``setup``,
  ``teardown``, ``state_dict`` and the per-step ``observe_loss``; a method calling another counted
  once), timed inside each fit with them, divided by that fit's wall time. Median and range over the
  fits; and the part of it spent in ``TensorBoardLogger.log_metrics`` (the Lightning API the scalars go
  through). The final PNG is drawn on a background thread that outlives the hooks; its cost shows
  only end to end.
* End to end: the median fit with them over the median fit without, and the range of the pairs'
  ratios. The noise band is the spread of the fits without them (slowest over fastest): a ratio
  inside it is not resolved.

They are skipped, with a message, when ``lossplug.callbacks`` or ``lossplug.cli`` cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THREADS = 2
# calls per row and round: at least ``--repeats`` and MIN_SECONDS (a fast row is called more often, for a
# steadier median), at most MAX_CALLS, and only 2 once MAX_SECONDS are spent (the slowest "others" rows)
MIN_SECONDS, MAX_SECONDS, MAX_CALLS, SLOW_SECONDS = 1.0, 4.0, 50, 1.0
ROOT = Path(__file__).resolve().parent.parent


# --- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    """A benchmark case: how to build its inputs and the implementations (rows) it compares."""

    shape: str
    setup: Callable[[], dict[str, Any]]
    rows: dict[str, Callable[[dict[str, Any]], Any]]  # row name -> one forward + backward
    floor: str
    plain: str | None
    compiled: set[str] = field(default_factory=set)  # rows that use torch.compile (skipped by --quick)


def _leaf(tensor: Any) -> Any:
    return tensor.detach().requires_grad_()


def _binary_focal_case() -> Case:
    import torch
    import torch.nn.functional as F

    from lossplug.functional import binary_focal_loss
    from lossplug.losses import BinaryFocalLoss

    def setup() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(200_000, 80, generator=generator) * 2
        target = (torch.rand(200_000, 80, generator=generator) < 0.02).float()
        return {"x": logits, "t": target, "module": BinaryFocalLoss(gamma=2.0, alpha=0.25)}

    def torchvision_formula(x: Any, t: Any, gamma: float = 2.0, alpha: float = 0.25) -> Any:
        # torchvision.ops.sigmoid_focal_loss, written out
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * ((1 - p_t) ** gamma)
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        return (alpha_t * loss).mean()

    compiled_focal = torch.compile(lambda x, t: binary_focal_loss(x, t, 2.0, 0.25), fullgraph=True)
    compiled_plain = torch.compile(torchvision_formula, fullgraph=True)

    return Case(
        shape="logits 200,000 x 80, gamma 2, alpha 0.25",
        setup=setup,
        rows={
            "F.binary_cross_entropy_with_logits": lambda s: F.binary_cross_entropy_with_logits(
                _leaf(s["x"]), s["t"]
            ).backward(),
            "lossplug binary_focal_loss": lambda s: binary_focal_loss(_leaf(s["x"]), s["t"], 2.0, 0.25).backward(),
            "lossplug BinaryFocalLoss (module)": lambda s: s["module"](_leaf(s["x"]), s["t"]).backward(),
            "plain formula (torchvision)": lambda s: torchvision_formula(_leaf(s["x"]), s["t"]).backward(),
            "lossplug binary_focal_loss, torch.compile": lambda s: compiled_focal(_leaf(s["x"]), s["t"]).backward(),
            "plain formula, torch.compile": lambda s: compiled_plain(_leaf(s["x"]), s["t"]).backward(),
        },
        floor="F.binary_cross_entropy_with_logits",
        plain="plain formula (torchvision)",
        compiled={"lossplug binary_focal_loss, torch.compile", "plain formula, torch.compile"},
    )


def _softmax_focal_case() -> Case:
    import torch
    import torch.nn.functional as F

    from lossplug.functional import focal_loss
    from lossplug.losses import FocalLoss

    def setup() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(4096, 1000, generator=generator) * 3,
            "y": torch.randint(0, 1000, (4096,), generator=generator),
            "module": FocalLoss(gamma=2.0),
        }

    def plain_formula(x: Any, y: Any, gamma: float = 2.0) -> Any:
        log_p_t = x.log_softmax(dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        return (-((1 - log_p_t.exp()) ** gamma) * log_p_t).mean()

    return Case(
        shape="4,096 x 1,000, gamma 2",
        setup=setup,
        rows={
            "F.cross_entropy": lambda s: F.cross_entropy(_leaf(s["x"]), s["y"]).backward(),
            "lossplug focal_loss": lambda s: focal_loss(_leaf(s["x"]), s["y"], 2.0).backward(),
            "lossplug FocalLoss (module)": lambda s: s["module"](_leaf(s["x"]), s["y"]).backward(),
            "plain formula (log_softmax, gather)": lambda s: plain_formula(_leaf(s["x"]), s["y"]).backward(),
        },
        floor="F.cross_entropy",
        plain="plain formula (log_softmax, gather)",
    )


def _arcface_case() -> Case:
    import torch
    import torch.nn.functional as F

    from lossplug.functional import arcface_loss

    scale, margin = 64.0, 0.5

    def setup() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        return {
            "e": torch.randn(1024, 512, generator=generator),
            "w": torch.randn(10_000, 512, generator=generator),
            "y": torch.randint(0, 10_000, (1024,), generator=generator),
        }

    def floor(e: Any, w: Any, y: Any) -> Any:
        return F.cross_entropy(scale * F.linear(F.normalize(e), F.normalize(w)), y)

    def plain_formula(e: Any, w: Any, y: Any) -> Any:
        # the common exact-autograd implementation (insightface style), on the full cosine matrix
        cosine = F.linear(F.normalize(e), F.normalize(w))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
        phi = cosine * math.cos(margin) - sine * math.sin(margin)
        phi = torch.where(cosine > -math.cos(margin), phi, cosine - margin * math.sin(margin))
        one_hot = torch.zeros_like(cosine).scatter_(1, y.unsqueeze(1), 1.0)
        return F.cross_entropy(scale * (one_hot * phi + (1.0 - one_hot) * cosine), y)

    def run(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
        return lambda s: fn(_leaf(s["e"]), _leaf(s["w"]), s["y"]).backward()

    return Case(
        shape="1,024 x 512 embeddings, 10,000 classes, s 64, m 0.5",
        setup=setup,
        rows={
            "normalized linear + F.cross_entropy": run(floor),
            "lossplug arcface_loss": run(lambda e, w, y: arcface_loss(e, y, w, scale, margin)),
            "plain formula (sqrt, one-hot)": run(plain_formula),
        },
        floor="normalized linear + F.cross_entropy",
        plain="plain formula (sqrt, one-hot)",
    )


def _center_case(num_classes: int) -> Case:
    import torch

    from lossplug.functional import center_loss

    def setup() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        return {
            "f": torch.randn(4096, 512, generator=generator),
            "c": torch.randn(num_classes, 512, generator=generator),
            "y": torch.randint(0, num_classes, (4096,), generator=generator),
        }

    def gather_floor(f: Any, c: Any, y: Any) -> Any:
        return (0.5 * (f - c.index_select(0, y)).pow(2).sum(dim=1)).mean()

    def distance_matrix(f: Any, c: Any, y: Any) -> Any:
        # the widespread implementation: the full N x C distance matrix, masked to the target class
        batch = f.shape[0]
        distances = (
            f.pow(2).sum(dim=1, keepdim=True).expand(batch, num_classes)
            + c.pow(2).sum(dim=1, keepdim=True).expand(num_classes, batch).t()
        )
        distances = distances.addmm(f, c.t(), beta=1, alpha=-2)
        mask = y.unsqueeze(1).eq(torch.arange(num_classes, device=y.device).unsqueeze(0))
        return 0.5 * (distances * mask).clamp(min=1e-12, max=1e12).sum() / batch

    def run(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
        return lambda s: fn(_leaf(s["f"]), _leaf(s["c"]), s["y"]).backward()

    return Case(
        shape=f"4,096 x 512, C = {num_classes:,}",
        setup=setup,
        rows={
            "gather floor (index_select, autograd)": run(gather_floor),
            "lossplug center_loss": run(lambda f, c, y: center_loss(f, y, c)),
            "distance matrix (N x C)": run(distance_matrix),
        },
        floor="gather floor (index_select, autograd)",
        plain="gather floor (index_select, autograd)",
    )


CASES: dict[str, Callable[[], Case]] = {
    "binary_focal": _binary_focal_case,
    "softmax_focal": _softmax_focal_case,
    "arcface": _arcface_case,
    "center_100": lambda: _center_case(100),
    "center_1000": lambda: _center_case(1000),
    "center_10000": lambda: _center_case(10_000),
}


# --- one row, in its own process ---------------------------------------------------------------------


def _rss_mib() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def _peak_extra_mib(call: Callable[[], Any]) -> float | None:
    """Peak resident memory above the starting level during ``call``; None where it cannot be reset."""
    try:
        before = _rss_mib()["VmRSS"]
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
        call()
        return max(0.0, _rss_mib()["VmHWM"] - before)
    except (OSError, KeyError):
        return None


def _peak_extra_cuda_mib(call: Callable[[], Any]) -> float:
    """Peak CUDA memory allocated above the starting level during ``call`` (the caching allocator's count)."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def run_row(case_name: str, row: str, repeats: int, warmup: int, memory: bool, device: str = "cpu") -> dict[str, Any]:
    """Time ``repeats`` calls of one row after ``warmup`` calls; or, with ``memory``, measure its peak."""
    import torch

    torch.set_num_threads(THREADS)
    case = CASES[case_name]()
    state = {name: value.to(device) if hasattr(value, "to") else value for name, value in case.setup().items()}
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None

    def call() -> None:
        case.rows[row](state)
        synchronize()  # a CUDA call returns before its kernels end

    for _ in range(warmup):
        start = time.perf_counter()
        call()
        if time.perf_counter() - start > SLOW_SECONDS:  # one warm-up call is enough for a slow row
            break
    if memory:
        result: dict[str, Any] = {"peak_mib": _peak_extra_cuda_mib(call) if device == "cuda" else _peak_extra_mib(call)}
        if row in case.compiled and row.startswith("lossplug"):
            result["graph_breaks"] = _graph_breaks(state)
        return result
    times: list[float] = []
    while len(times) < MAX_CALLS:
        if len(times) >= repeats and sum(times) >= MIN_SECONDS:
            break
        if len(times) >= 2 and sum(times) >= MAX_SECONDS:  # the slowest "others" rows
            break
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"times": times}


def _graph_breaks(state: dict[str, Any]) -> int:
    """Graph breaks of ``binary_focal_loss`` under ``torch._dynamo.explain`` (the row itself is compiled
    with ``fullgraph=True``, so a break would fail it)."""
    import torch

    from lossplug.functional import binary_focal_loss

    torch._dynamo.reset()
    x = state["x"][:1000].detach().requires_grad_()
    explanation = torch._dynamo.explain(lambda x, t: binary_focal_loss(x, t, 2.0, 0.25))(x, state["t"][:1000])
    return int(explanation.graph_break_count)


# --- the diagnostics overhead ------------------------------------------------------------------------

DIAGNOSTICS = ("lossplug.callbacks.PerClassLossMonitor", "lossplug.callbacks.HardnessHistogram")


def diagnostics_available() -> str | None:
    """None when ``lossplug fit`` and the callbacks can be imported, else why not."""
    try:
        import lossplug.callbacks
        import lossplug.cli
    except Exception as error:  # an unfinished module may fail in any way
        return f"{type(error).__name__}: {error}"
    missing = [name for name in DIAGNOSTICS if not hasattr(lossplug.callbacks, name.rsplit(".", 1)[1])]
    return f"missing {missing}" if missing else None


WIDE = ["--model.hidden_dim=16384", "--trainer.max_epochs=10"]
CSV_ONLY = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=."]
FIT_SETTINGS: dict[str, tuple[list[str], int]] = {
    "default": ([], 10),
    "default, 1,000 classes": (["--trainer.max_epochs=5"], 1000),
    "default, CSV logger only": (CSV_ONLY, 10),
    "20 ms steps": (WIDE, 10),
    "20 ms steps, 1,000 classes": ([*WIDE, "--trainer.max_epochs=3"], 1000),
    "20 ms steps, CSV logger only": ([*WIDE, *CSV_ONLY], 10),
}
"""Each setting: extra `lossplug fit` arguments, and the number of classes (1,000: fewer epochs, of 100 steps)."""
TARGETS = {"default": 0.10, "20 ms steps": 0.02}
"""The most the hooks may take of trainer.fit, per setting (its part before the comma)."""


def _configured_diagnostics() -> list[str]:
    """The two callbacks as the default config sets them (its ``init_args``), as ``lossplug fit`` arguments."""
    import yaml

    from lossplug.cli import RUN_DEFAULTS

    callbacks = yaml.safe_load(RUN_DEFAULTS.read_text())["trainer"]["callbacks"]
    chosen = [callback for callback in callbacks if callback["class_path"] in DIAGNOSTICS]
    return [f"--trainer.callbacks+={json.dumps(callback)}" for callback in chosen]


def _synthetic_data(num_classes: int) -> Any:
    """The demo's data made ``num_classes``-class: 64 features (Gaussian blobs), long-tailed as the demo
    (class ``k`` has ``max(1, round(20 * 0.05 ** (k / (C - 1))))`` training samples: at least one, so that
    the default loss's class-count alpha is defined), one evaluation sample per class, batches of 64."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class SyntheticData(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.num_classes, self.class_names = num_classes, [str(index) for index in range(num_classes)]
            centres = torch.randn(num_classes, 64, generator=generator)
            self.class_counts = (20 * 0.05 ** (torch.arange(num_classes) / (num_classes - 1))).round().clamp(min=1).long()
            self.splits = {}
            for split, labels in (("train", torch.arange(num_classes).repeat_interleave(self.class_counts)), ("val", torch.arange(num_classes))):
                self.splits[split] = TensorDataset(centres[labels] + 0.5 * torch.randn(len(labels), 64, generator=generator), labels)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.splits["train"], batch_size=64, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.splits["val"], batch_size=64)

    return SyntheticData()


def run_fits(setting: str, pairs: int, epochs: int | None) -> dict[str, Any]:
    """Time ``trainer.fit`` of ``lossplug fit`` with and without the diagnostics, in pairs, in this process,
    and the time inside the callbacks' methods in each fit with them."""
    import contextlib
    import gc
    import io
    import logging
    import warnings

    import torch

    from lossplug.cli import build_cli
    from lossplug.losses import FocalLoss

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    extra, classes = FIT_SETTINGS[setting]
    # the default's checkpointing (the latest epoch as last.ckpt), without its other callbacks
    checkpoint = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_top_k=0", "--trainer.callbacks.save_last=true"]
    timer = _HookTimer()

    def fit(diagnostics: bool) -> tuple[float, tuple[float, float], Any]:
        with tempfile.TemporaryDirectory() as directory, contextlib.redirect_stdout(io.StringIO()):
            os.chdir(directory)  # the default config logs under the working directory
            args = ["--trainer.enable_progress_bar=false", *extra, "--trainer.callbacks=[]", *checkpoint]
            if epochs is not None:
                args.append(f"--trainer.max_epochs={epochs}")
            if diagnostics:
                args += _configured_diagnostics()
            cli = build_cli(args=args, run=False)
            model, data = cli.model, cli.datamodule
            if classes != 10:  # the demo's model and loss, on data with more classes
                data = _synthetic_data(classes)
                loss = FocalLoss(gamma=2.0, alpha="effective_number")
                model = type(model)(loss, classes, hidden_dim=model.hparams["hidden_dim"], class_names=data.class_names)
            gc.collect()  # a full collection takes 0.3-0.4 s here; left to chance it would land in some fits
            timer.seconds = timer.tensorboard_seconds = 0.0
            start = time.perf_counter()
            cli.trainer.fit(model, datamodule=data)
            elapsed, inside = time.perf_counter() - start, (timer.seconds, timer.tensorboard_seconds)
            for callback in cli.trainer.callbacks:
                getattr(callback, "wait_for_plot", lambda: None)()  # the PNG of the last run, before the next
            os.chdir(ROOT)
        return elapsed, inside, cli.trainer

    fit(False)
    fit(True)  # warm-up: imports, first-call costs
    times: dict[str, list[float]] = {"on": [], "off": []}
    shares: list[float] = []
    tensorboard: list[float] = []
    trainer: Any = None
    for pair in range(pairs):
        for diagnostics in (True, False) if pair % 2 == 0 else (False, True):
            elapsed, (inside, in_tensorboard), trainer = fit(diagnostics)
            times["on" if diagnostics else "off"].append(elapsed)
            if diagnostics:
                shares.append(inside / elapsed)
                tensorboard.append(in_tensorboard / elapsed)
    steps = int(trainer.global_step)
    return {
        "times": times,
        "shares": shares,
        "tensorboard": tensorboard,
        "step_ms": 1000 * statistics.median(times["off"]) / max(1, steps),
        "epochs": int(trainer.current_epoch),
        "classes": classes,
    }


class _HookTimer:
    """Wall time inside the diagnostics callbacks' own methods; installed on their classes for the process."""

    def __init__(self) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        from lossplug.callbacks import HardnessHistogram, LossDiagnostics, PerClassLossMonitor

        self.seconds = self.tensorboard_seconds = 0.0
        self._depth = 0
        names = ("setup", "teardown", "observe_loss", "state_dict", "load_state_dict")
        for cls in (LossDiagnostics, PerClassLossMonitor, HardnessHistogram):
            for name, method in list(vars(cls).items()):
                if callable(method) and (name.startswith("on_") or name in names):
                    setattr(cls, name, self._timed(method))
        log_metrics = TensorBoardLogger.log_metrics

        def timed_log_metrics(logger: Any, *args: Any, **kwargs: Any) -> Any:
            """TensorBoard's share of the hooks: its ``log_metrics`` called from within them."""
            start = time.perf_counter()
            try:
                return log_metrics(logger, *args, **kwargs)
            finally:
                if self._depth:
                    self.tensorboard_seconds += time.perf_counter() - start

        TensorBoardLogger.log_metrics = timed_log_metrics  # type: ignore[method-assign]

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # a subclass's hook calling its base's: counted once
                return method(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self._depth -= 1

        return wrapper


def _subprocess(args: list[str], timeout: float, environment: dict[str, str] | None = None) -> dict[str, Any] | str:
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(environment or {}),
    }
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "timed out"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr or done.stdout).strip().splitlines()
    return tail[-1] if tail else f"exit status {done.returncode}"


def _format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


#: For the memory runs only: a fixed glibc mmap threshold, so that every tensor of 64 KiB or more is
#: mapped on allocation and unmapped when freed (the resident set follows the live tensors); by
#: default glibc raises the threshold after the first large free and keeps later frees resident.
MEMORY_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, 3 calls per row, no memory or compile rows")
    parser.add_argument("--rounds", type=int, default=None, help="times the whole list of rows is run (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row and round (default 5)")
    parser.add_argument("--only", nargs="*", default=None, help=f"cases to run, of {list(CASES)} and diagnostics")
    parser.add_argument("--fit-pairs", type=int, default=None, help="pairs of fits per diagnostics setting (default 6)")
    parser.add_argument("--fit-epochs", type=int, default=None, help="epochs of `lossplug fit` (default: the setting's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--row", nargs=2, metavar=("CASE", "ROW"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit", choices=list(FIT_SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the loss rows run (default cpu)")
    args = parser.parse_args()

    rounds = args.rounds or (1 if args.quick else 3)
    repeats = args.repeats or (3 if args.quick else 5)
    epochs = args.fit_epochs
    pairs = args.fit_pairs or (2 if args.quick else 6)
    if args.row is not None:  # a child process: one row
        warmup = 1 if args.quick or args.memory else 2
        print(json.dumps(run_row(args.row[0], args.row[1], repeats, warmup, args.memory, args.device)))
        return
    if args.fit is not None:
        print(json.dumps(run_fits(args.fit, pairs, epochs)))
        return

    selected = args.only if args.only is not None else [*CASES, "diagnostics"]
    rows: list[tuple[str, str]] = []
    for case_name in (name for name in CASES if name in selected):
        case = CASES[case_name]()
        rows += [(case_name, row) for row in case.rows if not (args.quick and row in case.compiled)]
    with_diagnostics = "diagnostics" in selected
    why_not = diagnostics_available() if with_diagnostics else None
    child = ["--quick"] if args.quick else []

    def measure(case_name: str, row: str, memory: bool) -> dict[str, Any] | str:
        """One row's timings (or peak memory): on the CPU in a process of its own; on CUDA in this one, whose
        allocator statistics are exact per row and where a process per row would cost more than the rows."""
        if args.device == "cuda":
            try:
                return run_row(case_name, row, repeats, 1 if args.quick or memory else 2, memory, "cuda")
            except Exception as error:  # a failed row is reported in its table cell
                return f"{type(error).__name__}: {error}"
        timeout = 900 if row in CASES[case_name]().compiled else 300
        if memory:
            return _subprocess(["--row", case_name, row, "--memory"], timeout, MEMORY_ENVIRONMENT)
        return _subprocess(["--row", case_name, row, "--repeats", str(repeats), *child], timeout)

    where = f"{THREADS} threads" if args.device == "cpu" else "CUDA"
    print(f"lossplug benchmark: {rounds} round(s) x {repeats} timed calls per row, {where}", flush=True)
    started = time.perf_counter()
    memory: dict[tuple[str, str], dict[str, Any] | str] = {}
    if not args.quick:
        for case_name, row in rows:
            memory[(case_name, row)] = measure(case_name, row, memory=True)
        print(f"  memory pass done ({time.perf_counter() - started:.0f} s)", flush=True)
    results: dict[tuple[str, str], list[dict[str, Any] | str]] = {row: [] for row in rows}
    fits: dict[str, dict[str, Any] | str] = {}
    for round_index in range(rounds):
        # every other round runs the rows backwards, so a drift in machine load hits both ends alike
        for case_name, row in rows if round_index % 2 == 0 else rows[::-1]:
            results[(case_name, row)].append(measure(case_name, row, memory=False))
        print(f"  round {round_index + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    if with_diagnostics and why_not is None:
        for setting in FIT_SETTINGS:
            arguments = ["--fit", setting, f"--fit-pairs={pairs}", *([f"--fit-epochs={epochs}"] if epochs else [])]
            fits[setting] = _subprocess(arguments, 1800)
            print(f"  diagnostics, {setting}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    if rows:
        print()
        print(_table(rows, results, memory))
    if with_diagnostics:
        print()
        print(_diagnostics_lines(fits, why_not))
    if args.json is not None:
        raw = {
            f"{case} | {row}": {"time": value, "memory": memory.get((case, row))}
            for (case, row), value in results.items()
        }
        args.json.write_text(json.dumps({"rows": raw, "fit": fits}, indent=1))


def _median(runs: list[dict[str, Any] | str]) -> float | None:
    times = [t for run in runs if isinstance(run, dict) for t in run["times"]]
    return statistics.median(times) if times else None


def _table(
    rows: list[tuple[str, str]],
    results: dict[tuple[str, str], list[dict[str, Any] | str]],
    memory: dict[tuple[str, str], dict[str, Any] | str],
) -> str:
    lines = [
        "| case | shape | implementation | median ms | peak extra MiB | x floor | x plain |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    cases = {name: CASES[name]() for name in dict.fromkeys(case for case, _ in rows)}
    for case_name, row in rows:
        case = cases[case_name]
        runs = results[(case_name, row)]
        median = _median(runs)
        if median is None:
            errors = [run for run in runs if isinstance(run, str)]
            lines.append(f"| {case_name} | {case.shape} | {row} | failed: {errors[0] if errors else '?'} | | | |")
            continue
        measured = memory.get((case_name, row))
        if isinstance(measured, dict):
            peak = "n/a" if measured["peak_mib"] is None else f"{measured['peak_mib']:.0f}"
        else:
            peak = "-" if measured is None else f"failed: {measured}"
        floor = _median(results.get((case_name, case.floor), []))
        plain = _median(results.get((case_name, case.plain), [])) if case.plain else None
        ratio_floor = f"{median / floor:.2f}" if floor else "-"
        ratio_plain = f"{median / plain:.2f}" if plain else "-"
        name = row
        if isinstance(measured, dict) and "graph_breaks" in measured:
            name = f"{row} ({measured['graph_breaks']} graph breaks)"
        lines.append(
            f"| {case_name} | {case.shape} | {name} | {_format_ms(median)} | {peak} | {ratio_floor} | {ratio_plain} |"
        )
    return "\n".join(lines)


def _diagnostics_lines(fits: dict[str, dict[str, Any] | str], why_not: str | None) -> str:
    if why_not is not None:
        return f"diagnostics overhead: skipped, lossplug.callbacks / lossplug.cli not importable ({why_not})"
    lines = []
    for setting, run in fits.items():
        if isinstance(run, str):
            lines.append(f"diagnostics overhead, {setting}: failed ({run})")
            continue
        on, off, shares = run["times"]["on"], run["times"]["off"], run["shares"]
        target = TARGETS[setting.split(",")[0]]
        share = statistics.median(shares)
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        lines.append(
            f"diagnostics, {setting} ({run['classes']:,} classes, {run['epochs']} epochs, {run['step_ms']:.1f} ms of "
            f"fit per training step, {len(on)} pairs):\n"
            f"  hooks {share:.2%} of trainer.fit (range {min(shares):.2%}-{max(shares):.2%}; target <= {target:.0%}: "
            f"{'met' if max(shares) <= target else 'NOT met' if share > target else 'met by the median'}), of which "
            f"TensorBoardLogger.log_metrics {statistics.median(run['tensorboard']):.2%}\n"
            f"  end to end {statistics.median(on) / statistics.median(off):.3f}x (medians {statistics.median(on):.2f} s "
            f"vs {statistics.median(off):.2f} s; pairs {min(ratios):.3f}-{max(ratios):.3f}x); noise band of the fits "
            f"without them {max(off) / min(off):.3f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
