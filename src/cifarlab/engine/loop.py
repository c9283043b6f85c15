"""The epoch loop, in the style of torchvision's reference scripts: train_one_epoch, evaluate.

Batches come from a `BatchSource`: either the in-memory fast path (every image decoded once
into a uint8 tensor on the device, augmented as whole batches) or a DataLoader (per-sample
torchvision transforms, or the tutorial's per-image PIL path). The loop itself does not
care which, and a distributed run only changes which indices a rank draws.

Loss sums stay on the device and are read once per epoch, so a GPU never waits on a
per-step `.item()`; a non-finite loss is recorded (first bad step) the same way and stops
training at the end of the epoch, before anything is saved from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Optional, cast

import torch
from torch import nn

from cifarlab.engine.device import Runtime
from cifarlab.engine.tta import with_tta
from cifarlab.errors import CifarlabError


class NonFiniteLoss(CifarlabError):
    pass


@dataclass
class Dist:
    """This process's place in a distributed run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1
    reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)  # sums across ranks

    @property
    def main(self) -> bool:
        return self.rank == 0


def epoch_permutation(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of epoch `epoch`'s shuffled order, as DistributedSampler deals it.

    Derived from (seed, epoch) alone, so a resumed run sees the same order as an
    uninterrupted one without saving any generator state.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if world > 1:
        total = math.ceil(n / world) * world
        perm = torch.cat([perm, perm[: total - n]])[rank::world]
    return perm


#: Images augmented per call on the fast path: small batches (the tutorial's 16) are cut from
#: a chunk of about this many, so the augmentation's fixed per-call cost (a dozen small tensor
#: ops, about 0.4 ms on a CPU) is paid once per chunk instead of once per step.
AUGMENT_CHUNK = 1024


@dataclass
class TensorSource:
    """The fast path: uint8 images held on the device, augmented a chunk of batches at a time."""

    images: torch.Tensor  # uint8 [N, 3, H, W], on the device
    labels: torch.Tensor  # int64 [N], on the device
    augment: Callable  # (uint8 batch, generator) -> float batch
    batch_size: int
    seed: int
    shuffle: bool = True
    rank: int = 0
    world: int = 1
    chunk: int = AUGMENT_CHUNK
    channels_last: bool = False  # convert each chunk once, not each batch
    #: keep the batches when every epoch's are the same (unshuffled, no random op): validation
    #: then costs its forward passes only, about a third less at the tutorial's Net
    keep: bool = False
    _kept: Optional[list] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        # a BatchAugment precomputes what it can for these images (see BatchAugment.bind)
        bind = getattr(self.augment, "bind", None)
        self.take = bind(self.images) if bind is not None else (lambda idx, g: self.augment(self.images[idx], g))

    def __len__(self) -> int:
        n = math.ceil(len(self.labels) / self.world) if self.shuffle else len(self.labels)
        return math.ceil(n / self.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.keep and not self.shuffle and not getattr(self.augment, "random", True):
            if self._kept is None:
                self._kept = list(self._make(epoch))
            return iter(self._kept)
        return self._make(epoch)

    def _make(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = epoch_permutation(n, self.seed, epoch, self.rank, self.world).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        g = torch.Generator(device=self.images.device).manual_seed(self.seed * 7919 + epoch * 104_729 + self.rank)
        # a whole number of batches per chunk, so batch boundaries do not depend on the chunk
        per_chunk = self.batch_size * max(1, self.chunk // self.batch_size)
        # AlternatingHorizontalFlip reads each image's index, the epoch and the seed
        where = {"epoch": epoch, "seed": self.seed} if getattr(self.augment, "indexed", False) else {}
        for idx in order.split(per_chunk):
            xs, ys = self.take(idx, g, **where), self.labels[idx]
            if self.channels_last and xs.dim() == 4:
                xs = xs.contiguous(memory_format=torch.channels_last)
            yield from zip(xs.split(self.batch_size), ys.split(self.batch_size))


@dataclass
class LoaderSource:
    """Per-sample transforms through a DataLoader (workers, pinned memory on CUDA)."""

    dataset: torch.utils.data.Dataset
    batch_size: int
    seed: int
    device: torch.device
    shuffle: bool = True
    num_workers: int = 0
    rank: int = 0
    world: int = 1

    @property
    def samples(self) -> int:
        return len(cast(Sized, self.dataset))  # the datasets here are map-style, with __len__

    def __len__(self) -> int:
        n = math.ceil(self.samples / self.world) if self.shuffle else self.samples
        return math.ceil(n / self.batch_size)

    def batches(self, epoch: int):
        if self.shuffle:
            sampler = epoch_permutation(self.samples, self.seed, epoch, self.rank, self.world).tolist()
        else:
            sampler = range(self.samples)
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch * 104_729 + self.rank)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=g,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _prepare(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    source,
    *,
    epoch: int,
    runtime: Runtime,
    scheduler,
    scaler: torch.amp.GradScaler,
    needs_closure: bool = False,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    clip=None,
) -> dict:
    """One pass over the training data; returns loss, accuracy, images and seconds.

    `on_step(step, images, loss)` runs after every step (a progress bar); the loss is a
    device tensor, so reading it is the caller's choice of when to sync. `clip` (a
    ClipParams, train.clip) clips the gradients before each step, after the scaler unscales
    them, and adds the pre-clip gradient norm (mean and max over the steps) and the fraction
    of steps it clipped to the result.
    """
    model.train()
    dev = runtime.device
    # per-step results are kept as references (detached outputs, no copies, no reductions)
    # and reduced once at the end of the epoch: at the tutorial's batch of 16 each extra
    # small op in the step costs about 1% of the run
    losses, outputs, targets, norms = [], [], [], []
    start = time.perf_counter()
    for step, (x, y) in enumerate(source.batches(epoch)):
        x = _prepare(x, runtime)
        if needs_closure:
            captured = {}

            def closure(x=x, y=y, captured=captured):  # this step's batch, bound here (it runs in this step)
                optimizer.zero_grad(set_to_none=True)
                with runtime.autocast():
                    out = model(x)
                    loss = loss_fn(out, y)
                loss.backward()
                if clip is not None and clip.mode != "none":  # the closure path never scales
                    norms.append(clip_gradients(model, clip))
                captured.setdefault("out", out.detach())
                captured.setdefault("loss", loss.detach())
                return loss

            optimizer.step(closure)
            out, loss = captured["out"], captured["loss"]
        else:
            with runtime.autocast():
                out = model(x)
                loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip is not None and clip.mode != "none":
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                norms.append(clip_gradients(model, clip))
            scaler.step(optimizer)
            scaler.update()
        scheduler.step_batch()
        losses.append(loss.detach())
        outputs.append(out.detach())
        targets.append(y)
        if on_step is not None:
            on_step(step, len(y), loss.detach())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return epoch_result(losses, outputs, targets, norms, epoch=epoch, seconds=seconds)


def epoch_result(losses: list, outputs: list, targets: list, norms: list, *, epoch: int, seconds: float) -> dict:
    """The epoch's per-step references reduced once: mean loss, accuracy, images, gradient norms;
    a non-finite step loss stops the run here, naming the step."""
    dev = losses[0].device if losses else torch.device("cpu")
    sizes = torch.tensor([len(t) for t in targets], device=dev, dtype=torch.float64)
    step_losses = torch.stack(losses).double() if losses else torch.zeros(0, device=dev, dtype=torch.float64)
    nonfinite = (~torch.isfinite(step_losses)).nonzero()
    bad = int(nonfinite[0].item()) if len(nonfinite) else -1
    seen = int(sizes.sum().item())
    loss_sum = (step_losses * sizes).sum()
    correct = (torch.cat(outputs).argmax(1) == torch.cat(targets)).sum().item() if outputs else 0
    if bad >= 0:
        raise NonFiniteLoss(
            f"the training loss became non-finite (NaN or inf) at epoch {epoch + 1}, step {bad + 1}; "
            f"try a lower learning rate (optimizer.lr), or another loss or initialization. "
            f"The last good checkpoint (end of epoch {epoch}) is kept, and nothing of this epoch was saved"
        )
    return {
        "loss": loss_sum.item() / max(seen, 1),
        "acc": correct / max(seen, 1),
        "images": seen,
        "seconds": seconds,
        **_norm_summary(norms),
    }


def clip_gradients(model: nn.Module, clip) -> torch.Tensor:
    """Clip `model`'s gradients in place per train.clip; returns [pre-clip norm, clipped?].

    mode norm: `clip_grad_norm_` scales all gradients together so their `norm_type` norm is
    at most `max` (it returns the norm before clipping). mode value: `clip_grad_value_` clamps
    each element to [-max, max]; it bites when the largest element exceeds `max`. Both stay
    on the device (no sync per step).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if clip.mode == "norm":
        norm = nn.utils.clip_grad_norm_(params, clip.max, norm_type=clip.norm_type)
        bites = norm > clip.max
    else:
        grads = [p.grad for p in params if p.grad is not None]  # all of them: params has only those
        norm = nn.utils.get_total_norm(grads, norm_type=clip.norm_type)
        bites = nn.utils.get_total_norm(grads, norm_type=math.inf) > clip.max
        nn.utils.clip_grad_value_(params, clip.max)
    return torch.stack([norm.float(), bites.float()])


def _norm_summary(norms: list[torch.Tensor]) -> dict:
    """grad_norm (mean over the finite steps), grad_norm_max and clipped (fraction of steps)."""
    if not norms:
        return {}
    rows = torch.stack(norms).double().cpu()
    finite = rows[torch.isfinite(rows[:, 0]), 0]  # fp16 steps with inf gradients are skipped
    return {
        "grad_norm": finite.mean().item() if len(finite) else math.nan,
        "grad_norm_max": finite.max().item() if len(finite) else math.nan,
        "clipped": rows[:, 1].mean().item(),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Optional[nn.Module],
    source,
    runtime: Runtime,
    *,
    ncrops: int = 1,
    keep_outputs: bool = False,
    tta: str = "none",
) -> dict:
    """Loss and accuracy over a source; multi-crop batches ([B, ncrops, C, H, W]) average their
    crops; `tta` (evaluate.tta, TTA_MODES) averages the logits of each image's views."""
    model = with_tta(model, tta)
    model.eval()
    dev = runtime.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    seen = 0
    outputs, targets = [], []
    for x, y in source.batches(0):
        b = len(y)
        if ncrops > 1:
            x = x.reshape(-1, *x.shape[-3:])
        x = _prepare(x, runtime)
        with runtime.autocast():
            out = model(x)
        out = out.float()
        if ncrops > 1:
            out = out.reshape(b, ncrops, -1).mean(1)
        if loss_fn is not None:
            loss_sum += loss_fn(out, y).double() * b
        correct += (out.argmax(1) == y).sum()
        seen += b
        if keep_outputs:
            outputs.append(out.cpu())
            targets.append(y.cpu())
    result = {"loss": loss_sum.item() / max(seen, 1), "acc": correct.item() / max(seen, 1), "images": seen}
    if keep_outputs:
        result["logits"] = torch.cat(outputs) if outputs else torch.empty(0)
        result["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.int64)
    return result
