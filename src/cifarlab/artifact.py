"""The trained-model file that train writes and evaluate, visualize and predict read.

One dict saved with torch.save: the state dict plus what it takes to rebuild and feed the
model (its registry name and arguments, the class names, the normalization stats, the
evaluation transforms). Only tensors and plain containers, so it loads with
`weights_only=True`: a model file can never run code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import CifarlabError


def save_model(path: str | Path, model: torch.nn.Module, *, name: str, kwargs: dict, classes: list[str],
               normalize: dict, eval_transforms: list, channels_last: bool, **info) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": "cifarlab.model/1", "model": state, "name": name, "kwargs": kwargs,
               "classes": list(classes), "normalize": normalize, "eval_transforms": eval_transforms,
               "channels_last": channels_last, **info}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; return (model, the rest of the file)."""
    from .models.registry import build_model

    path = Path(path)
    if not path.is_file():
        raise CifarlabError(f"{path}: model file missing; run the train stage (dvc repro train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        raise CifarlabError(f"{path}: not a cifarlab model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != "cifarlab.model/1":
        raise CifarlabError(f"{path}: not a cifarlab model file (no 'format: cifarlab.model/1')")
    model = build_model(payload["name"], payload["kwargs"], num_classes=len(payload["classes"]))
    model.load_state_dict(payload["model"])
    if payload.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.to(device).eval()
    return model, {k: v for k, v in payload.items() if k != "model"}
