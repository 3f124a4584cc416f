"""The diagnostics' TensorBoard output: one event per step, and TensorBoard's record checksums in C.

Every record of a TensorBoard event file carries two masked CRC-32C checksums. TensorBoard's own
writer computes them in pure Python (``tensorboard/compat/tensorflow_stub/pywrap_tensorflow.py``),
on its writer thread, holding the interpreter lock: about 0.1 ms per KB here, 1 % of the default
``lossplug fit`` for the diagnostics' 2.3 KB per epoch. tensorboardX uses a C CRC-32C when one is
installed; TensorBoard's writer has no such switch. :func:`use_c_crc32c` gives it google-crc32c's C
implementation, which returns the same checksums, 500 times faster.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from lightning.pytorch.loggers import TensorBoardLogger


class Histogram(NamedTuple):
    """A histogram for TensorBoard, as bins: ``len(edges) == len(weights) + 1``."""

    tag: str
    edges: Sequence[float]
    weights: Sequence[float]


class LoggedValues(NamedTuple):
    """What one callback logs at one step: scalars, and histograms (TensorBoard only)."""

    step: int
    metrics: dict[str, float]
    histograms: list[Histogram]


def log_tensorboard(logger: TensorBoardLogger, logged: Sequence[LoggedValues]) -> None:
    """Write ``logged`` to ``logger``: one event (one record) per step, with every value logged at it.

    ``logger.log_metrics`` writes an event per scalar; each takes about 0.1 ms to hand to the
    writer's thread here, and an epoch's scalars would cost as much as a training step of the
    default run.
    """
    writer = logger.experiment
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:  # not torch's SummaryWriter: its public calls, one event each
        for values in logged:
            logger.log_metrics(values.metrics, step=values.step)
            for histogram in values.histograms:
                fields = histogram_fields(histogram)
                if fields is not None:
                    writer.add_histogram_raw(histogram.tag, **fields, global_step=values.step)
        return
    use_c_crc32c()
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    prefix = getattr(logger, "_prefix", "")
    join = getattr(logger, "LOGGER_JOIN_CHAR", "-")
    steps: dict[int, list[Any]] = {}
    for values in logged:
        summaries = steps.setdefault(values.step, [])
        summaries += [
            Summary.Value(tag=f"{prefix}{join}{name}" if prefix else name, simple_value=float(value))
            for name, value in values.metrics.items()
        ]
        for histogram in values.histograms:
            fields = histogram_fields(histogram)
            if fields is None:
                continue
            proto = HistogramProto(
                min=fields["min"],
                max=fields["max"],
                num=fields["num"],
                sum=fields["sum"],
                sum_squares=fields["sum_squares"],
                bucket_limit=fields["bucket_limits"],
                bucket=fields["bucket_counts"],
            )
            summaries.append(Summary.Value(tag=histogram.tag, histo=proto))
    for step, summaries in steps.items():
        if summaries:
            get_file_writer().add_summary(Summary(value=summaries), step)


def histogram_fields(histogram: Histogram) -> dict[str, Any] | None:
    """The arguments of ``add_histogram_raw`` for the bins; None when they hold nothing to draw."""
    weights = [weight if math.isfinite(weight) else 0.0 for weight in histogram.weights]
    total = math.fsum(weights)
    filled = [index for index, weight in enumerate(weights) if weight > 0]
    if total <= 0 or not filled:
        return None
    edges = list(histogram.edges)
    # only bin sums are known: the moments TensorBoard asks for are taken at bin centres
    centres = [(low + high) / 2 for low, high in itertools.pairwise(edges)]
    return {
        "min": edges[filled[0]],
        "max": edges[filled[-1] + 1],
        "num": total,
        "sum": math.fsum(weight * centre for weight, centre in zip(weights, centres, strict=True)),
        "sum_squares": math.fsum(weight * centre * centre for weight, centre in zip(weights, centres, strict=True)),
        "bucket_limits": edges[1:],
        "bucket_counts": weights,
    }


_c_crc32c_in_use: bool | None = None  # None until decided: the imports and checks run once per process


def use_c_crc32c() -> bool:
    """Have TensorBoard's record writer checksum records with google-crc32c's C CRC-32C; whether it does.

    Replaces the function that ``tensorboard.summary.writer.record_writer`` calls, for the whole
    process, once; the files written are the same bytes. Nothing changes when the C extension
    cannot be imported, or when something else has already replaced TensorBoard's function. Decided
    on the first call; later calls return that decision.
    """
    global _c_crc32c_in_use
    if _c_crc32c_in_use is None:
        _c_crc32c_in_use = _replace_crc32c()
    return _c_crc32c_in_use


def _replace_crc32c() -> bool:
    try:
        from google_crc32c import cext
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    if getattr(record_writer, "masked_crc32c", None) is not pywrap_tensorflow.masked_crc32c:
        return False  # not the pure-Python function this replaces (another version, or patched already)
    value = cext.value

    def masked_crc32c(data: bytes) -> int:
        crc = value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TensorBoard's (TFRecord's) mask

    record_writer.masked_crc32c = masked_crc32c
    return True
