"""Will this training fit in memory? An estimate checked before the first step.

A batch size or a model too large for the device otherwise fails minutes in, as a CUDA
out-of-memory error deep in a backward pass or, on the CPU, as the kernel's OOM killer
ending the process without a word. `check_training_memory` turns that into one
`ParamsError` naming `train.batch_size`, the estimate, what is available and the largest
batch size that fits, before any training starts.

The estimate, in bytes, for one training process:

* parameters and buffers, as stored;
* gradients: one per trainable parameter;
* optimizer state: per trainable parameter byte, 1 for SGD's momentum, 2 for Adam-likes
  (exp_avg and exp_avg_sq), 2*history_size+2 for L-BFGS, ... (`OPTIMIZER_STATE`);
* activations saved for the backward pass, *measured*: the model runs one forward pass on
  a batch of 2 and of 4 on the ``meta`` device (shapes only: no memory, no compute), with
  `torch.autograd.graph.saved_tensors_hooks` counting every distinct tensor autograd keeps.
  The difference is the per-image cost, scaled by the batch size; what does not grow with
  the batch (casts of the weights, ...) is counted once;
* with mixed precision (a 16-bit `amp_dtype`), autocast keeps a 16-bit copy of the weights
  and most saved activations are 16-bit: measured on CPU autocast, about 0.56x of the fp32
  activations for a ViT and 0.5x for a ResNet; 0.6x is used;
* times `SAFETY` (1.25) for what the estimate does not see: activation gradients alive
  during the backward pass, the loss, allocator fragmentation;
* plus `RUNTIME_OVERHEAD` (256 MiB): kernel workspaces and one-time allocations of the first
  steps (70 to 200 MiB measured on the CPU).

Checked against the peak memory of real training steps on the CPU (RSS, 3 steps): resnet8
batch 2048 SGD 1.71 GiB measured / 1.93 GiB estimated before the overhead (bf16 autocast 1.06 /
1.16), torchvision resnet18 batch 512 Adam 2.61 / 3.01 (bf16 1.66 / 1.92), vit_b_16 batch 96
AdamW bf16 4.21 / 4.87: 10 to 20% above, as a check that refuses to start should be.

The check fails when the estimate exceeds `FRACTION` (90%) of what is available: free CUDA
memory (`torch.cuda.mem_get_info`), or on the CPU `MemAvailable` from /proc/meminfo (psutil
elsewhere), lowered to a cgroup's memory limit where one applies.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from cifarlab.errors import ParamsError

SAFETY = 1.25
RUNTIME_OVERHEAD = 256 * 2**20
FRACTION = 0.9
AMP_ACTIVATION_FACTOR = 0.6
LBFGS_HISTORY = 100  # torch.optim.LBFGS's default history_size

#: Optimizer state in bytes per trainable-parameter byte (torch.optim's default arguments;
#: momentum or amsgrad, when set, add at most one more buffer, which SAFETY covers).
OPTIMIZER_STATE = {
    "SGD": 1.0,  # momentum_buffer
    "Adam": 2.0,
    "AdamW": 2.0,
    "Adamax": 2.0,
    "NAdam": 2.0,
    "RAdam": 2.0,
    "SparseAdam": 2.0,
    "Adadelta": 2.0,
    "Rprop": 2.0,
    "RMSprop": 2.0,  # square_avg, plus momentum/grad_avg when set
    "Adagrad": 1.0,
    "ASGD": 1.0,
    "Muon": 1.0,
    "Adafactor": 0.1,  # factored second moments: rows + columns, not the full matrix
    "LBFGS": 2.0 * LBFGS_HISTORY + 2.0,  # old_dirs and old_stps, each up to history_size flat copies
}
DEFAULT_STATE = 2.0  # an optimizer not listed: as much as Adam


@dataclass
class MemoryEstimate:
    """The parts of `estimate_training_bytes`, in bytes (before the safety factor)."""

    parameters: int
    gradients: int
    optimizer_state: int
    fixed_activations: int  # what the forward pass keeps whatever the batch size
    per_sample_activations: int  # what it keeps per image
    batch_size: int
    safety: float = SAFETY
    runtime: int = RUNTIME_OVERHEAD

    @property
    def fixed(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.fixed_activations

    def total_for(self, batch_size: int) -> int:
        return math.ceil((self.fixed + self.per_sample_activations * batch_size) * self.safety) + self.runtime

    @property
    def total(self) -> int:
        return self.total_for(self.batch_size)

    def max_batch_size(self, budget: float) -> int:
        """The largest batch size whose estimate stays within `budget` bytes (0 if none)."""
        room = (budget - self.runtime) / self.safety - self.fixed
        if room <= 0:
            return 0
        if self.per_sample_activations <= 0:
            return self.batch_size
        return int(room // self.per_sample_activations)

    def describe(self) -> str:
        activations = self.fixed_activations + self.per_sample_activations * self.batch_size
        return (
            f"parameters {gib(self.parameters)}, gradients {gib(self.gradients)}, optimizer state "
            f"{gib(self.optimizer_state)}, activations {gib(activations)} "
            f"({gib(self.per_sample_activations)} per image), x{self.safety:g} margin, "
            f"{gib(self.runtime)} runtime overhead"
        )


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _saved_for_backward(model: nn.Module, batch: int, input_shape: tuple[int, ...], device: str = "meta") -> int:
    """Bytes of the distinct tensors autograd saves in one training-mode forward pass.

    On the meta device the model's weights are replaced by meta tensors of the same shapes
    (torch.func.functional_call), so nothing is allocated or computed; on "cpu" the model
    runs for real (the fallback for a model whose forward pass needs real values).
    """
    if device == "meta":
        params = {
            n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad) for n, p in model.named_parameters()
        }
        buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
    else:
        params, buffers = dict(model.named_parameters()), {n: b.clone() for n, b in model.named_buffers()}
    own = {t.untyped_storage()._cdata for t in (*params.values(), *buffers.values())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key, size = storage._cdata, storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (a subclass)
            key, size = id(t), t.numel() * t.element_size()
        if key not in own:
            seen.setdefault(key, size)
        return t

    x = torch.zeros(batch, *input_shape, device=device)
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(model, {**params, **buffers}, (x,))  # buffers are copies: BN stats stay put
    finally:
        model.train(was_training)
    return sum(seen.values())


def _activations(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(fixed, per-image) bytes saved for backward, from batches of 2 and 4 (BatchNorm needs 2)."""
    for device in ("meta", "cpu"):
        try:
            two = _saved_for_backward(model, 2, input_shape, device)
            four = _saved_for_backward(model, 4, input_shape, device)
        except Exception:  # a forward pass that needs real values: try for real
            continue
        per_sample = max((four - two) // 2, 0)
        return max(two - 2 * per_sample, 0), per_sample
    return 0, 0  # the model cannot run on a bare batch here; training will say why


def estimate(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...] = (3, 32, 32),
    amp_dtype: Optional[torch.dtype] = None,
    optimizer_name: Optional[str] = None,
) -> MemoryEstimate:
    """The estimate's parts (see the module docstring); `optimizer_name` None assumes Adam's state."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    parameters = _nbytes(model.parameters()) + _nbytes(model.buffers())
    gradients = _nbytes(trainable)
    state = OPTIMIZER_STATE.get(optimizer_name, DEFAULT_STATE) if optimizer_name else DEFAULT_STATE
    optimizer_state = int(gradients * state)
    fixed, per_sample = _activations(model, tuple(input_shape))
    if amp_dtype is not None and torch.finfo(amp_dtype).bits == 16:
        per_sample = int(per_sample * AMP_ACTIVATION_FACTOR)
        fixed = (
            int(fixed * AMP_ACTIVATION_FACTOR) + _nbytes(p for p in model.parameters() if p.is_floating_point()) // 2
        )
    return MemoryEstimate(parameters, gradients, optimizer_state, fixed, per_sample, batch_size)


def estimate_training_bytes(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...] = (3, 32, 32),
    amp_dtype: Optional[torch.dtype] = None,
    *,
    optimizer_name: Optional[str] = None,
) -> int:
    """Bytes one training process needs for `model` at `batch_size`, with the safety margin."""
    return estimate(model, batch_size, input_shape, amp_dtype, optimizer_name).total


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> Optional[int]:
    """Room left under this process's cgroup memory limit (v2, then v1), if it has one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return max(limit - usage, 0)
    return None


def cpu_available_bytes() -> Optional[int]:
    """MemAvailable (Linux), else psutil's available memory; lowered to a cgroup limit."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        with contextlib.suppress(ImportError):
            import psutil  # lazy: optional (not a dependency), the fallback when /proc/meminfo is missing

            available = int(psutil.virtual_memory().available)
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


def available_bytes_on(device: torch.device | str) -> tuple[Optional[int], str]:
    """(bytes free for training on `device`, where that figure comes from); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    if device.type == "mps":
        with contextlib.suppress(AttributeError, RuntimeError):  # AttributeError: a torch without torch.mps
            mps = torch.mps
            return (
                int(mps.recommended_max_memory() - mps.driver_allocated_memory()),
                "left of MPS's recommended working set",
            )
    where = "MemAvailable in /proc/meminfo" if os.path.exists("/proc/meminfo") else "available system memory"
    return cpu_available_bytes(), where


def check_training_memory(
    model: nn.Module,
    batch_size: int,
    optimizer_name: Optional[str],
    device: torch.device | str,
    available_bytes: Optional[int] = None,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    input_shape: tuple[int, ...] = (3, 32, 32),
    extra_bytes: int = 0,
    processes: int = 1,
    fraction: float = FRACTION,
) -> MemoryEstimate:
    """Raise ParamsError('train.batch_size') when training would not fit in `fraction` of the memory.

    `available_bytes` defaults to what the device has free now; `extra_bytes` is memory the
    run will also hold there (the training images, on the tensor path); `processes` is how
    many ranks share that memory (CPU DDP). Returns the estimate when it fits, so the caller
    may log it. Where the available memory cannot be found, nothing is checked.
    """
    est = estimate(model, batch_size, input_shape, amp_dtype, optimizer_name)
    where = "given"
    if available_bytes is None:
        available_bytes, where = available_bytes_on(device)
        if available_bytes is None:
            return est
        if torch.device(device).type == "cpu" and processes > 1:
            available_bytes //= processes
            where += f", shared by {processes} processes"
    budget = fraction * available_bytes - extra_bytes
    if est.total <= budget:
        return est
    fits = est.max_batch_size(budget)
    advice = (
        f"lower train.batch_size to {fits} or less"
        if fits >= 1
        else "even a batch of 1 does not fit: choose a smaller model (model.name), a lighter optimizer "
        "(optimizer.name), or a device with more memory (train.device)"
    )
    extra = f" plus {gib(extra_bytes)} of data held there" if extra_bytes else ""
    raise ParamsError(
        "train.batch_size",
        f"training this model with batch size {batch_size} and {optimizer_name or 'its optimizer'} needs about "
        f"{gib(est.total)} ({est.describe()}){extra}, but {torch.device(device)} has {gib(available_bytes)} "
        f"available ({where}) and the check allows {fraction:.0%} of it; {advice}",
        batch_size,
    )
