"""Class activation maps, their boxes, activations before and after the nonlinearity, and the
gradients at each layer's boundaries: the course's other hook kinds, where each one serves.

* CAM (Zhou et al. 2016) needs no gradient: for a net that ends in global pooling and one
  linear layer, the class score is a weighted sum of the pooled feature maps, so the same
  weights applied to the maps themselves show where the evidence lies. A forward pre-hook on
  the linear layer sees its input (the pooled vector), forward hooks see the feature maps,
  and the two are compared to prove the net really pools them (average or max).
* `activation_pair`: a forward pre-hook on the first activation module after a conv sees its
  input (the map before the nonlinearity), a forward hook its output (after).
* `boundary_gradients`: a full backward hook on each conv and linear layer sees the gradient
  at its output and at its input in one call.
* `box`: the bounding box of the largest connected region of a map above a fraction of its
  peak, found with a flood fill (no scipy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.engine.diagnostics import measured_layers

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _normalized(cam: torch.Tensor, size) -> torch.Tensor:
    """ReLU, upsample to the input size, scale to a peak of 1 per image (zero maps stay zero)."""
    cam = F.interpolate(F.relu(cam).unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 1e-12, cam / peak.clamp(min=1e-12), torch.zeros_like(cam)).clamp(0, 1)


@torch.no_grad()
def cam(model: nn.Module, head: str, x: torch.Tensor, target: torch.Tensor) -> tuple[Optional[torch.Tensor], str]:
    """(maps [N, H, W] in 0..1, how) for class `target[i]` of image i, or (None, why not)."""
    linear = model.get_submodule(head)
    if not isinstance(linear, nn.Linear):
        return None, f"the classifier {head} is a {type(linear).__name__}, not one linear layer"
    seen: dict[str, torch.Tensor] = {}
    spatial: list[tuple[str, torch.Tensor]] = []

    def pre_hook(_module, inputs):  # the forward pre-hook: what the classifier is given
        seen.setdefault("head_in", inputs[0].detach().float())

    def keep_map(name):
        def hook(_module, _inputs, output):
            if (
                "head_in" not in seen
                and isinstance(output, torch.Tensor)
                and output.dim() == 4
                and output.shape[-1] * output.shape[-2] > 1
            ):
                spatial.append((name, output.detach().float()))

        return hook

    handles = [linear.register_forward_pre_hook(pre_hook)]
    handles += [m.register_forward_hook(keep_map(n)) for n, m in model.named_modules() if n]
    model.eval()
    with _hooks(handles):
        model(x)
    if "head_in" not in seen or not spatial:
        return None, f"no feature map reaches the classifier {head}"
    name, maps = spatial[-1]  # the last map any module finished before the classifier ran
    vec = seen["head_in"].flatten(1)
    for kind, pool in (("average", maps.mean((2, 3))), ("max", maps.amax((2, 3)))):
        if pool.shape == vec.shape and torch.allclose(pool, vec, rtol=1e-4, atol=1e-5):
            weights = linear.weight.detach().float()[target.to(linear.weight.device)]  # [N, K]
            raw = torch.einsum("nk,nkhw->nhw", weights, maps)
            return _normalized(raw, x.shape[-2:]).cpu(), f"{name}, global {kind} pooling, {head}"
    return None, (
        f"the classifier {head} does not take a global pooling of a feature map "
        f"(its input has {vec.shape[1]} values; the last map, {name}, is {tuple(maps.shape[1:])})"
    )


def box(heat: torch.Tensor, frac: float = 0.2) -> Optional[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), inclusive pixels, around the largest 4-connected region of `heat` >= frac * peak."""
    a = heat.detach().float().cpu().numpy()
    peak = a.max() if a.size else 0.0
    if peak <= 0:
        return None
    mask = a >= frac * peak
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:  # flood fill one region
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    ys, xs = np.nonzero(labels == best)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@torch.no_grad()
def activation_pair(model: nn.Module, conv: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(before [N, C, H, W], after, where) for the first activation that runs after `conv`.

    An activation module is hooked twice: a forward pre-hook keeps its input, a forward hook
    its output. A model that applies its activation as a function (the tutorial's Net calls
    F.relu in forward) has no module to hook: then the conv's output is the map before, and
    ReLU is applied here to give the map after, which the returned text says.
    """
    kept: dict[str, Any] = {}  # tensors, and the activation's name

    def conv_done(_module, _inputs, output):
        kept.setdefault("conv", output.detach().float())

    def pre(name):
        def hook(_module, inputs):
            if "conv" in kept and "before" not in kept:
                kept["before"], kept["name"] = inputs[0].detach().float(), name

        return hook

    def post(name):
        def hook(_module, _inputs, output):
            if kept.get("name") == name and "after" not in kept:
                kept["after"] = output.detach().float()

        return hook

    handles = [model.get_submodule(conv).register_forward_hook(conv_done)]
    for name, m in model.named_modules():
        if isinstance(m, ACTIVATIONS):
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    model.eval()
    with _hooks(handles):
        model(x)
    if "after" in kept and kept["before"].dim() == 4:
        name = kept["name"]
        return (
            kept["before"].cpu(),
            kept["after"].cpu(),
            f"input and output of {name} ({type(model.get_submodule(name)).__name__}), forward pre-hook and forward hook",
        )
    out = kept["conv"]
    return (
        out.cpu(),
        F.relu(out).cpu(),
        f"{conv}'s output, and ReLU applied by cifarlab (the model calls its activation as a function: no module to hook)",
    )


def boundary_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Per conv and linear layer, the norms of d(loss)/d(output) and d(loss)/d(input), from full
    backward hooks (`register_full_backward_hook`). In-place activations must be off (see
    hooks.no_inplace): the hook wraps the layer's output, which an in-place op may not modify.
    The parameters' .grad are left as they were."""
    rows: dict[str, dict] = {}

    def hook(name):
        def record(_module, grad_input, grad_output):
            if name not in rows:
                g_in = grad_input[0]
                rows[name] = {
                    "layer": name,
                    "grad_output_norm": float(grad_output[0].float().norm()),
                    "grad_input_norm": float(g_in.float().norm()) if g_in is not None else float("nan"),
                }

        return record

    names = measured_layers(model)
    handles = [model.get_submodule(n).register_full_backward_hook(hook(n)) for n in names]
    model.eval()
    with _hooks(handles), torch.enable_grad():
        xin = x.detach().requires_grad_(True)
        loss = loss_fn(model(xin).float(), y)
        torch.autograd.grad(loss, [xin])
    order = {n: i for i, n in enumerate(names)}
    return sorted(rows.values(), key=lambda r: order[r["layer"]])
