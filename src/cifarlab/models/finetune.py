"""Finetuning: load pretrained weights from a local file (model.pretrained), freeze by prefix.

Pretrained weights only ever come from a local file: nothing is downloaded. The file is read
with torch.load(weights_only=True), which unpickles tensors and plain containers only, so a
hostile file (a pickle whose __reduce__ would run a command) is refused before anything in it
runs. Entries are matched by name and shape, so a net trained on another dataset (another
head size) still gives all its other layers: the mismatches are skipped and reported, which
is the tutorial's finetuning recipe (load everything but the classifier, then train).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifarlab.errors import CifarlabError, ParamsError

#: Prefixes that wrappers add to every name: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys under which a checkpoint dict keeps its model's state dict (ours is 'model').
CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass
class LoadReport:
    """What load_pretrained did: names loaded, skipped (other shape), missing and unexpected."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, file, model shape
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self, limit: int = 5) -> str:
        def some(names):
            shown = ", ".join(names[:limit])
            return f" ({shown}{', ...' if len(names) > limit else ''})" if names else ""

        skipped = [f"{n} {list(a)} vs {list(b)}" for n, a, b in self.skipped]
        return (
            f"pretrained: {self.path}: loaded {len(self.loaded)} tensors; "
            f"skipped {len(self.skipped)} with another shape{some(skipped)}; "
            f"{len(self.missing)} missing from the file{some(self.missing)}; "
            f"{len(self.unexpected)} unexpected{some(self.unexpected)}"
        )

    __str__ = summary


def load_error(exc: Exception) -> tuple[bool, str]:
    """(refused, detail) for a torch.load(weights_only=True) failure.

    refused: the file is a pickle naming Python objects other than tensors (a global, an
    object to build), which weights_only refused before running anything. Otherwise the file
    is simply not something torch can read. The detail is torch's own line, never its advice
    to retry with weights_only=False.
    """
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    refused = [ln for ln in lines if "GLOBAL" in ln or ln.startswith("Can only") or "NEWOBJ" in ln]
    if refused:
        return True, refused[0]
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in text.lower():
        unsupported = [ln for ln in lines if ln.startswith("Unsupported operand")]
        return False, unsupported[0] if unsupported else "not a pickle torch can read"
    first = lines[0].split(". ")[0] if lines else ""  # torch's first sentence; the rest is advice
    return False, f"{type(exc).__name__}: {first}"


def safe_torch_load(path: Path):
    with warnings.catch_warnings():  # torch's note about pickle protocols is noise here
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (bare, or under 'model' in our checkpoints), safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError("model.pretrained", "no such file", str(path))
    try:
        obj = safe_torch_load(path)
    except Exception as exc:  # a hostile pickle, a corrupt zip, a truncated or text file
        refused, detail = load_error(exc)
        if refused:
            # torch's message advises weights_only=False; we only quote what it found.
            raise CifarlabError(
                f"{path}: refused: the file holds Python objects other than tensors (a pickle "
                f"that could run code); torch.load(weights_only=True) rejected it and nothing "
                f"in it was run. Save weights with torch.save(model.state_dict(), path). ({detail})"
            ) from None
        raise CifarlabError(f"{path}: not a PyTorch weights file ({detail})") from None
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CifarlabError(
            f"{path}: not a state dict: holds {type(obj).__name__}"
            + (" (empty)" if isinstance(obj, dict) else "")
            + "; expected a mapping of parameter names to tensors, or a checkpoint with 'model'"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CifarlabError(
            f"{path}: not a state dict: {len(bad)} entries are not named tensors "
            f"(e.g. {bad[0]!r}: {type(obj[bad[0]]).__name__})"
        )
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Copy the tensors of `path` whose names and shapes match into `model`; report the rest."""
    state = read_state_dict(path)
    own = model.state_dict()
    report = LoadReport(str(path))
    keep = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.skipped.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            keep[name] = tensor
            report.loaded.append(name)
    report.missing = [name for name in own if name not in state]
    if not keep:
        raise CifarlabError(
            f"{path}: none of its {len(state)} tensors matches the model by name and shape "
            f"(the file has e.g. {', '.join(list(state)[:3])}; the model has e.g. "
            f"{', '.join(list(own)[:3])}): is it a checkpoint of another architecture?"
        )
    model.load_state_dict(keep, strict=False)
    return report


def top_level_names(model: nn.Module) -> list[str]:
    """The model's direct children and direct parameters: the first word of every prefix."""
    return [n for n, _ in model.named_children()] + [n for n, _ in model.named_parameters(recurse=False)]


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose names start with one of `prefixes`.

    Plain string prefixes (as the optimizer's per-prefix groups use): `conv1` freezes
    conv1.weight and conv1.bias, `features.0` everything in that block. A prefix matching
    nothing is an error (a typo would otherwise silently train everything), listing the
    top-level names. Returns the frozen parameter names.
    """
    names = [n for n, _ in model.named_parameters()]
    for i, prefix in enumerate(prefixes):
        if not isinstance(prefix, str) or not prefix:
            raise ParamsError(f"model.freeze.{i}", "must be a non-empty parameter-name prefix", prefix)
        if not any(n.startswith(prefix) for n in names):
            raise ParamsError(f"model.freeze.{i}", "matches no parameter of the model", prefix, top_level_names(model))
    frozen = []
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
