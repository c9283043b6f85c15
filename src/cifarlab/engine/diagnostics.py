"""Per-layer diagnostics while a model trains: how big each layer's output is, and how big the
gradient flowing back out of it is (the course's weight-initialization lesson, made visible).

For every conv and linear layer, on one fixed batch: the standard deviation of its output
activations (a forward hook keeps the output) and the L2 norm of the gradient of the loss
with respect to that output (a tensor hook, `Tensor.register_hook`, on the kept output).
With a bad initialization the activations' scale grows or shrinks layer after layer and the
gradients follow; with Kaiming or Xavier it stays flat.

Measured so that training cannot tell: the model is put in eval mode (BatchNorm uses and
keeps its running statistics, dropout is off), the RNG states are saved and restored, and
the gradient is asked of `torch.autograd.grad` for the kept outputs only, so no parameter's
`.grad` is written and no optimizer step is taken. The input asks for a gradient, so frozen
layers are measured too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Iterator

import torch
from torch import nn

#: The layers measured: what holds the weights the initialization chose.
MEASURED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FIELDS = ("epoch", "depth", "layer", "activation_std", "gradient_norm")


def measured_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, in definition order."""
    return [name for name, m in model.named_modules() if name and isinstance(m, MEASURED)]


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Whatever runs inside draws no number the training sees afterwards."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def layer_stats(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """[{layer, activation_std, gradient_norm}] for every conv and linear layer the forward calls,
    in call order (a layer called twice: its first call). Leaves the model's mode, its buffers,
    every `.grad` and the RNG as they were."""
    names = measured_layers(model)
    outputs: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    handles = []

    def keep_output(name: str):
        def hook(_module, _inputs, output):
            if name in outputs or not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            outputs[name] = output
            # the tensor hook: called with d(loss)/d(output) when autograd computes it
            output.register_hook(lambda grad: norms.__setitem__(name, float(grad.detach().float().norm())))

        return hook

    was_training = model.training
    with rng_kept(x.device):
        try:
            for name in names:
                handles.append(model.get_submodule(name).register_forward_hook(keep_output(name)))
            model.eval()
            with torch.enable_grad():
                out = model(x.detach().requires_grad_(True))
                loss = loss_fn(out.float(), y)
                kept = list(outputs.values())
                if kept:
                    torch.autograd.grad(loss, kept, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    return [
        {"layer": name, "activation_std": float(t.detach().float().std()), "gradient_norm": norms.get(name, math.nan)}
        for name, t in outputs.items()
    ]


class LayerDiagnostics:
    """The train stage's per-layer record: measured at step 0 (epoch 0) and after every epoch."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        rows: list[dict] | None = None,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.x, self.y = batch
        self.rows = list(rows or [])

    def measure(self, epoch: int) -> list[dict]:
        stats = layer_stats(self.model, self.loss_fn, self.x, self.y)
        rows = [{"epoch": epoch, "depth": d, **s} for d, s in enumerate(stats)]
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + rows
        return rows


def layers_csv(rows: list[dict]) -> str:
    """reports/train/layers.csv: one line per epoch and layer (long format: any model's layers fit)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})
    return buf.getvalue()


def fixed_batch(source, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` images of a validation source's first batch: the same images every epoch."""
    x, y = next(iter(source.batches(0)))
    if x.dim() == 5:  # multi-crop evaluation batches: their first crop
        x = x[:, 0]
    return x[:size], y[:size]
