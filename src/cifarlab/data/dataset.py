"""Datasets over the txt indexes: the tutorial's per-image MyDataset and the in-memory one.

`IndexDataset` is the tutorial's MyDataset (chapter 1.3): one `path label` line per image,
opened with PIL on every access, an optional transform. It is kept for the tutorial's
per-image path (`augment.backend: pil`) and for transforms that need PIL images.

`load_tensors` is the fast path: every image decoded once into one uint8 tensor, checked
up front (so a broken file stops training before it starts, naming the index line), then
augmented in batches on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from cifarlab.data.images import load_index_images, load_rgb32
from cifarlab.data.index import read_index


class IndexDataset(Dataset):
    """The tutorial's MyDataset: images named by an index file, opened one by one."""

    def __init__(
        self,
        index_path: str | Path,
        transform: Optional[Callable] = None,
        root: str | Path = ".",
        num_classes: int = 10,
    ):
        self.items = read_index(index_path, num_classes)
        self.root = Path(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        img = Image.fromarray(load_rgb32(self.root / path, self.items.where(i)))
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def load_tensors(
    index_path: str | Path, root: str | Path = ".", num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of an index as uint8 [N, 3, 32, 32] and labels int64 [N], decoded in parallel."""
    items = read_index(index_path, num_classes)
    images = load_index_images(items, root)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return torch.from_numpy(images), labels
