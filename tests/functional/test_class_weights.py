"""Class weights from class counts: inverse frequency and effective number of samples."""

from __future__ import annotations

import re

import pytest
import torch

from lossplug.functional import class_weights_from_counts

COUNTS = {"balanced": [5, 5, 5], "imbalanced": [1000, 100, 10, 1], "tensor": torch.tensor([3, 30, 300])}


@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
def test_inverse_frequency(counts: list[int] | torch.Tensor) -> None:
    n = torch.as_tensor(counts, dtype=torch.float64)
    expected = (1 / n) / (1 / n).max()
    got = class_weights_from_counts(counts, "inverse_frequency")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    assert float(got.max()) == 1.0


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
def test_effective_number(counts: list[int] | torch.Tensor, beta: float) -> None:
    n = torch.as_tensor(counts, dtype=torch.float64)
    raw = torch.tensor([(1 - beta) / (1 - beta ** int(k)) for k in n.tolist()], dtype=torch.float64)
    got = class_weights_from_counts(counts, "effective_number", beta=beta)
    torch.testing.assert_close(got.double(), raw / raw.max(), rtol=1e-6, atol=0)
    assert bool(((got > 0) & (got <= 1)).all())  # valid focal alpha values


def test_effective_number_beta_0_is_uniform() -> None:
    torch.testing.assert_close(class_weights_from_counts([1, 10, 1000], "effective_number", beta=0.0), torch.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_counts": [3, 0, 2], "strategy": "inverse_frequency"}, "classes [1] have none"),
        ({"class_counts": [3, 4], "strategy": "frequency"}, "`strategy` to be one of"),
        ({"class_counts": [3, 4], "strategy": "effective_number", "beta": 1.0}, "`beta` to be a number in [0, 1)"),
        ({"class_counts": [], "strategy": "inverse_frequency"}, "`class_counts` to be a non-empty 1-d sequence"),
        ({"class_counts": [[1, 2]], "strategy": "inverse_frequency"}, "`class_counts` to be a non-empty 1-d sequence"),
    ],
    ids=["zero_count", "unknown_strategy", "beta_1", "empty", "2d"],
)
def test_bad_input_raises(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        class_weights_from_counts(**kwargs)  # type: ignore[arg-type]
