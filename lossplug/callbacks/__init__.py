"""Training diagnostics: where the loss comes from, by class and by hardness (p_t), per epoch.

Both callbacks, and your own (``docs/custom_diagnostics.md``), are built on :class:`LossDiagnostics`.
A stage's statistics live like this, and for these reasons:

1. A step's detached loss record is appended to a list: no tensor operation and no host-device
   sync per step, so training never waits for the diagnostics, on any device.
2. At the stage's end, or once about a million values have gathered (to bound what they hold),
   the records become one :class:`ObservedBatch`, and what ``increment`` makes of it goes into a
   table of float64 sums with one ``index_add_``: a torchmetrics ``Metric`` on the model's device
   whose state is declared ``dist_reduce_fx="sum"``. One batched addition costs what a step's would.
3. At the stage's end the table is summed over processes (the metric's sync) and read once; float64
   sums of float32 losses are exact in practice, so 1 and N processes write the same bytes.
4. Rank zero turns it into CSV rows, logger scalars, histograms and a console summary (``report``).
   A validation in ``fit`` waits for its training epoch: an epoch's rows are one durable write.
5. A checkpoint carries the CSV's path and fingerprint, the stages summed but not written, and the
   running stage's sums, because Lightning saves checkpoints before an epoch ends and resumes right
   there: a resumed run writes what an uninterrupted run writes.
"""

from lossplug.callbacks.base import EpochReport, Histogram, LossDiagnostics, LossLayout, ObservedBatch, Stage
from lossplug.callbacks.hardness import GroupHistogram, HardnessHistogram
from lossplug.callbacks.long_tail import LongTailReport
from lossplug.callbacks.per_class import PerClassLossMonitor

__all__ = ["EpochReport", "GroupHistogram", "HardnessHistogram", "Histogram", "LossDiagnostics", "LossLayout"]
__all__ += ["LongTailReport", "ObservedBatch", "PerClassLossMonitor", "Stage"]
