"""Where and how training runs: the device, mixed precision, threads, memory format.

`train.device: auto` picks CUDA, then Apple's MPS, then the CPU. Mixed precision: on CUDA
bf16 where the GPU supports it, else fp16 with a gradient scaler; on a CPU with native bf16
(AMX or AVX512-BF16) bf16 autocast, about twice as fast for these convolutions; on other
CPUs full precision, since emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from cifarlab.errors import ParamsError


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler: enabled only for fp16, where small gradients would underflow."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def to_device(self, x: torch.Tensor, non_blocking: bool = True) -> torch.Tensor:
        return x.to(self.device, non_blocking=non_blocking and self.device.type == "cuda")


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """The device `name` names; errors name `key` (train.device, or visualize.device)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(key, "CUDA is not available on this machine; use auto or cpu", name)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParamsError(key, f"this machine has {torch.cuda.device_count()} CUDA devices", name)
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParamsError(key, "MPS is not available on this machine; use auto or cpu", name)
    return dev


def cpu_has_native_bf16() -> bool:
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    return False


def use_all_cores(world: int = 1) -> None:
    """torch's CPU threads: the cores this process may use (a container's quota, not the host's
    count), shared among the local ranks: oversubscribed OpenMP threads spin against each
    other and training slows down many times over."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(max(1, cores // max(1, local_world)))


def setup_runtime(device: str, amp: bool, threads: int, channels_last: bool, world: int = 1) -> Runtime:
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    elif dev.type == "cpu":
        use_all_cores(world)
    amp_dtype = None
    if amp and dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif amp and dev.type == "cpu" and cpu_has_native_bf16():
        amp_dtype = torch.bfloat16
    return Runtime(dev, amp_dtype, channels_last)
