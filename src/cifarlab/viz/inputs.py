"""The images the pictures show, prepared exactly as training and evaluation prepare them.

* Test images go through the model's own evaluation transforms (saved in the model file),
  so predictions, features and Grad-CAM are those of the evaluate stage. FiveCrop/TenCrop
  lists give several crops per image: predictions and features average them as evaluate
  does, while the per-pixel pictures use the plain image with the list's Normalize only.
* The grid of training inputs uses the project's training augmentation (`augment.train`),
  through the same batch path or per-sample torchvision transforms as the train stage.
* `denormalize` undoes the lists' top-level Normalize entries, so pictures show colours
  rather than z-scores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torchvision import tv_tensors

from cifarlab.augment.batch import plan
from cifarlab.augment.transforms import build_transform, is_multicrop, normalize_args, parse_entry
from cifarlab.data.images import load_rgb32
from cifarlab.data.index import read_index

Pipeline = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def pipeline(entries: list, stats: dict, key: str) -> Pipeline:
    """uint8 [N, 3, H, W] -> float model input: the batch path when it covers the list, else per sample."""
    fast = plan(entries, stats, key)
    if fast is not None:
        return lambda x, generator=None: fast(x, generator)
    per_sample = build_transform(entries, key, stats)

    def run(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is not None:  # torchvision draws from the global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return torch.stack([per_sample(tv_tensors.Image(img)) for img in x])

    return run


def normalize_entries(entries: list, stats: dict, key: str) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """(mean, std) of each top-level Normalize entry, in list order."""
    out = []
    for i, entry in enumerate(entries):
        name, kwargs = parse_entry(entry, f"{key}.{i}")
        if name == "Normalize":
            out.append(normalize_args(kwargs, stats, f"{key}.{i}"))
    return out


def denormalize(x: torch.Tensor, norms: list) -> torch.Tensor:
    """Undo the Normalize entries (last first) and clamp to 0..1 for display."""
    x = x.float().clone()
    for mean, std in reversed(norms):
        shape = (1,) * (x.dim() - 3) + (-1, 1, 1)
        x = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    return x.clamp(0, 1)


class EvalInputs:
    """The model's evaluation transforms (from its file), for predictions and for pictures."""

    def __init__(self, meta: dict):
        self.entries = list(meta.get("eval_transforms") or [])
        self.stats = meta["normalize"]
        self.ncrops = is_multicrop(self.entries)
        self.predict = pipeline(self.entries, self.stats, "augment.eval")
        norms = normalize_entries(self.entries, self.stats, "augment.eval")
        picture_entries = (
            self.entries if self.ncrops == 1 else [{"Normalize": {"mean": list(m), "std": list(s)}} for m, s in norms]
        )
        self.picture = pipeline(picture_entries, self.stats, "augment.eval")
        self.norms = norms

    def show(self, x: torch.Tensor) -> torch.Tensor:
        """A picture input [N, 3, H, W] back to displayable 0..1 colours."""
        return denormalize(x.cpu(), self.norms)


def train_grid_images(
    index: Path, entries: list, stats: dict, *, count: int, seed: int, num_classes: int, root: Path = Path(".")
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` training images picked with `seed`, augmented by `augment.train`, de-normalized.

    Returns ([M, 3, H, W] in 0..1, labels [M]); M = count, or count x crops after a
    FiveCrop/TenCrop entry (every crop is shown).
    """
    items = read_index(index, num_classes)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(items), generator=g)[:count].tolist()
    raw = torch.stack(
        [torch.from_numpy(load_rgb32(root / items[i][0], items.where(i)).transpose(2, 0, 1).copy()) for i in pick]
    )
    labels = torch.tensor([items[i][1] for i in pick], dtype=torch.int64)
    out = pipeline(entries, stats, "augment.train")(raw, g)
    if out.dim() == 5:
        labels = labels.repeat_interleave(out.shape[1])
        out = out.reshape(-1, *out.shape[2:])
    return denormalize(out, normalize_entries(entries, stats, "augment.train")), labels
