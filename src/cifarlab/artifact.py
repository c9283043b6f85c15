"""The trained-model file that train writes and evaluate, visualize and predict read.

One dict saved with torch.save: the state dict plus what it takes to rebuild and feed the
model (its registry name and arguments, the class names, the normalization stats, the
evaluation transforms). Only tensors and plain containers, so it loads with
`weights_only=True`: a model file can never run code.

The file also holds the sha256 of its tensors, so a file damaged after it was written
(truncated, emptied, bytes changed inside a tensor, which torch.load alone does not notice)
is an error naming it and how to get it back, never a model that silently predicts garbage.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from cifarlab.atomic import atomic_path
from cifarlab.errors import CifarlabError, ParamsError
from cifarlab.models.finetune import load_error, safe_torch_load
from cifarlab.models.registry import build_model

#: How to get a good model file back, appended to every error about one.
REBUILD = "rebuild it with `dvc repro train`, or fetch the committed one with `dvc pull`"


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    *,
    name: str,
    kwargs: dict,
    classes: list[str],
    normalize: dict,
    eval_transforms: list,
    channels_last: bool,
    **info,
) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": "cifarlab.model/1",
        "model": state,
        "name": name,
        "kwargs": kwargs,
        "classes": list(classes),
        "normalize": normalize,
        "eval_transforms": eval_transforms,
        "channels_last": channels_last,
        **info,
    }
    payload["sha256"] = state_digest(state)
    # through a file object: torch.save given a path names the zip's inner folder after the file,
    # here a random temporary name, and two identical runs would write different bytes; and into
    # memory first, so that a full disk is Python's OSError (named by the stage), not torch's RuntimeError
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def state_digest(state: dict) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _damaged(path: Path, why: str) -> CifarlabError:
    return CifarlabError(
        f"{path}: the model file is damaged ({why}); rebuild it with `dvc repro train` "
        "(or `dvc repro -f train` if DVC thinks it is up to date), or fetch the cached one "
        "with `dvc checkout train` or `dvc pull train`"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; return (model, the rest of the file)."""
    path = Path(path)
    if not path.is_file():
        raise CifarlabError(f"{path}: model file missing; {REBUILD}")
    try:
        payload = safe_torch_load(path)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        refused, detail = load_error(exc)
        if refused:
            raise CifarlabError(
                f"{path}: not a cifarlab model file: refused, it holds Python objects other than "
                f"tensors (a pickle that could run code); torch.load(weights_only=True) rejected "
                f"it and nothing in it was run ({detail}); {REBUILD}"
            ) from None
        if path.stat().st_size == 0:
            raise _damaged(path, "an empty file") from None
        if _is_zip(path):  # torch's own format, cut short or corrupt
            raise _damaged(path, detail) from None
        raise CifarlabError(f"{path}: not a cifarlab model file ({detail}); {REBUILD}") from None
    if not isinstance(payload, dict) or payload.get("format") != "cifarlab.model/1":
        raise CifarlabError(f"{path}: not a cifarlab model file (no 'format: cifarlab.model/1'); {REBUILD}")
    missing = [k for k in ("model", "name", "kwargs", "classes", "normalize", "eval_transforms") if k not in payload]
    if missing:
        raise _damaged(path, f"no {', '.join(missing)}")
    state = payload["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _damaged(path, "its 'model' entry is not a state dict")
    if "sha256" in payload and state_digest(state) != payload["sha256"]:
        raise _damaged(path, "its tensors do not match the sha256 saved with them")
    try:
        model = build_model(payload["name"], payload["kwargs"], num_classes=len(payload["classes"]))
    except ParamsError as exc:  # a name this code no longer has (a user model renamed or removed)
        why = str(exc).removeprefix("params.yaml: ")
        raise CifarlabError(
            f"{path}: its model {payload['name']} cannot be built by this code ({why}); {REBUILD}"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:  # tensors missing, renamed or of the wrong shape: a damaged file
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:160]  # past the header
        raise _damaged(path, f"its weights do not fit {payload['name']} ({detail})") from None
    if payload.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.to(device).eval()
    return model, {k: v for k, v in payload.items() if k != "model"}


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
