"""A layer table for any model, from forward hooks on one real (small) forward pass.

Shapes are recorded as they happen rather than computed from the layer definitions, so the
table is right for every architecture, including functional code in forward() and layers
called more than once (each call gets a row; its parameters are counted on the first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _shape(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return str(list(out.shape))
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape(o) for o in out) + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def _count(n: int) -> str:
    return f"{n:,}"


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def layer_rows(model: nn.Module, input_size=(1, 3, 32, 32)) -> tuple[list[tuple[str, str, str, int]], int]:
    """(name, type, output shape, parameters) per call, and the forward FLOPs, for one batch.

    Hooks go on leaf modules and on any module holding parameters directly (ViT's class
    token, position embeddings), so the rows' parameter counts add up to the model's total.
    """
    rows: list[tuple[str, str, str, int]] = []
    counted: set[int] = set()

    def hook(name):
        def record(module, _inputs, output):
            params = 0
            if id(module) not in counted:
                counted.add(id(module))
                params = sum(p.numel() for p in module.parameters(recurse=False))
                if not any(True for _ in module.children()):
                    params = sum(p.numel() for p in module.parameters())
            rows.append((name or "(model)", type(module).__name__, _shape(output), params))

        return record

    handles = []
    for name, module in model.named_modules():
        leaf = not any(True for _ in module.children())
        direct = any(True for _ in module.parameters(recurse=False))
        if leaf or direct:
            handles.append(module.register_forward_hook(hook(name)))
    device, dtype = device_dtype(model)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(torch.zeros(input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows, flops.get_total_flops()


def summarize(model: nn.Module, input_size=(1, 3, 32, 32)) -> str:
    """The layer table plus totals: parameters, trainable, and forward FLOPs for `input_size`."""
    rows, flops = layer_rows(model, input_size)
    header = ("Layer", "Type", "Output shape", "Params")
    table = [header] + [(n, t, s, _count(p)) for n, t, s, p in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]

    def line(r):
        return "  ".join((c.rjust(w) if i == 3 else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "-" * len(line(header))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    seen = sum(p for *_, p in rows)
    out = [line(header), rule] + [line(r) for r in table[1:]] + [rule]
    out.append(f"Total params: {_count(total)}")
    out.append(f"Trainable params: {_count(trainable)}")
    out.append(f"Non-trainable params: {_count(total - trainable)}")
    if seen != total:
        out.append(f"Params in modules the forward pass did not call: {_count(total - seen)}")
    batch = input_size[0] if input_size else 1
    out.append(
        f"Forward FLOPs per image at {list(input_size[1:])}: {flops / max(batch, 1) / 1e6:,.1f} M "
        f"({flops / max(batch, 1) / 2e6:,.1f} M multiply-adds)"
    )
    return "\n".join(out)
