"""DigitsDataModule: a long-tailed training split and balanced evaluation splits of real digits."""

from __future__ import annotations

import pytest
import torch

from lossplug.data import DigitsDataModule


def _targets(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return torch.cat([target for _, target in loader])


def test_training_split_is_long_tailed_with_the_requested_ratio() -> None:
    data = DigitsDataModule(imbalance_ratio=0.05)
    counts = data.class_counts
    pools = torch.tensor([178, 182, 177, 183, 181, 182, 181, 179, 174, 180]) - 60  # minus 30 val + 30 test
    expected = torch.round(pools * 0.05 ** (torch.arange(10) / 9)).long()
    assert torch.equal(counts, expected)
    assert counts[0] / counts[9] == pytest.approx(20, rel=0.05)
    assert torch.equal(torch.bincount(_targets(data.train_dataloader()), minlength=10), counts)


def test_evaluation_splits_are_balanced_and_disjoint() -> None:
    data = DigitsDataModule(eval_per_class=25)
    data.setup("fit")
    assert torch.equal(torch.bincount(_targets(data.val_dataloader())), torch.full((10,), 25))
    assert torch.equal(torch.bincount(_targets(data.test_dataloader())), torch.full((10,), 25))
    rows = {
        split: {tuple(row.tolist()) for features, _ in loader for row in features}
        for split, loader in [("train", data.train_dataloader()), ("val", data.val_dataloader()), ("test", data.test_dataloader())]
    }
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def test_features_are_real_digits_scaled_to_unit_range() -> None:
    data = DigitsDataModule()
    features, _ = next(iter(data.val_dataloader()))
    assert features.shape == (64, 64)
    assert float(features.min()) == 0.0
    assert float(features.max()) == 1.0
    assert data.num_classes == 10
    assert data.input_dim == 64
    assert data.class_names[9] == "9"


def test_same_seed_same_split_other_seed_other_split() -> None:
    first, second, other = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    for data in (first, second, other):
        data.setup()
    assert torch.equal(first._splits["train"].tensors[0], second._splits["train"].tensors[0])
    assert not torch.equal(first._splits["train"].tensors[0], other._splits["train"].tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"imbalance_ratio": 0.0}, r"`imbalance_ratio` to be a number in \(0, 1\], but got 0\.0"),
        ({"imbalance_ratio": 1.5}, r"`imbalance_ratio` to be a number in \(0, 1\], but got 1\.5"),
        ({"batch_size": 0}, r"`batch_size` to be an integer >= 1, but got 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


def test_too_many_evaluation_samples_is_explained() -> None:
    with pytest.raises(ValueError, match="class 8 has only 174 samples and eval_per_class=87"):
        DigitsDataModule(eval_per_class=87).setup()
