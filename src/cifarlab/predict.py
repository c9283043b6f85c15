"""Classify pictures of any size with a trained model: the tutorial's "test it on a picture".

Unlike the pipeline's own data (32x32 RGB, where anything else is an error), a picture
from the web may be any size and mode: it is converted to RGB, its shorter side resized
to 32 pixels and centre-cropped, then fed through the model's own evaluation transforms
with the training stats, exactly as the evaluate stage feeds the test set.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from cifarlab.artifact import load_model
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


@torch.no_grad()
def predict_files(model_path: str | Path, files: list[str | Path], top_k: int = 3, device: str = "cpu"
                  ) -> list[tuple[str, list[tuple[str, float]]]]:
    from torchvision.transforms import v2

    from cifarlab.augment.transforms import build_transform, is_multicrop

    model, meta = load_model(model_path, device)
    classes = meta["classes"]
    if not 1 <= top_k <= len(classes):
        raise CifarlabError(f"--top-k must be between 1 and {len(classes)}, got {top_k}")
    resize = v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.PILToTensor()])
    transform = build_transform(meta["eval_transforms"], "augment.eval", meta["normalize"])
    ncrops = is_multicrop(meta["eval_transforms"])
    images = [_open_any(Path(f)) for f in files]  # every file checked before any work
    results = []
    for f, img in zip(files, images):
        x = transform(resize(img)).unsqueeze(0).to(device)
        if ncrops > 1:
            x = x.reshape(-1, *x.shape[-3:])
        if meta.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(model(x).float().mean(0), dim=0)
        top = torch.topk(probs, top_k)
        results.append((str(f), [(classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]))
    return results
