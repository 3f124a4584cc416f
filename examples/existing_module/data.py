"""The example's data: scikit-learn's breast-cancer set (569 real samples, 30 features, 2 classes)."""

from __future__ import annotations

import lightning as L
import torch
from sklearn.datasets import load_breast_cancer
from torch.utils.data import DataLoader, TensorDataset


class BreastCancerData(L.LightningDataModule):
    """Standardized features; a fixed 80/20 split.

    ``num_classes``, ``class_names`` and ``class_counts`` are what the ``lossplug`` command reads from a
    data module: the loss's dimensions, the names in the diagnostics, and computed class weights.
    """

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        data = load_breast_cancer()
        features = torch.tensor(data.data, dtype=torch.float32)
        features = (features - features.mean(0)) / features.std(0)
        target = torch.tensor(data.target, dtype=torch.int64)
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(seed))
        cut = int(0.8 * len(order))
        self.train_set = TensorDataset(features[order[:cut]], target[order[:cut]])
        self.val_set = TensorDataset(features[order[cut:]], target[order[cut:]])
        self.num_classes = 2
        self.class_names = [str(name) for name in data.target_names]  # malignant, benign
        self.class_counts = torch.bincount(target[order[:cut]], minlength=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
