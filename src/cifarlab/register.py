"""Your own model, transform or loss, registered under a name that params.yaml can choose.

Your code lives in the user package, `src/cifarlab_user/` (USER_PACKAGE): any module there
registers what it defines with one decorator::

    from cifarlab.register import register_loss, register_model, register_transform

    @register_model("my_nn")              # model.name: user.my_nn; arguments at model.user.my_nn
    class MyNN(nn.Module):
        def __init__(self, num_classes: int = 10, relu: bool = False): ...

    @register_transform("AddPepperNoise")  # augment.train: [{AddPepperNoise: {snr: 0.95, p: 0.5}}]
    class AddPepperNoise: ...

    @register_loss("FocalLoss")            # loss.name: FocalLoss; arguments at loss.FocalLoss
    class FocalLoss(nn.Module): ...

The first time a stage resolves a name (`registered`), cifarlab imports the package and
every module in it, once. dvc.yaml declares the whole folder as a dependency of every
stage that resolves names (train, evaluate, export, visualize: tests/code_deps.py derives
it), so editing any file in it reruns them. Names in params.yaml only *select* what is
registered here: no text from params is ever evaluated.

A name that is already a built-in one (a torch.nn class for a loss, a
torchvision.transforms.v2 class for a transform, an architecture of another model source
for a model) is refused with one line naming both; the families check that where they
resolve names (models/registry.py, augment/transforms.py, optim/losses.py). This module
knows no torch: it only records what the decorators saw.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.errors import RegistrationError

USER_PACKAGE = "cifarlab_user"
KINDS = ("model", "transform", "loss")
#: What a transform may ask its input to be (augment/transforms.py inserts the conversion):
#: an image tensor (uint8 unless an earlier entry made floats), uint8, or float32 0..1.
TRANSFORM_NEEDS = ("tensor", "uint8", "float")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Entry:
    """One registered name: what it builds, and options of its family (a transform's `needs`)."""

    kind: str
    name: str
    target: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """`cifarlab_user.losses.FocalLoss`: where it is defined, for messages."""
        return f"{self.target.__module__}.{getattr(self.target, '__qualname__', self.name)}"


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def _register(kind: str, name: str, options: dict[str, Any]) -> Callable[[Callable], Callable]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistrationError(
            f"register_{kind}({name!r}): a name is letters, digits and underscores, "
            f"not starting with a digit (no dots: models are chosen as user.<name>)"
        )

    def decorator(target: Callable) -> Callable:
        if not callable(target):
            raise RegistrationError(
                f"register_{kind}({name!r}) must decorate a class or a function, not {type(target).__name__}"
            )
        entry = Entry(kind, name, target, options)
        old = _REGISTRY[kind].get(name)
        if old is not None and old.where != entry.where:
            raise RegistrationError(f"{kind} '{name}' is registered twice: by {old.where} and by {entry.where}")
        _REGISTRY[kind][name] = entry
        return target

    return decorator


def register_model(name: str) -> Callable[[Callable], Callable]:
    """`model.name: user.<name>`: a class or function called as `target(num_classes=..., **kwargs)`,
    the kwargs from `model.user.<name>`, returning an nn.Module that maps [N, 3, 32, 32] to [N, classes]."""
    record = _register("model", name, {})

    def decorator(target: Callable) -> Callable:
        params = inspect.signature(target).parameters if callable(target) else {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if callable(target) and "num_classes" not in params and not takes_any:
            raise RegistrationError(
                f"register_model({name!r}): {target.__module__}.{target.__qualname__} "
                f"must take a num_classes argument (the data sets it: 10 for CIFAR-10)"
            )
        return record(target)

    return decorator


def register_transform(name: str, *, needs: str = "tensor") -> Callable[[Callable], Callable]:
    """An `augment.train`/`augment.eval` entry `- <name>: {kwargs}`: a class (or function) called with
    the kwargs, whose result is called on one image, a tensor [C, H, W] (`needs`: tensor, uint8 or
    float; the list converts first where needed), and returns the image, same shape and dtype."""
    if needs not in TRANSFORM_NEEDS:
        raise RegistrationError(
            f"register_transform({name!r}, needs={needs!r}): needs is one of {', '.join(TRANSFORM_NEEDS)}"
        )
    return _register("transform", name, {"needs": needs})


def register_loss(name: str) -> Callable[[Callable], Callable]:
    """`loss.name: <name>`: a class called with the kwargs from `loss.<name>` (plus num_classes when it
    takes one), returning an nn.Module called as `loss(logits [N, C], target [N]) -> scalar`."""
    return _register("loss", name, {})


def code_folders() -> list[Path]:
    """The folders whose code decides what a training run computes: cifarlab itself and the
    user package (found without importing it). A checkpoint's fingerprint hashes them."""
    here = Path(__file__).resolve().parent
    spec = importlib.util.find_spec(USER_PACKAGE)
    user = [Path(spec.origin).resolve().parent] if spec is not None and spec.origin else []
    return [here, *user]


def load() -> None:
    """Import the user package and every module in it, once (no package: nothing registered)."""
    global _loaded
    if _loaded:
        return
    try:
        # lazy on purpose: the user package imports this module for its decorators
        import cifarlab_user as package
    except ModuleNotFoundError as exc:
        if exc.name != USER_PACKAGE:
            raise
        _loaded = True
        return
    for info in sorted(pkgutil.walk_packages(package.__path__, f"{USER_PACKAGE}."), key=lambda m: m.name):
        importlib.import_module(info.name)
    _loaded = True


def registered(kind: str) -> dict[str, Entry]:
    """{name: Entry} of one family (model, transform or loss), the user package loaded first."""
    load()
    return dict(_REGISTRY[kind])
