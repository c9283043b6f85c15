"""Every model by a name that says where it comes from, and the one way to build them.

`model.name` is `<source>.<arch>`:

* `cifarlab.*`: this package's nets (cifar.py), the fast default `cifarlab.resnet8`, and
  `cifarlab.airbench` (airbench.py);
* `tutorial.*`: the tutorial's chapter-2 models, layer for layer (tutorial.py);
* `torchvision.*`: every torchvision classification model, adapted to 32x32 (torchvision_adapt.py);
* `user.*`: your own, registered with `cifarlab.register.register_model` in src/cifarlab_user/.

Keyword arguments live at `model.<source>.<arch>` (ModelParams.kwargs_for) and are checked
against the builder's signature. A source is anything with names(), accepted(arch),
check(arch, kwargs, key) and build(arch, kwargs, num_classes, key): adding one is one line
in SOURCES, not a branch in every function.

The training stage calls model_names(), check_model(params), build_model(name, kwargs,
num_classes) and create_model(params, num_classes, log).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from cifarlab import register
from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError, RegistrationError
from cifarlab.models import airbench, cifar, course, torchvision_adapt, tutorial
from cifarlab.models.finetune import freeze, load_pretrained
from cifarlab.models.init import apply_init, check_init
from cifarlab.models.whiten import first_conv

DEFAULT_MODEL = "cifarlab.resnet8"


class LocalSource:
    """Models defined in this package: `arch -> constructor(num_classes=..., **kwargs)`."""

    def __init__(self, source: str, models: dict[str, Callable[..., nn.Module]]):
        self.source = source
        self.models = models

    def names(self) -> list[str]:
        return sorted(self.models)

    def accepted(self, arch: str) -> tuple[str, ...]:
        params = inspect.signature(self.models[arch]).parameters.values()
        return tuple(
            p.name for p in params if p.name != "num_classes" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def build(self, arch: str, kwargs: Optional[dict], num_classes: int = 10, key: Optional[str] = None) -> nn.Module:
        key = key or f"model.{self.source}.{arch}"
        kwargs = dict(kwargs or {})
        accepted = self.accepted(arch)
        for name, value in kwargs.items():
            if name == "num_classes":
                raise ParamsError(f"{key}.{name}", "set by the data (10 for CIFAR-10)", value)
            if name not in accepted:
                raise ParamsError(
                    f"{key}.{name}",
                    f"unknown argument of {self.source}.{arch}",
                    value,
                    accepted or ["(none: it takes no arguments)"],
                )
        try:
            return self.models[arch](num_classes=num_classes, **kwargs)
        except TORCH_ARGUMENT_ERRORS as exc:
            raise ParamsError(key, f"{self.source}.{arch} rejected these arguments: {exc}") from None

    def check(self, arch: str, kwargs: Optional[dict], key: Optional[str] = None) -> None:
        """Build on the meta device and run a meta 32x32 forward: no memory, no compute."""
        with torch.device("meta"):
            model = self.build(arch, kwargs, 10, key)
            model.eval()(torch.empty(2, 3, 32, 32))


class TorchvisionSource:
    """torchvision.models' classification builders, adapted to 32x32 (torchvision_adapt)."""

    source = "torchvision"

    def names(self) -> list[str]:
        return torchvision_adapt.names()

    def accepted(self, arch: str) -> tuple[str, ...]:
        return torchvision_adapt.accepted(arch)

    def build(self, arch, kwargs, num_classes=10, key=None) -> nn.Module:
        return torchvision_adapt.build(arch, kwargs, num_classes, key)

    def check(self, arch, kwargs, key=None) -> None:
        torchvision_adapt.check(arch, kwargs, key)


class UserSource(LocalSource):
    """The user package's models (src/cifarlab_user/, `register_model`), read when first asked.

    An architecture name of another source is refused (`user.resnet18` beside
    `torchvision.resnet18` would read as the same model): one line naming both.
    """

    def __init__(self):
        self.source = "user"

    @property
    def models(self) -> dict[str, Callable[..., nn.Module]]:
        entries = register.registered("model")
        if entries:
            builtin = {arch: src for src, s in SOURCES.items() if s is not self for arch in s.names()}
            for arch, entry in entries.items():
                if arch in builtin:
                    raise RegistrationError(
                        f"{entry.where} registers model '{arch}', which clashes with the built-in "
                        f"{builtin[arch]}.{arch}: register it under another name (chosen as user.<name>)"
                    )
        return {arch: entry.target for arch, entry in entries.items()}


SOURCES = {
    "cifarlab": LocalSource("cifarlab", {**cifar.MODELS, **airbench.MODELS}),
    "tutorial": LocalSource("tutorial", {**tutorial.MODELS, **course.MODELS}),
    "torchvision": TorchvisionSource(),
    "user": UserSource(),
}


def model_names() -> list[str]:
    """Every supported `model.name`."""
    return [f"{source}.{arch}" for source, s in SOURCES.items() for arch in s.names()]


def _unknown_name(name: str) -> ParamsError:
    source, dot, arch = name.partition(".")
    everything = model_names()
    same_arch = [n for n in everything if n.partition(".")[2] == (arch if dot else name)]
    close = same_arch or difflib.get_close_matches(name, everything, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    if dot and source in SOURCES:
        choices = [f"{source}.{a}" for a in SOURCES[source].names()]
        return ParamsError("model.name", f"unknown {source} model{hint}", name, choices)
    tv = SOURCES["torchvision"].names()
    choices = [n for n in everything if not n.startswith("torchvision.")]
    choices.append(f"torchvision.<any of {len(tv)} torchvision classification models, e.g. resnet18>")
    return ParamsError(
        "model.name",
        f"unknown model: names are <source>.<arch> with source one of {', '.join(SOURCES)}{hint}",
        name,
        choices,
    )


def split_name(name: str) -> tuple[str, str]:
    """`torchvision.resnet18` -> ('torchvision', 'resnet18'), or ParamsError with the choices."""
    source, _, arch = name.partition(".")
    if source not in SOURCES or arch not in SOURCES[source].names():
        raise _unknown_name(name)
    return source, arch


def check_model(params) -> None:
    """Validate model.* (a ModelParams) cheaply: name, arguments, init; no real construction.

    The chosen model is built on the meta device (no memory, no compute) and run on a meta
    32x32 batch, which checks its arguments' names and values at once. Argument sections
    of other models must at least name real models (a typo there is an error too). Freeze
    prefixes are checked against the built model in create_model.
    """
    source, arch = split_name(params.name)
    SOURCES["user"].names()  # a clash in the user package is reported whichever model is chosen
    for src, archs in params.sources().items():
        known = SOURCES[src].names()
        for a in archs or {}:
            if a not in known:
                raise ParamsError(
                    f"model.{src}.{a}",
                    f"no {src} model of that name; arguments live under model.{src}.<arch>",
                    choices=known,
                )
    SOURCES[source].check(arch, params.kwargs_for(), f"model.{source}.{arch}")
    check_init(params.init)
    if params.whiten.enabled:  # the first conv must fit a patch whitening: checked on a meta build
        with torch.device("meta"):
            first_conv(SOURCES[source].build(arch, params.kwargs_for(), 10, f"model.{source}.{arch}"))
    for i, prefix in enumerate(params.freeze):
        if not prefix:
            raise ParamsError(f"model.freeze.{i}", "must be a non-empty parameter-name prefix", prefix)


def build_model(name: str, kwargs: Optional[dict] = None, num_classes: int = 10) -> nn.Module:
    """Build `name` (e.g. 'tutorial.net', 'torchvision.resnet18') for 32x32 inputs."""
    source, arch = split_name(name)
    return SOURCES[source].build(arch, kwargs or {}, num_classes, f"model.{source}.{arch}")


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def create_model(params, num_classes: int = 10, log: Callable[[str], None] = print) -> nn.Module:
    """The model as params say: build, init, load pretrained, freeze, channels_last.

    Order matters: init first (pretrained weights then overwrite what they cover), freeze
    after loading, and the memory format last, since it only changes how weights are stored.
    """
    check_model(params)
    kwargs = params.kwargs_for()
    model = build_model(params.name, kwargs, num_classes)
    n = sum(p.numel() for p in model.parameters())
    shown = f", arguments {kwargs}" if kwargs else ""
    log(f"model: {params.name} ({n:,} parameters, {num_classes} classes{shown})")
    for line in apply_init(model, params.init):
        log(line)
    if params.pretrained:
        log(load_pretrained(model, params.pretrained).summary())
    if params.freeze:
        frozen = set(freeze(model, list(params.freeze)))
        count = sum(p.numel() for name, p in model.named_parameters() if name in frozen)
        log(f"freeze: {len(frozen)} tensors ({count:,} parameters) under {', '.join(params.freeze)}")
    if params.channels_last and _has_conv(model):
        model = model.to(memory_format=torch.channels_last)
        log("channels_last: weights stored NHWC (feed channels_last batches for the fast path)")
    return model
