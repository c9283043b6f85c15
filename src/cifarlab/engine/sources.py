"""Where batches come from: the fastest source that is exactly right for the transforms.

The batch path (decoded uint8 tensors on the device, whole-batch augmentation) when every
transform is covered by it; per-sample torchvision transforms on the decoded images when
not, said in one log line; the tutorial's per-image PIL path when `augment.backend: pil`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors

from cifarlab.augment.batch import plan, uncovered
from cifarlab.augment.transforms import build_transform
from cifarlab.data.dataset import IndexDataset
from cifarlab.engine.device import Runtime
from cifarlab.engine.loop import Dist, LoaderSource, TensorSource


class MemoryDataset(torch.utils.data.Dataset):
    """Decoded uint8 images with a per-sample torchvision transform: the fallback path."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(tv_tensors.Image(self.images[i])), self.labels[i]


def make_source(
    entries: list,
    key: str,
    *,
    backend: str,
    images,
    labels,
    index: Path,
    stats: dict,
    runtime: Runtime,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_workers: int = 0,
    dist: Dist = Dist(),
    log=print,
    keep: bool = False,
):
    """A batch source for `entries` (augment.train or augment.eval) over these images; `keep`:
    hold on to the batches of a source that gives the same ones every epoch (validation)."""
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        rank=dist.rank if shuffle else 0,
        world=dist.world if shuffle else 1,
    )
    if backend == "tensor":
        fast = plan(entries, stats, key)
        if fast is not None:
            fast = fast.to(runtime.device)
            return TensorSource(
                runtime.to_device(images),
                runtime.to_device(labels),
                fast,
                channels_last=runtime.channels_last,
                keep=keep,
                **common,
            )
        log(
            f"{key}: {', '.join(uncovered(entries))} not covered by the batch path; "
            f"using per-sample torchvision transforms on the decoded images"
        )
        dataset = MemoryDataset(images, labels, build_transform(entries, key, stats))
    else:
        dataset = IndexDataset(index, build_transform(entries, key, stats))
    return LoaderSource(dataset, device=runtime.device, num_workers=num_workers, **common)
