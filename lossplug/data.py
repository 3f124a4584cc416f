"""Bundled real data for the demo: scikit-learn's handwritten digits, made long-tailed for training.

Nothing is downloaded: the 1,797 8x8 digit images ship inside scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sized

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lossplug.shared_checks import check_number, check_positive_int


class EpochSeededSampler(RandomSampler):
    """A shuffle that depends only on the seed and the epoch, so that a resumed run sees the batches of
    the run it continues. Lightning calls :meth:`set_epoch` before every training epoch.

    Example:
        >>> sampler = EpochSeededSampler(range(5), seed=0)
        >>> sampler.set_epoch(3)
        >>> first = list(sampler)
        >>> sampler.set_epoch(3)
        >>> list(sampler) == first
        True
    """

    def __init__(self, data: Sized, seed: int) -> None:
        self._generator = torch.Generator()
        super().__init__(data, generator=self._generator)  # type: ignore[arg-type]
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle as epoch ``epoch`` of a run with this seed."""
        self._generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))


class DigitsDataModule(L.LightningDataModule):
    """Handwritten digits (10 classes) with a long-tailed training split and balanced evaluation splits.

    Each class first gives ``eval_per_class`` samples to validation and as many to test (balanced,
    so per-class recall is comparable). Of the rest, class ``k`` keeps a fraction
    ``imbalance_ratio ** (k / (C - 1))`` for training: class 0 keeps all, class 9 about
    ``imbalance_ratio`` of its samples (1/20 by default), the usual long-tailed benchmark shape.
    Pixels are scaled to [0, 1].

    Args:
        imbalance_ratio: Fraction the rarest class keeps, in ``(0, 1]``; 1 keeps the data balanced.
        eval_per_class: Samples per class in each of validation and test.
        batch_size: Training and evaluation batch size.
        seed: Seed of the split (the same seed gives the same split).

    Example:
        >>> data = DigitsDataModule()
        >>> data.setup("fit")
        >>> data.class_counts.tolist()
        [118, 87, 60, 45, 32, 23, 16, 12, 8, 6]
    """

    num_classes = 10

    def __init__(
        self, imbalance_ratio: float = 0.05, eval_per_class: int = 30, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        self.imbalance_ratio = check_number("imbalance_ratio", imbalance_ratio, 0.0, 1.0, low_closed=False)
        self.eval_per_class = check_positive_int("eval_per_class", eval_per_class)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.num_classes = type(self).num_classes
        self.input_dim = 64
        self.class_names = [str(digit) for digit in range(10)]
        self._splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        digits = load_digits()
        features = digits.data.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        generator = np.random.default_rng(self.seed)
        indices: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for label in range(self.num_classes):
            members = generator.permutation(np.flatnonzero(labels == label))
            if len(members) <= 2 * self.eval_per_class:
                raise ValueError(
                    f"Expected argument `eval_per_class` to leave training samples for every class, but class "
                    f"{label} has only {len(members)} samples and eval_per_class={self.eval_per_class}."
                )
            indices["val"].append(members[: self.eval_per_class])
            indices["test"].append(members[self.eval_per_class : 2 * self.eval_per_class])
            pool = members[2 * self.eval_per_class :]
            keep = max(1, round(len(pool) * self.imbalance_ratio ** (label / (self.num_classes - 1))))
            indices["train"].append(pool[:keep])
        for split, parts in indices.items():
            chosen = np.concatenate(parts)
            self._splits[split] = TensorDataset(torch.from_numpy(features[chosen]), torch.from_numpy(labels[chosen]))

    @property
    def class_counts(self) -> torch.Tensor:
        """Training samples per class ``(C,)``; read by ``alpha="inverse_frequency"`` and the like."""
        self.setup()
        return torch.bincount(self._splits["train"].tensors[1], minlength=self.num_classes)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochSeededSampler(self._splits["train"], self.seed)
        return DataLoader(self._splits["train"], batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        self.setup()
        return DataLoader(self._splits[split], batch_size=self.batch_size)
