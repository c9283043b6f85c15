"""Classify pictures of any size with a trained model: the tutorial's "test it on a picture".

Unlike the pipeline's own data (32x32 RGB, where anything else is an error), a picture
from the web may be any size and mode: it is converted to RGB, its shorter side resized
to 32 pixels and centre-cropped, then fed through the model's own evaluation transforms
with the training stats, exactly as the evaluate stage feeds the test set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from cifarlab.artifact import load_model
from cifarlab.augment.transforms import build_transform, is_multicrop
from cifarlab.errors import CifarlabError


def _open_any(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise CifarlabError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:  # not an OSError: PIL's guard against huge headers
        raise CifarlabError(f"{path}: refused, far too many pixels to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CifarlabError(f"{path}: not a readable image ({type(exc).__name__})") from None


class Predictor:
    """A loaded model and its transforms: `classify(image)` gives the top-k (class, probability)."""

    def __init__(self, model_path: str | Path, top_k: int = 3, device: str = "cpu"):
        self.model, meta = load_model(model_path, device)
        self.classes = meta["classes"]
        if not 1 <= top_k <= len(self.classes):
            raise CifarlabError(f"--top-k must be between 1 and {len(self.classes)}, got {top_k}")
        self.top_k, self.device, self.channels_last = top_k, device, bool(meta.get("channels_last"))
        self.resize = v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.PILToTensor()])
        self.transform = build_transform(meta["eval_transforms"], "augment.eval", meta["normalize"])
        self.ncrops = is_multicrop(meta["eval_transforms"])

    @torch.no_grad()
    def classify(self, img: Image.Image) -> list[tuple[str, float]]:
        x = self.transform(self.resize(img)).unsqueeze(0).to(self.device)
        if self.ncrops > 1:
            x = x.reshape(-1, *x.shape[-3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(self.model(x).float().mean(0), dim=0)
        top = torch.topk(probs, self.top_k)
        return [(self.classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]


def predict_files(
    model_path: str | Path, files: list[str | Path], top_k: int = 3, device: str = "cpu"
) -> list[tuple[str, list[tuple[str, float]]]]:
    """Every file checked before any work: the first unreadable one is the error."""
    predictor = Predictor(model_path, top_k, device)
    images = [_open_any(Path(f)) for f in files]
    return [(str(f), predictor.classify(img)) for f, img in zip(files, images)]


def predict_each(
    model_path: str | Path, files: list[str | Path], top_k: int = 3, device: str = "cpu"
) -> Iterator[tuple[str, list[tuple[str, float]] | None, str | None]]:
    """(path, top-k, None) or (path, None, error message) per file, in order: a broken file
    is reported and the next one classified. A bad model or --top-k raises before any file."""
    predictor = Predictor(model_path, top_k, device)
    for f in files:
        try:
            yield str(f), predictor.classify(_open_any(Path(f))), None
        except CifarlabError as exc:
            yield str(f), None, str(exc)
