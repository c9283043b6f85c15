"""Which layers a picture looks at: found by hooks on one probe forward, checked against params.

The visualize stage must work on any model the registry builds, so layer names are never
hard-coded: one forward pass on a tiny batch with a forward hook on every module records
each module's output shape in the order the modules are *called* (which, unlike definition
order, is the order the data flows through them). From that table:

* kernels: any `nn.Conv2d`; `auto` is the first one called (the layer that sees the pixels);
* feature maps and Grad-CAM: any module whose output is an image-like [N, C, H, W] tensor;
  `auto` is three evenly spaced conv layers for feature maps and the last conv for Grad-CAM
  (the deepest layer that still has a spatial map, as the Grad-CAM paper recommends);
* the classifier: the last module with its own parameters that is called, whose input is the
  penultimate-layer feature the embedding projector shows.

A name the model does not have is one `ParamsError` listing the names that would work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.models.summary import device_dtype


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # the module's class name
    shape: Optional[tuple[int, ...]]  # output shape of its first call; None if not a tensor
    conv: bool  # an nn.Conv2d (has 2-D kernels to draw)
    leaf_params: bool  # holds parameters itself (a classifier candidate)

    @property
    def spatial(self) -> bool:
        return self.shape is not None and len(self.shape) == 4 and self.shape[-1] * self.shape[-2] > 0


def probe(model: nn.Module, input_size: Sequence[int] = (2, 3, 32, 32)) -> list[Layer]:
    """Every named module the forward pass calls, in call order, with its output shape."""
    order: dict[str, Layer] = {}
    handles = []

    def hook(name: str):
        def record(module, _inputs, output):
            if name not in order:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                own = any(True for _ in module.parameters(recurse=False))
                order[name] = Layer(name, type(module).__name__, shape, isinstance(module, nn.Conv2d), own)

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    device, dtype = device_dtype(model)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(order.values())


def _pick(layers: list[Layer], value: str, valid: list[str], key: str, what: str) -> str:
    if value in valid:
        return value
    known = {layer.name for layer in layers}
    why = f"layer {value!r} has no {what}" if value in known else f"the model has no layer named {value!r}"
    raise ParamsError(key, f"{why}; valid names, in forward order: {', '.join(valid)} (or auto)")


def kernels_layer(layers: list[Layer], value: str, key: str = "visualize.kernels_layer") -> str:
    """The conv layer whose kernels are drawn; auto: the first conv layer called."""
    convs = [layer.name for layer in layers if layer.conv]
    if not convs:
        raise ParamsError(key, "this model has no nn.Conv2d layer, so it has no kernels to draw", value)
    return convs[0] if value == "auto" else _pick(layers, value, convs, key, "2-D conv kernels (not an nn.Conv2d)")


def spatial_names(layers: list[Layer]) -> list[str]:
    return [layer.name for layer in layers if layer.spatial]


def _conv_or_spatial(layers: list[Layer], key: str) -> list[str]:
    convs = [layer.name for layer in layers if layer.conv and layer.spatial]
    names = convs or spatial_names(layers)
    if not names:
        raise ParamsError(key, "no layer of this model gives an [N, C, H, W] feature map", "auto")
    return names


def feature_layers(layers: list[Layer], value, key: str = "visualize.feature_layers", count: int = 3) -> list[str]:
    """Layers whose feature maps are drawn; auto: `count` evenly spaced conv layers."""
    if value == "auto" or value == ["auto"]:
        names = _conv_or_spatial(layers, key)
        if len(names) <= count:
            return names
        picks = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})
        return [names[i] for i in picks]
    valid = spatial_names(layers)
    return [_pick(layers, v, valid, f"{key}.{i}", "[N, C, H, W] output") for i, v in enumerate(value)]


def gradcam_layer(layers: list[Layer], value: str, key: str = "visualize.gradcam_layer") -> str:
    """The layer Grad-CAM explains; auto: the last conv layer with a spatial output."""
    if value == "auto":
        return _conv_or_spatial(layers, key)[-1]
    return _pick(layers, value, spatial_names(layers), key, "[N, C, H, W] output")


def classifier_layer(layers: list[Layer]) -> str:
    """The last called module with parameters of its own: its input is the penultimate feature."""
    for layer in reversed(layers):
        if layer.leaf_params:
            return layer.name
    raise ParamsError("model.name", "this model has no layer with parameters to take features from")


def class_indices(value: list, classes: list[str], key: str = "visualize.classes") -> list[int]:
    """visualize.classes (indices or names) as sorted indices; [] means every class."""
    if not value:
        return list(range(len(classes)))
    out = []
    for i, c in enumerate(value):
        if isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < len(classes):
                raise ParamsError(
                    f"{key}.{i}",
                    f"class index out of range 0..{len(classes) - 1}",
                    c,
                    [f"{k}={name}" for k, name in enumerate(classes)],
                )
            out.append(c)
        elif c in classes:
            out.append(classes.index(c))
        else:
            raise ParamsError(f"{key}.{i}", f"not a class index (0..{len(classes) - 1}) or name", c, classes)
    return sorted(set(out))
