"""The trained-model file that train writes and evaluate, visualize and predict read.

One dict saved with torch.save: the state dict plus what it takes to rebuild and feed the
model (its registry name and arguments, the class names, the normalization stats, the
evaluation transforms). Only tensors and plain containers, so it loads with
`weights_only=True`: a model file can never run code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.atomic import atomic_path
from cifarlab.errors import CifarlabError

#: How to get a good model file back, appended to every error about one.
REBUILD = "rebuild it with `dvc repro train`, or fetch the committed one with `dvc pull`"


def save_model(path: str | Path, model: torch.nn.Module, *, name: str, kwargs: dict, classes: list[str],
               normalize: dict, eval_transforms: list, channels_last: bool, **info) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": "cifarlab.model/1", "model": state, "name": name, "kwargs": kwargs,
               "classes": list(classes), "normalize": normalize, "eval_transforms": eval_transforms,
               "channels_last": channels_last, **info}
    # through a file object: torch.save given a path names the zip's inner folder after the file,
    # here a random temporary name, and two identical runs would write different bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; return (model, the rest of the file)."""
    from cifarlab.models.finetune import safe_torch_load, load_error
    from cifarlab.models.registry import build_model

    path = Path(path)
    if not path.is_file():
        raise CifarlabError(f"{path}: model file missing; {REBUILD}")
    try:
        payload = safe_torch_load(path)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        refused, detail = load_error(exc)
        if refused:
            raise CifarlabError(f"{path}: not a cifarlab model file: refused, it holds Python objects other than "
                                f"tensors (a pickle that could run code); torch.load(weights_only=True) rejected "
                                f"it and nothing in it was run ({detail}); {REBUILD}") from None
        raise CifarlabError(f"{path}: not a cifarlab model file ({detail}); {REBUILD}") from None
    if not isinstance(payload, dict) or payload.get("format") != "cifarlab.model/1":
        raise CifarlabError(f"{path}: not a cifarlab model file (no 'format: cifarlab.model/1'); {REBUILD}")
    missing = [k for k in ("model", "name", "kwargs", "classes", "normalize", "eval_transforms") if k not in payload]
    if missing:
        raise CifarlabError(f"{path}: damaged cifarlab model file (no {', '.join(missing)}); {REBUILD}")
    model = build_model(payload["name"], payload["kwargs"], num_classes=len(payload["classes"]))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError) as exc:  # tensors missing, renamed or of the wrong shape: a damaged file
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:160]  # past the header
        raise CifarlabError(f"{path}: damaged cifarlab model file, its weights do not fit "
                            f"{payload['name']} ({detail}); {REBUILD}") from None
    if payload.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.to(device).eval()
    return model, {k: v for k, v in payload.items() if k != "model"}
