"""torchvision's classification models, adapted to CIFAR-10: 32x32 inputs and 10 classes.

Every name in `torchvision.models.list_models(module=torchvision.models)` is offered as
`torchvision.<name>`. The ImageNet models downsample 224x224 inputs 32 times (to 7x7), which
would shrink a 32x32 image to 1x1 (or break the net) long before the classifier; each model
class therefore has a `Family` entry saying what changes, found by the builder's return type
rather than by name, so new builders of a known class work unchanged:

* conv nets: the stem's stride-2 (or stride-4) first conv becomes stride 1 (a 3x3 conv where
  the kernel was 7x7 or 11x11) and a stem max-pool is dropped, the usual CIFAR stem;
* transformers: ViT and Swin are built for 32x32 images with a patch size that divides 32,
  MaxViT for a geometry its partitions can tile.

How: the builder runs as usual (weights=None, the user's keyword arguments), but its call to
the model class is intercepted (`_intercept`) so that arguments the builder fixes for
ImageNet (ViT's patch size, Swin's window) can be overridden, then `Family.adapt` edits the
built model in place (strides, replaced stem convs). Keyword arguments from params go to the
builder; `weights`/`pretrained` are refused: nothing is ever downloaded, pretrained weights
come only from a local file (model.pretrained). `check` builds on the `meta` device and runs
a meta forward pass on a 32x32 batch, which validates names and values without allocating.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
import torchvision.models as tvm
from torch import nn

from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError

SIZE = 32

#: Builder arguments that params may not set, and why.
RESERVED = {
    "weights": "pretrained weights are never downloaded; give a local state-dict file as model.pretrained instead",
    "pretrained": "torchvision's old spelling of weights, which would download; give a local "
    "state-dict file as model.pretrained instead",
    "progress": "nothing is downloaded, so there is no progress to show",
    "num_classes": "set by the data (10 for CIFAR-10)",
}


def names() -> list[str]:
    """Every classification model name torchvision knows (no detection, video, ...)."""
    return sorted(tvm.list_models(module=tvm))


# --------------------------------------------------------------------------- surgery helpers


def _stride1(conv: nn.Conv2d, padding: Optional[int] = None) -> None:
    """Make a conv stride 1 in place, keeping its weights (and set padding if given)."""
    conv.stride = (1, 1)
    if padding is not None:
        conv.padding = (padding, padding)


def _kaiming_out(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


def _trunc_normal(w: torch.Tensor) -> None:
    nn.init.trunc_normal_(w, std=0.02)


def _kaiming_uniform(w: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(w)


def _new_conv(
    old: nn.Conv2d,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    init: Callable[[torch.Tensor], object] = _kaiming_out,  # torch.nn.init's return the tensor
) -> nn.Conv2d:
    """A conv with `old`'s channels but a CIFAR-sized kernel, initialised as the family does."""
    conv = nn.Conv2d(
        old.in_channels,
        old.out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    init(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# ------------------------------------------------------------------------- the adaptations


def _nothing(model: nn.Module, extras: dict) -> None:
    pass


def _resnet(m, _):
    m.conv1 = _new_conv(m.conv1)
    m.maxpool = nn.Identity()


def _alexnet(m, _):
    m.features[0] = _new_conv(m.features[0])


def _convnext(m, _):
    stem = m.features[0][0]
    m.features[0][0] = _new_conv(stem, kernel_size=2, stride=2, padding=0, init=_trunc_normal)


def _densenet(m, _):
    m.features.conv0 = _new_conv(m.features.conv0, init=nn.init.kaiming_normal_)
    m.features.pool0 = nn.Identity()


def _first_stride1(path: str):
    """Adapter that makes the conv at dotted `path` stride 1 (the mobile nets' stems)."""

    def adapt(m, _):
        _stride1(m.get_submodule(path))

    return adapt


def _googlenet(m, _):
    m.conv1.conv = _new_conv(m.conv1.conv, init=lambda w: nn.init.trunc_normal_(w, 0, 0.01, -2, 2))
    m.maxpool1 = nn.Identity()


def _inception(m, _):
    _stride1(m.Conv2d_1a_3x3.conv, padding=1)
    m.Conv2d_2a_3x3.conv.padding = (1, 1)
    m.Conv2d_4a_3x3.conv.padding = (1, 1)
    m.maxpool1 = nn.Identity()


def _maxvit(m, _):
    _stride1(m.stem[0][0])


def _shufflenet(m, _):
    _stride1(m.conv1[0])
    m.maxpool = nn.Identity()


def _squeezenet(m, _):
    m.features[0] = _new_conv(m.features[0], init=_kaiming_uniform)


def _vgg(m, _):
    old = m.classifier[0]
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier[0] = nn.Linear(
        old.in_features // 49, old.out_features, device=old.weight.device, dtype=old.weight.dtype
    )
    nn.init.normal_(m.classifier[0].weight, 0, 0.01)
    nn.init.zeros_(m.classifier[0].bias)


def _divides(name: str, what: str):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or SIZE % value:
            divisors = [d for d in range(1, SIZE + 1) if SIZE % d == 0]
            return f"{what} must divide the {SIZE}x{SIZE} image", divisors
        return None

    return check


def _one_of(values: tuple, reason: str):
    def check(value):
        return None if value in values and not isinstance(value, bool) else (reason, list(values))

    return check


def _refuse_aux(reason: str):
    def check(value):
        return (reason, [False]) if value else None

    return check


@dataclass(frozen=True)
class Family:
    """How the models of one torchvision class are made to work at 32x32.

    adapt: edits the built model in place (stem strides, replaced convs).
    extras: our own keyword arguments with their defaults (e.g. ViT's patch_size).
    constructor: maps the extras to model-class arguments that override the builder's.
    defaults: builder arguments we default differently (e.g. aux_logits=False).
    settable: arguments the builder consumes itself rather than passing to the class.
    fixed: arguments the adaptation sets, with the reason they cannot be given.
    checks: per-argument value checks returning (reason, choices) when the value is refused.
    builder_on_cpu: the builder computes with torch ops (RegNet), so it must not run on meta.
    """

    why: str
    adapt: Callable[[nn.Module, dict], None] = _nothing
    extras: dict = field(default_factory=dict)
    constructor: Optional[Callable[[dict], dict]] = None
    defaults: dict = field(default_factory=dict)
    settable: tuple = ()
    fixed: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    builder_on_cpu: bool = False


_AUX_GOOGLENET = (
    "in training GoogLeNet then returns (logits, aux2, aux1) instead of one logits tensor, "
    "which the training loss cannot use"
)
_AUX_INCEPTION = (
    "Inception-v3's auxiliary head needs Mixed_6e maps of at least 17x17 (its 5x5 avg-pool "
    "stride 3 then a 5x5 conv); a 32x32 input gives 7x7 there, and in training the model "
    "would return a tuple the loss cannot use"
)

FAMILIES: dict[str, Family] = {
    "AlexNet": Family("first conv 11x11 stride 4 -> 3x3 stride 1", _alexnet),
    "ConvNeXt": Family(
        "patchify stem 4x4 stride 4 -> 2x2 stride 2 (16x16 -> 2x2 maps)",
        _convnext,
        settable=("stochastic_depth_prob",),
    ),
    "DenseNet": Family("stem conv 7x7 stride 2 -> 3x3 stride 1, stem max-pool dropped", _densenet),
    "EfficientNet": Family("stem conv stride 2 -> 1", _first_stride1("features.0.0"), settable=("dropout",)),
    "GoogLeNet": Family(
        "conv1 7x7 stride 2 -> 3x3 stride 1, maxpool1 dropped; aux_logits off",
        _googlenet,
        defaults={"aux_logits": False, "init_weights": True},
        checks={"aux_logits": _refuse_aux(_AUX_GOOGLENET)},
    ),
    "Inception3": Family(
        "Conv2d_1a stride 2 -> 1, unpadded 3x3 convs padded, maxpool1 dropped; aux_logits off",
        _inception,
        defaults={"aux_logits": False, "init_weights": True},
        checks={"aux_logits": _refuse_aux(_AUX_INCEPTION)},
    ),
    "MaxVit": Family(
        "built for the geometry of a 64x64 input with partition_size 2, then its stem made "
        "stride 1, so a 32x32 input tiles 16/8/4/2 maps (partition_size must divide them: 1 or 2)",
        _maxvit,
        extras={"partition_size": 2},
        checks={"partition_size": _one_of((1, 2), "the partitions must tile the last block's 2x2 maps")},
        constructor=lambda e: {"input_size": (2 * SIZE,) * 2, "partition_size": e["partition_size"]},
        fixed={"input_size": "set by the 32x32 adaptation"},
    ),
    "MNASNet": Family("stem conv stride 2 -> 1", _first_stride1("layers.0")),
    "MobileNetV2": Family("stem conv stride 2 -> 1", _first_stride1("features.0.0")),
    "MobileNetV3": Family(
        "stem conv stride 2 -> 1",
        _first_stride1("features.0.0"),
        settable=("width_mult", "reduced_tail", "dilated"),
    ),
    "RegNet": Family("stem conv stride 2 -> 1", _first_stride1("stem.0"), builder_on_cpu=True),
    "ResNet": Family("stem conv 7x7 stride 2 -> 3x3 stride 1, max-pool dropped", _resnet),
    "ShuffleNetV2": Family("stem conv stride 2 -> 1, max-pool dropped", _shufflenet),
    "SqueezeNet": Family("first conv (7x7 or 3x3) stride 2 -> 3x3 stride 1", _squeezenet),
    "SwinTransformer": Family(
        "patch_size 4 -> 2 and window_size 7 -> 4 (16x16 tokens, then 8, 4, 2)",
        extras={"patch_size": 2, "window_size": 4},
        constructor=lambda e: {
            "patch_size": [e["patch_size"]] * 2,
            "window_size": [e["window_size"]] * 2,
        },
        checks={"patch_size": _divides("patch_size", "the patch size")},
    ),
    "VGG": Family(
        "the 7x7 adaptive pool over a 1x1 map -> a 1x1 pool, first classifier layer 512 inputs",
        _vgg,
    ),
    "VisionTransformer": Family(
        "image_size 224 -> 32 and patch_size -> 4 (64 tokens); patch_size must divide 32",
        extras={"patch_size": 4},
        constructor=lambda e: {"image_size": SIZE, "patch_size": e["patch_size"]},
        fixed={"image_size": "set to 32 by the CIFAR-10 adaptation"},
        checks={"patch_size": _divides("patch_size", "the patch size")},
    ),
}


def builder_and_class(arch: str) -> tuple[Callable[..., nn.Module], type]:
    """torchvision's builder for `arch` and the model class it returns (its annotation)."""
    builder = tvm.get_model_builder(arch)
    cls = inspect.signature(builder).return_annotation
    if isinstance(cls, str):  # postponed annotations: resolve in the builder's module
        cls = inspect.unwrap(builder).__globals__.get(cls)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise RuntimeError(f"torchvision.models.{arch}: cannot tell which model class it builds")
    return builder, cls


def family_of(arch: str) -> Optional[Family]:
    return FAMILIES.get(builder_and_class(arch)[1].__name__)


# ------------------------------------------------------------------------ the interception

_LOCK = threading.RLock()


@contextmanager
def _intercept(builder, cls, overrides: dict, *, allowed_extra: tuple, captured: set, on_cpu: bool):
    """Route the builder's call of `cls` through a function that can override arguments.

    torchvision builders fix some class arguments for ImageNet (ViT's patch_size, Swin's
    window_size) and pass them explicitly, so the only way to change them while still using
    the builder's other settings is to intercept the class call. The names the builder
    passed are recorded in `captured`. Keyword arguments that would land in a class's
    catch-all **kwargs (MobileNetV3 silently ignores them) are refused unless listed in
    `allowed_extra`, so a typo is never silently dropped.
    """
    scope = inspect.unwrap(builder).__globals__  # the builder's module, past its decorators
    name = cls.__name__
    if scope.get(name) is not cls:
        raise RuntimeError(f"{builder.__module__} does not refer to {name} by name")
    signature = inspect.signature(cls)
    var_kw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    ambient = torch.empty(()).device  # where the caller builds: cpu, or meta under torch.device

    def construct(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        captured.update(k for k in bound.arguments if k != var_kw)
        if var_kw:
            captured.update(bound.arguments.get(var_kw, {}))
            stray = sorted(set(bound.arguments.get(var_kw, {})) - set(allowed_extra))
            if stray:
                raise TypeError(f"{name}() got an unexpected keyword argument '{stray[0]}'")
        bound.arguments.update(overrides)
        with torch.device(ambient):
            return cls(*bound.args, **bound.kwargs)

    # Some builders compute with torch ops and read the results back (RegNet's width schedule
    # calls .item()), which fails on `meta`: those run on the CPU and only the class
    # construction on the caller's device. Others (VGG) build layers before calling the class,
    # so by default the builder runs on the caller's device too.
    with _LOCK, torch.device("cpu" if on_cpu else ambient):
        scope[name] = construct
        try:
            yield
        finally:
            scope[name] = cls


# ------------------------------------------------------------------------------ public API


def _build(arch: str, kwargs: dict, num_classes: int, captured: Optional[set] = None) -> nn.Module:
    builder, cls = builder_and_class(arch)
    family = FAMILIES.get(cls.__name__, Family("no adaptation known"))
    user = dict(kwargs)
    extras = {k: user.pop(k, default) for k, default in family.extras.items()}
    call = {**family.defaults, **user, "num_classes": num_classes}
    overrides = family.constructor(extras) if family.constructor else {}
    captured = set() if captured is None else captured
    with _intercept(
        builder, cls, overrides, allowed_extra=family.settable, captured=captured, on_cpu=family.builder_on_cpu
    ):
        model = builder(weights=None, **call)
    family.adapt(model, extras)
    return model


def _yaml_friendly(p: inspect.Parameter) -> bool:
    """False for arguments that take Python objects (norm_layer, block...): not for params."""
    text = str(p.annotation)
    return not any(word in text for word in ("Callable", "Module", "Config", "type["))


@functools.cache
def accepted(arch: str) -> tuple[str, ...]:
    """The keyword arguments params may give for `arch`, found via inspect.signature.

    The model class's named arguments, less those the builder fixes (found by intercepting
    a meta-device build), those reserved (weights, num_classes...) and those the adaptation
    sets; plus the arguments the builder itself consumes and our own extras.
    """
    builder, cls = builder_and_class(arch)
    family = FAMILIES.get(cls.__name__, Family("no adaptation known"))
    captured: set = set()
    with torch.device("meta"):
        _build(arch, {}, 10, captured)
    named = {
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and _yaml_friendly(p)
    }
    builder_named = {
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    free = set(family.settable) | set(family.defaults) | set(family.extras)
    fixed = captured - free
    names_ = ((named | builder_named) - fixed) | free
    return tuple(sorted(names_ - set(RESERVED) - set(family.fixed)))


def _precheck(arch: str, kwargs: dict, key: str) -> None:
    """Refusals that need no build: reserved or fixed arguments, refused values."""
    family = family_of(arch) or Family("no adaptation known")
    for name, value in kwargs.items():
        if name in RESERVED:
            raise ParamsError(f"{key}.{name}", RESERVED[name], value)
        if name in family.fixed:
            raise ParamsError(f"{key}.{name}", family.fixed[name], value)
        check = family.checks.get(name)
        refused = check(value) if check else None
        if refused:
            reason, choices = refused
            raise ParamsError(f"{key}.{name}", reason, value, choices)


_TYPE_ERROR = re.compile(r"(unexpected keyword |multiple values for (?:keyword )?)argument '(\w+)'")


def _params_error(arch: str, kwargs: dict, key: str, exc: Exception) -> ParamsError:
    match = _TYPE_ERROR.search(str(exc)) if isinstance(exc, TypeError) else None
    if match and match.group(1).startswith("unexpected"):
        return ParamsError(
            f"{key}.{match.group(2)}",
            f"unknown argument of torchvision.models.{arch}",
            kwargs.get(match.group(2)),
            choices=accepted(arch),
        )
    if match:
        return ParamsError(
            f"{key}.{match.group(2)}",
            f"fixed by torchvision's {arch} builder (it defines the architecture); choose another model name instead",
            kwargs.get(match.group(2)),
            choices=accepted(arch),
        )
    return ParamsError(
        key, f"torchvision.models.{arch} does not accept these arguments at {SIZE}x{SIZE}: {type(exc).__name__}: {exc}"
    )


def build(arch: str, kwargs: Optional[dict] = None, num_classes: int = 10, key: Optional[str] = None) -> nn.Module:
    """Build torchvision's `arch` (weights=None) adapted to 32x32 inputs and `num_classes`."""
    key = key or f"model.torchvision.{arch}"
    kwargs = dict(kwargs or {})
    _precheck(arch, kwargs, key)
    try:
        return _build(arch, kwargs, num_classes)
    except (*TORCH_ARGUMENT_ERRORS, AssertionError, KeyError, IndexError) as exc:
        raise _params_error(arch, kwargs, key, exc) from None


def check(arch: str, kwargs: Optional[dict] = None, key: Optional[str] = None) -> None:
    """Validate `kwargs` for `arch` with a meta-device build and a meta 32x32 forward pass.

    Costs no memory or real compute, so even the largest models are checked in well under a
    second; raises ParamsError naming the key at fault.
    """
    key = key or f"model.torchvision.{arch}"
    with torch.device("meta"):
        model = build(arch, kwargs, 10, key)
        try:
            out = model.eval()(torch.empty(2, 3, SIZE, SIZE))
        except (*TORCH_ARGUMENT_ERRORS, AssertionError) as exc:
            raise ParamsError(
                key,
                f"torchvision.models.{arch} does not work at {SIZE}x{SIZE} with these "
                f"arguments: {type(exc).__name__}: {exc}",
            ) from None
    if tuple(out.shape) != (2, 10):
        raise ParamsError(
            key,
            f"torchvision.models.{arch} gives {tuple(out.shape)} logits for "
            f"a (2, 3, {SIZE}, {SIZE}) batch, not (2, 10)",
        )
