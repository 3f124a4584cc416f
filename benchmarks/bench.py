"""lossplug benchmark: every loss against its plain-loss floor and a plain autograd formula.

Usage::

    python benchmarks/bench.py            # full run (about 8-9 minutes on 2 CPU cores, 2 of them the diagnostics)
    python benchmarks/bench.py --quick    # 1 round, no memory pass, no torch.compile rows (about 1.5 minutes)
    python benchmarks/bench.py --only binary_focal softmax_focal --rounds 5

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

The diagnostics lines time ``trainer.fit`` of ``lossplug fit`` (``lossplug.cli``: its default
config and checkpointing, with the progress bar off: the default's rich progress bar adds 4-7%
to a fit even when the output is not a terminal, and leaving it out gives the larger ratio) with
both diagnostics callbacks (``PerClassLossMonitor``, ``HardnessHistogram``) against without them:
once at the default (steps of about 6 ms), once with a wider model (``--model.hidden_dim=16384``,
10 epochs; steps of 20 ms or more). One child process per setting runs the fits in pairs (on, off;
every other pair the other way round) after a warm-up pair.

* By the account (first line): what the callbacks add, each part timed inside the fits with them,
  as a share of those fits. Their code on the training thread: the CPU time of their hooks, their
  per-step observer and the mixin's work for them (detaching the record, naming the stage), less
  what the timers count of themselves. TensorBoard's writer thread: its CPU time on the callbacks'
  records (it computes each record's CRC-32C, in C once the callbacks have logged, and writes it,
  holding the interpreter lock, so the training thread waits for it). Lightning's hook calls: how
  many it made on the two callbacks, times what one costs (timed after the fits on a hook neither
  implements). The config: how much
  longer LightningCLI's saving of the run's config takes with the two callbacks in it (timed after
  the fits). The loss itself costs the same either way for the losses benchmarked here (focal
  loss's ``forward`` is its ``evaluate``). This is steadier than the wall clock because each part
  and the fit it is divided by are timed in the same seconds.
* By the wall clock (second line): the median over pairs of on / off, which a shared machine's
  slow phases (they last seconds, about as long as a fit) disturb least; the ratio of the medians;
  the ratio of the fastest fit of each kind. On a shared virtual machine these move by 10% or more
  from run to run and cannot resolve a few percent.
* By the training thread's CPU time (third line): the ratio of its medians, on / off. Steadier
  than the wall clock (it leaves out waits and other processes' time slices), but it counts the
  account's timers in the fits with the callbacks, and misses TensorBoard's writer thread.

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
        mask = y.unsqueeze(1).eq(torch.arange(num_classes).unsqueeze(0))
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


def run_row(case_name: str, row: str, repeats: int, warmup: int, memory: bool) -> dict[str, Any]:
    """Time ``repeats`` calls of one row after ``warmup`` calls; or, with ``memory``, measure its peak."""
    import torch

    torch.set_num_threads(THREADS)
    case = CASES[case_name]()
    state = case.setup()
    call = lambda: case.rows[row](state)  # noqa: E731
    for _ in range(warmup):
        start = time.perf_counter()
        call()
        if time.perf_counter() - start > SLOW_SECONDS:  # one warm-up call is enough for a slow row
            break
    if memory:
        result: dict[str, Any] = {"peak_mib": _peak_extra_mib(call)}
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


FIT_SETTINGS: dict[str, list[str]] = {
    "default": [],
    "20 ms steps": ["--model.hidden_dim=16384", "--trainer.max_epochs=10"],
}
"""The `lossplug fit` settings whose diagnostics overhead is measured, as extra command-line arguments."""


def run_fits(setting: str, pairs: int, epochs: int | None) -> dict[str, Any]:
    """Time ``trainer.fit`` of ``lossplug fit`` with and without the diagnostics, in pairs, in this process,
    and take the account of what the diagnostics cost inside the fits with them."""
    import contextlib
    import gc
    import io
    import logging
    import warnings

    import torch

    from lossplug.cli import build_cli

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    checkpoint = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.monitor=val/macro_f1", "--trainer.callbacks.mode=max"]

    def fit(diagnostics: bool) -> tuple[float, float, Any]:
        with tempfile.TemporaryDirectory() as directory, contextlib.redirect_stdout(io.StringIO()):
            os.chdir(directory)  # the default config logs under the working directory
            args = ["--trainer.enable_progress_bar=false", *FIT_SETTINGS[setting], "--trainer.callbacks=[]", *checkpoint]
            if epochs is not None:
                args.append(f"--trainer.max_epochs={epochs}")
            if diagnostics:
                args += [f"--trainer.callbacks+={name}" for name in DIAGNOSTICS]
            cli = build_cli(args=args, run=False)
            gc.collect()  # a full collection takes 0.3-0.4 s here; left to chance it would land in some fits
            start, start_cpu = time.perf_counter(), time.thread_time()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            elapsed, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            for callback in cli.trainer.callbacks:
                getattr(callback, "wait_for_plot", lambda: None)()  # the PNG of the last run, before the next
            os.chdir(ROOT)
        return elapsed, cpu, cli

    account = _DiagnosticsAccount()
    fit(False)
    fit(True)  # warm-up: imports, first-call costs
    times: dict[str, list[float]] = {"off": [], "on": [], "off_cpu": [], "on_cpu": []}
    parts: dict[str, list[float]] = {"inside": [], "writer": []}
    dispatches: list[int] = []
    cli: Any = None
    for pair in range(pairs):
        for diagnostics in (True, False) if pair % 2 == 0 else (False, True):
            account.reset()
            elapsed, cpu, fitted = fit(diagnostics)
            times["on" if diagnostics else "off"].append(elapsed)
            times["on_cpu" if diagnostics else "off_cpu"].append(cpu)
            if diagnostics:
                cli = fitted
                parts["inside"].append(account.inside_s() / elapsed)
                parts["writer"].append(account.writer_s / elapsed)
                dispatches.append(account.dispatches)  # priced below
    with contextlib.redirect_stdout(io.StringIO()):
        dispatch_s = _dispatch_cost(cli.trainer)
        save_config_s = _save_config_cost(cli)
    parts["dispatch"] = [calls * dispatch_s / elapsed for calls, elapsed in zip(dispatches, times["on"], strict=True)]
    parts["save_config"] = [save_config_s / elapsed for elapsed in times["on"]]
    steps = int(cli.trainer.global_step)
    step_ms = 1000 * statistics.median(times["off"]) / max(1, steps)
    return {
        "times": times,
        "parts": parts,
        "dispatch_us": 1e6 * dispatch_s,
        "save_config_ms": 1000 * save_config_s,
        "step_ms": step_ms,
        "epochs": int(cli.trainer.current_epoch),
    }


class _DiagnosticsAccount:
    """Timers, inside the fits, on what the diagnostics add to a fit; installed for the life of the process.

    * ``inside``: CPU time of the training thread in the diagnostics' own code: the callbacks' hooks,
      their per-step observer, and the mixin's work for them (detaching the record, naming the stage),
      less the timers' own cost. CPU time, not wall time: a wait for the interpreter lock there is
      TensorBoard's writer thread at work, counted next.
    * ``writer``: CPU time of TensorBoard's writer thread on the diagnostics' records (it computes each
      record's CRC-32C and writes it, holding the interpreter lock).
    * ``dispatches``: Lightning's calls of a hook on one of the two callbacks (priced by :func:`_dispatch_cost`).
    """

    def __init__(self) -> None:
        from lightning.pytorch.trainer import call

        import lossplug.mixin
        from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
        from lossplug.callbacks._base import LossStatisticsCallback

        self.cpu_s = self.writer_s = 0.0
        self.calls = self.dispatches = 0
        self._depth = 0
        for cls in (LossStatisticsCallback, PerClassLossMonitor, HardnessHistogram):
            for name, method in list(vars(cls).items()):
                if callable(method) and (name.startswith("on_") or name in ("setup", "teardown", "observe_loss")):
                    setattr(cls, name, self._timed(method))
        lossplug.mixin._detached = self._timed(lossplug.mixin._detached)  # type: ignore[assignment]
        lossplug.mixin.LossMixin._stage = self._timed(lossplug.mixin.LossMixin._stage)  # type: ignore[method-assign]
        # what the timers count of themselves per call, measured on a function that does nothing
        idle = self._timed(lambda: None)
        for _ in range(20000):
            idle()
        self.per_call_s = self.cpu_s / self.calls
        self._time_writer()
        dispatch = call._call_callback_hooks
        diagnostics = (PerClassLossMonitor, HardnessHistogram)

        def counted(trainer: Any, hook_name: str, *args: Any, monitoring_callbacks: bool | None = None, **kwargs: Any) -> None:
            if monitoring_callbacks is not True:  # True: only checkpointing and early stopping
                self.dispatches += sum(isinstance(callback, diagnostics) for callback in trainer.callbacks)
            dispatch(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)

        call._call_callback_hooks = counted  # type: ignore[assignment]
        self.reset()

    def reset(self) -> None:
        self.cpu_s = self.writer_s = 0.0
        self.calls = self.dispatches = 0

    def inside_s(self) -> float:
        return max(0.0, self.cpu_s - self.calls * self.per_call_s)

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # a subclass's hook calling its base's: counted once
                return method(*args, **kwargs)
            self._depth += 1
            start = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.cpu_s += time.thread_time() - start
                self.calls += 1
                self._depth -= 1

        return wrapper

    def _time_writer(self) -> None:
        try:
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            return
        write = RecordWriter.write

        def timed_write(writer: Any, data: bytes) -> None:
            start = time.thread_time()
            try:
                write(writer, data)
            finally:
                if b"per_class/" in data or b"hardness/" in data:  # the diagnostics' tags
                    self.writer_s += time.thread_time() - start

        RecordWriter.write = timed_write  # type: ignore[method-assign]


def _dispatch_cost(trainer: Any, calls: int = 5000) -> float:
    """Seconds Lightning spends per hook call on one diagnostics callback that does nothing in that hook.

    Its loop over the callbacks, the profiler's context and the hook's name; timed on a hook neither
    callback implements, with the two callbacks against with none, alternately.
    """
    from lightning.pytorch.trainer import call

    from lossplug.callbacks._base import LossStatisticsCallback

    ours = [callback for callback in trainer.callbacks if isinstance(callback, LossStatisticsCallback)]
    kept = trainer.callbacks

    def dispatch(callbacks: list[Any]) -> Callable[[], None]:
        def run() -> None:
            trainer.callbacks = callbacks
            for _ in range(calls):
                call._call_callback_hooks(trainer, "on_before_zero_grad", None)

        return run

    try:
        extra = _median_extra(dispatch(ours), dispatch([]))
    finally:
        trainer.callbacks = kept
    return extra / calls / len(ours)


def _save_config_cost(cli: Any, repeats: int = 7) -> float:
    """Seconds the run's config saving takes more because it holds the two callbacks, the way LightningCLI saves it."""
    import copy

    with_them = cli.config
    without = copy.deepcopy(with_them)
    without.trainer.callbacks = [callback for callback in without.trainer.callbacks if callback.class_path not in DIAGNOSTICS]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "config.yaml")

        def save(config: Any) -> Callable[[], None]:
            return lambda: cli.parser.save(config, path, skip_none=False, overwrite=True, multifile=False)

        return max(0.0, _median_extra(save(with_them), save(without), repeats))


def _median_extra(with_them: Callable[[], Any], without: Callable[[], Any], rounds: int = 7) -> float:
    """Median seconds of ``with_them`` less the median of ``without``, the two called alternately ``rounds`` times."""
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for key, run in ((True, with_them), (False, without)):
            start = time.perf_counter()
            run()
            timings[key].append(time.perf_counter() - start)
    return statistics.median(timings[True]) - statistics.median(timings[False])


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
    parser.add_argument("--fit-pairs", type=int, default=None, help="pairs of fits per diagnostics setting (default 10)")
    parser.add_argument("--fit-epochs", type=int, default=None, help="epochs of `lossplug fit` (default: the setting's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--row", nargs=2, metavar=("CASE", "ROW"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit", choices=list(FIT_SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    rounds = args.rounds or (1 if args.quick else 3)
    repeats = args.repeats or (3 if args.quick else 5)
    epochs = args.fit_epochs
    pairs = args.fit_pairs or (3 if args.quick else 10)
    if args.row is not None:  # a child process: one row
        warmup = 1 if args.quick or args.memory else 2
        print(json.dumps(run_row(args.row[0], args.row[1], repeats, warmup, args.memory)))
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

    print(f"lossplug benchmark: {rounds} round(s) x {repeats} timed calls per row, {THREADS} threads", flush=True)
    started = time.perf_counter()
    memory: dict[tuple[str, str], dict[str, Any] | str] = {}
    if not args.quick:
        for case_name, row in rows:
            timeout = 900 if row in CASES[case_name]().compiled else 300
            memory[(case_name, row)] = _subprocess(["--row", case_name, row, "--memory"], timeout, MEMORY_ENVIRONMENT)
        print(f"  memory pass done ({time.perf_counter() - started:.0f} s)", flush=True)
    results: dict[tuple[str, str], list[dict[str, Any] | str]] = {row: [] for row in rows}
    fits: dict[str, dict[str, Any] | str] = {}
    for round_index in range(rounds):
        # every other round runs the rows backwards, so a drift in machine load hits both ends alike
        for case_name, row in rows if round_index % 2 == 0 else rows[::-1]:
            timeout = 900 if row in CASES[case_name]().compiled else 300
            arguments = ["--row", case_name, row, "--repeats", str(repeats), *child]
            results[(case_name, row)].append(_subprocess(arguments, timeout))
        print(f"  round {round_index + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    if with_diagnostics and why_not is None:
        for setting in FIT_SETTINGS if not args.quick else ["default"]:
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
        on, off = run["times"]["on"], run["times"]["off"]
        cpu_on, cpu_off = statistics.median(run["times"]["on_cpu"]), statistics.median(run["times"]["off_cpu"])
        paired = statistics.median(a / b for a, b in zip(on, off, strict=True))
        shares = {name: statistics.median(values) for name, values in run["parts"].items()}
        total = sum(shares.values())
        lines.append(
            f"diagnostics overhead, {setting} (`lossplug fit`, {run['epochs']} epochs, {run['step_ms']:.1f} ms of fit per "
            f"training step, {len(on)} pairs; PerClassLossMonitor + HardnessHistogram on vs off):\n"
            f"  by the account {1 / (1 - total):.3f}x ({total:.2%} of trainer.fit with them) = their code on the "
            f"training thread {shares['inside']:.2%} + TensorBoard's writer thread on their records "
            f"{shares['writer']:.2%} + Lightning's hook calls {shares['dispatch']:.2%} ({run['dispatch_us']:.1f} us "
            f"each) + the longer config's saving {shares['save_config']:.2%} ({run['save_config_ms']:.1f} ms)\n"
            f"  by the wall clock {paired:.3f}x (median over pairs); medians {statistics.median(on):.2f} s vs "
            f"{statistics.median(off):.2f} s = {statistics.median(on) / statistics.median(off):.3f}x; fastest fits "
            f"{min(on):.2f} s vs {min(off):.2f} s = {min(on) / min(off):.3f}x\n"
            f"  by the training thread's CPU time (the account's timers included) {cpu_on / cpu_off:.3f}x; medians "
            f"{cpu_on:.2f} s vs {cpu_off:.2f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
