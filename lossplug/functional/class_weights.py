r"""Class weights from class counts: inverse frequency and effective number of samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lossplug.shared_checks import AlphaStrategy, check_class_counts, check_number, check_option


def class_weights_from_counts(
    class_counts: Sequence[int] | Tensor, strategy: AlphaStrategy, beta: float = 0.999
) -> Tensor:
    r"""Per-class weights from the number of training samples of each class, scaled to a maximum of 1.

    .. math::
        w_c \propto \frac{1}{n_c} \ (\text{inverse frequency}), \qquad
        w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}} \ (\text{effective number, Cui et al. 2019})

    The scale does not change a ``"mean"`` loss, which divides by the sum of the weights; a maximum of
    1 keeps a ``"sum"`` loss on the scale of an unweighted one.

    Args:
        class_counts: Samples per class ``(C,)``: whole numbers, every class at least one.
        strategy: ``"inverse_frequency"`` or ``"effective_number"``.
        beta: For ``"effective_number"``, in ``[0, 1)``; 0 gives equal weights, values near 1 approach
            inverse frequency.

    Example:
        >>> class_weights_from_counts([100, 10], "inverse_frequency")
        tensor([0.1000, 1.0000])
    """
    check_option("strategy", strategy, ("inverse_frequency", "effective_number"))
    beta = check_number("beta", beta, 0.0, 1.0, high_closed=False)
    counts = check_class_counts(class_counts)
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Expected every class to have at least one training sample to compute {strategy!r} weights, but "
            f"classes {empty} have none. Give `alpha` explicitly as one weight per class."
        )
    if strategy == "inverse_frequency":
        raw = 1.0 / counts
    else:
        raw = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (raw / raw.max()).to(torch.float32)
