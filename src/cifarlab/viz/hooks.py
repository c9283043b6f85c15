"""What happens inside a model, seen through hooks: feature maps, features, Grad-CAM, gradients.

Hooks rather than rewriting forward(): a forward hook sees a module's input and output on
any architecture (torchvision's, the tutorial's, functional code in forward()), and a hook
on the captured output tensor sees the gradient flowing back into it. Every hook is removed
in a `finally`, so a failed pass never leaves one behind on the model.

Models here are copies loaded for visualization: `no_inplace` turns in-place activations
off, so a captured activation is not overwritten by the next ReLU and autograd can hook it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def no_inplace(model: nn.Module) -> nn.Module:
    """Turn off `inplace` on every module that has it (ReLU(inplace=True) and friends)."""
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # pyright: ignore[reportArgumentType]  # any value goes; torch annotates Tensor | Module
    return model


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each named module's output of its first call per forward lands in the dict."""
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def record(_module, _inputs, output):
            if name not in store and isinstance(output, torch.Tensor):
                store[name] = output.detach().float().clone()

        return record

    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def feature_maps(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs [N, C, H, W] of the named layers for a batch (the tutorial's 4.3, on any model)."""
    model.eval()
    with torch.no_grad(), capture_outputs(model, names) as store:
        model(x)
    return {name: store[name].cpu() for name in names}


def pooled(features: torch.Tensor) -> torch.Tensor:
    """A classifier's input as one vector per image: spatial maps averaged, tokens averaged."""
    if features.dim() == 4:
        return features.mean((2, 3))
    if features.dim() == 3:
        return features.mean(1)
    return features.flatten(1)


@contextlib.contextmanager
def capture_inputs(model: nn.Module, name: str) -> Iterator[list[torch.Tensor]]:
    """Within the block, the (pooled) input of the named module is appended per forward call."""
    seen: list[torch.Tensor] = []

    def record(_module, inputs, _output):
        seen.append(pooled(inputs[0].detach().float()))

    handle = model.get_submodule(name).register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) maps [N, H, W] in 0..1 for class `target[i]` of image i.

    A forward hook keeps the layer's activations A [N, K, h, w] and puts a tensor hook
    (`Tensor.register_hook`) on them, which receives the gradient of the class score as it
    flows back through A; each channel's weight is that gradient averaged over the map, and
    the map is ReLU(sum_k weight_k * A_k), upsampled to the input size and scaled to a
    maximum of 1 per image (all zero where nothing speaks for the class). The backward pass
    is asked of autograd for the input only, so the parameters' .grad stay untouched.
    Returns (maps, logits).
    """
    saved: dict[str, torch.Tensor] = {}

    def forward_hook(_module, _inputs, output):
        if "act" in saved:  # a module called twice: explain its first call
            return
        saved["act"] = output
        output.register_hook(lambda grad: saved.setdefault("grad", grad.detach()))

    model.eval()
    handle = model.get_submodule(layer).register_forward_hook(forward_hook)
    try:
        with torch.enable_grad():
            # an input that wants a gradient makes every activation want one, frozen layers or not
            xin = x.detach().requires_grad_(True)
            logits = model(xin)
            score = logits.float().gather(1, target.view(-1, 1).to(logits.device)).sum()
            torch.autograd.grad(score, [xin])  # on its way to the input it passes A: the hook fires
    finally:
        handle.remove()
    grad = saved["grad"]
    act, grad = saved["act"].detach().float(), grad.float()
    weights = grad.mean((2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.clamp(0, 1).cpu(), logits.detach().float().cpu()


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each parameter's gradient of the cross-entropy on one batch (the tutorial's 4.4).

    Asked of autograd directly, so the model's own .grad fields are left as they were.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return {}
    model.eval()
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y.to(x.device))
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {name: g.detach().float().cpu() for (name, _), g in zip(named, grads) if g is not None}
