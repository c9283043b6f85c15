"""The fast path: augment whole uint8 batches as tensors, on the batch's device.

The training stage decodes every image once into a uint8 tensor [N, 3, 32, 32]; this module
augments a batch of it in a handful of vectorized tensor ops with per-sample random
parameters, on the CPU or the GPU, so the model never waits for per-image PIL or
torchvision work (at 32x32 that per-image overhead, not the arithmetic, is the whole cost).

Geometry (crops, padding, flips, integer translations) is expressed as per-sample *index
maps*: for each output row and column, which input row and column it reads (or -1: fill).
Consecutive geometric ops compose their maps on [B, H] and [B, W] integer tensors, so a
RandomCrop with padding followed by a flip costs one gather over the batch however many
geometric entries the list has, and no padded copy of the batch is ever made. Pixel ops
(Normalize, RandomErasing) then run on the float [B, C, H, W] batch, where per-channel
constants broadcast over contiguous H*W runs (measured faster on CPU than broadcasting over
a channels-last C of 3); a channels_last input gets a channels_last output at the end.

The semantics match torchvision's per-sample transforms entry by entry (same parameter
distributions, same fill and padding rules, same list order), so switching between this and
`transforms.build_transform` changes speed, not the experiment. Lists with any entry this
module does not cover get `None` from `plan` and the stage falls back to the per-sample path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Optional, cast

import torch
from torch import nn

from cifarlab.augment import transforms as T

Size = tuple[int, int]


class _Uncovered(Exception):
    """An entry the fast path cannot reproduce exactly; the message says why."""


class _Draw:
    """Per-sample random numbers from the caller's generator.

    Numbers are drawn on the generator's device and moved to the batch's, so a CPU generator
    gives the same augmentation whether the batch is on the CPU or the GPU. Only [B]-sized
    parameter tensors move, except RandomErasing's 'random' noise.
    """

    def __init__(
        self,
        generator: Optional[torch.Generator],
        device: torch.device,
        *,
        index: Optional[torch.Tensor] = None,
        epoch: int = 0,
        seed: int = 0,
    ):
        self.generator = generator
        self.source = generator.device if generator is not None else device
        self.device = device
        # where the batch comes from, for ops that depend on it (AlternatingHorizontalFlip):
        # each sample's index in the whole image set, the epoch and the run's seed
        self.index = None if index is None else index.to(device)
        self.epoch, self.seed = epoch, seed

    def rand(self, *shape: int) -> torch.Tensor:
        out = torch.rand(shape, generator=self.generator, device=self.source)
        return out.to(self.device, non_blocking=True)

    def randn(self, *shape: int) -> torch.Tensor:
        out = torch.randn(shape, generator=self.generator, device=self.source)
        return out.to(self.device, non_blocking=True)

    def below(self, high: torch.Tensor | int, n: int) -> torch.Tensor:
        """n integers, the k-th uniform in [0, high_k) (high >= 1): torch.randint per sample."""
        u = self.rand(n)
        high_t = torch.as_tensor(high, device=self.device)
        return torch.minimum((u * high_t).long(), high_t - 1)


# --- geometry ------------------------------------------------------------------------------


def _fold(k: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Coordinates of a padded image -> coordinates in the n-long original, per padding mode.

    The same rules as torch/torchvision padding: constant reads the fill (-1 here), edge
    repeats the border, reflect mirrors without repeating it, symmetric mirrors repeating it.
    """
    if mode == "constant":
        return torch.where((k >= 0) & (k < n), k, -1)
    if mode == "edge":
        return k.clamp(0, n - 1)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(k)
        period = 2 * (n - 1)
        k = k.remainder(period)
        return torch.where(k >= n, period - k, k)
    if mode == "symmetric":
        period = 2 * n
        k = k.remainder(period)
        return torch.where(k >= n, period - 1 - k, k)
    raise ValueError(mode)


def _compose(old: Optional[torch.Tensor], new: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Apply map `new` after map `old`: out[i] = old[new[i]], -1 (fill) where either says so."""
    if new is None:
        return old
    if old is None:
        return new
    return torch.where(new < 0, -1, old.gather(1, new.clamp(min=0)))


class _IndexOp(nn.Module):
    """A geometric op: per-sample row and column maps (None where it leaves an axis alone)."""

    #: Fill value (per channel or one for all) for coordinates mapped to -1; None if none are.
    fill: Optional[tuple[float, ...]] = None

    def __init__(self, in_size: Size, out_size: Size):
        super().__init__()
        self.in_size, self.out_size = in_size, out_size

    def maps(self, b: int, draw: _Draw) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        raise NotImplementedError


class _Window(_IndexOp):
    """Pad (by mode) then take an out_size window at a fixed or per-sample random offset.

    Covers Pad, CenterCrop and RandomCrop (with padding and pad_if_needed).
    """

    def __init__(
        self,
        in_size: Size,
        out_size: Size,
        *,
        pad_lt: Size,
        pad_rb: Size,
        mode: str,
        fill: Optional[tuple[float, ...]],
        offset: Optional[Size],
    ):
        super().__init__(in_size, out_size)
        self.pad_l, self.pad_t = pad_lt
        self.pad_r, self.pad_b = pad_rb
        self.mode = mode
        self.fill = fill if mode == "constant" else None
        self.offset = offset  # (top, left), or None for a random one per sample

    def starts(self, b: int, draw: _Draw) -> tuple[torch.Tensor | int, torch.Tensor | int]:
        """The window's top and left corner in padded coordinates: ints when fixed, else
        [B] tensors drawn top then left, as torchvision draws them."""
        (h, w), (oh, ow) = self.in_size, self.out_size
        top, left = self.offset if self.offset is not None else (None, None)
        if top is None:
            top = draw.below(h + self.pad_t + self.pad_b - oh + 1, b)
        if left is None:
            left = draw.below(w + self.pad_l + self.pad_r - ow + 1, b)
        return top, left

    def _axis(
        self, start: torch.Tensor | int, b: int, *, n_in: int, n_out: int, pad0: int, device: torch.device
    ) -> Optional[torch.Tensor]:
        ar = torch.arange(n_out, device=device)
        if isinstance(start, int):
            if start == pad0 and n_out == n_in:
                return None  # this axis is untouched
            return _fold(ar + (start - pad0), n_in, self.mode).expand(b, n_out)
        return _fold(start[:, None] + ar - pad0, n_in, self.mode)

    def maps(self, b, draw):
        (h, w), (oh, ow) = self.in_size, self.out_size
        top, left = self.starts(b, draw)
        return (
            self._axis(top, b, n_in=h, n_out=oh, pad0=self.pad_t, device=draw.device),
            self._axis(left, b, n_in=w, n_out=ow, pad0=self.pad_l, device=draw.device),
        )

    def extra_repr(self):
        where = "random" if self.offset is None else f"offset={self.offset}"
        return (
            f"{self.in_size}->{self.out_size}, pad_ltrb=({self.pad_l}, {self.pad_t}, "
            f"{self.pad_r}, {self.pad_b}), mode={self.mode}, fill={self.fill}, {where}"
        )


class _Flip(_IndexOp):
    """Reverse one axis for the samples whose coin (rand < p, as torchvision) comes up."""

    def __init__(self, size: Size, axis: int, p: float):
        super().__init__(size, size)
        self.axis, self.p = axis, p

    def coins(self, b: int, draw: _Draw) -> torch.Tensor:
        return draw.rand(b) < self.p

    def maps(self, b, draw):
        n = self.in_size[self.axis]
        flip = self.coins(b, draw)
        ar = torch.arange(n, device=draw.device)
        m = torch.where(flip[:, None], n - 1 - ar, ar)
        return (m, None) if self.axis == 0 else (None, m)

    def extra_repr(self):
        return f"axis={'rows' if self.axis == 0 else 'cols'}, p={self.p}"


def _first_coins(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed fair coin per (image index, seed): a 32-bit integer hash (lowbias32), no state,
    so any subset of the images in any order gets the same coins on any device."""
    x = (index.long() * 0x9E3779B1 + (seed % 2**31) * 0x85EBCA6B + 0x165667B1) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF  # the low 32 bits of the product are exact even if int64 wraps
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return (x >> 31).bool()


class _AlternatingFlip(_Flip):
    """AlternatingHorizontalFlip (airbench94, issue 22): image i is mirrored in epoch e iff
    coin(i) XOR (e is odd), coin(i) a fixed fair coin of the image and the seed; so each image
    is seen both ways in every two epochs, instead of by chance. Without indices (a lone batch,
    as the visualize stage's grid draws one) it flips like RandomHorizontalFlip(p=0.5)."""

    def __init__(self, size: Size):
        super().__init__(size, 1, 0.5)

    def coins(self, b: int, draw: _Draw) -> torch.Tensor:
        if draw.index is None:
            return super().coins(b, draw)
        return _first_coins(draw.index, draw.seed) ^ (draw.epoch % 2 == 1)

    def extra_repr(self):
        return "alternating by epoch"


class _Translate(_IndexOp):
    """RandomAffine with translation only: integer shifts, as torchvision rounds them."""

    def __init__(self, size: Size, translate: tuple[float, float], fill: tuple[float, ...]):
        super().__init__(size, size)
        self.max_dx = float(translate[0] * size[1])
        self.max_dy = float(translate[1] * size[0])
        self.fill = fill

    def maps(self, b, draw):
        h, w = self.in_size
        # torchvision: tx = round(uniform(-max_dx, max_dx)), then ty; round half to even both.
        tx = torch.round((draw.rand(b) * 2 - 1) * self.max_dx).long()
        ty = torch.round((draw.rand(b) * 2 - 1) * self.max_dy).long()
        rows = _fold(torch.arange(h, device=draw.device) - ty[:, None], h, "constant")
        cols = _fold(torch.arange(w, device=draw.device) - tx[:, None], w, "constant")
        return rows, cols

    def extra_repr(self):
        return f"max_dx={self.max_dx}, max_dy={self.max_dy}, fill={self.fill}"


def _gather(
    x: torch.Tensor, rows: Optional[torch.Tensor], cols: Optional[torch.Tensor], fill: Optional[tuple[float, ...]]
) -> torch.Tensor:
    """One gather over the flattened H*W of a [B, C, H, W] batch -> contiguous [B, C, h, w].

    The row and column maps combine into one flat index per output pixel, shared by the
    channels (an expanded view, not a copy). Fill pixels read a sentinel column appended after
    the last pixel: any -1 pushes the index past it and one clamp lands it there, which is
    cheaper than masking the output afterwards.
    """
    b, c, h, w = x.shape
    dev = x.device
    if rows is None:
        rows = torch.arange(h, device=dev).expand(b, h)
    if cols is None:
        cols = torch.arange(w, device=dev).expand(b, w)
    oh, ow = rows.shape[1], cols.shape[1]
    beyond = 2 * h * w
    idx = torch.where(rows < 0, beyond, rows * w)[:, :, None] + torch.where(cols < 0, beyond, cols)[:, None, :]
    src = x.reshape(b, c, h * w)
    if fill is not None:
        idx = idx.clamp_(max=h * w)
        value = torch.tensor(fill, dtype=torch.float64).to(x.dtype).to(dev)
        src = torch.cat([src, value.reshape(1, -1, 1).expand(b, c, 1)], dim=2)
    out = src.gather(2, idx.reshape(b, 1, oh * ow).expand(b, c, oh * ow))
    return out.view(b, c, oh, ow)


# --- pixel ops (on float [B, C, H, W] batches scaled to 0..1) ------------------------------


class _PixelOp(nn.Module):
    def forward(self, x: torch.Tensor, draw: _Draw) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _ToFloat(_PixelOp):
    """ToTensor / ToDtype(float32, scale=True): the conversion itself happens before any
    pixel op; this marks where, so later geometry fills in float units as torchvision would."""

    def forward(self, x, draw):
        return x


class _Normalize(_PixelOp):
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, x, draw):
        # x is always a fresh tensor of ours (the float conversion made it): in place is safe.
        return x.sub_(self.mean.to(x.device)[:, None, None]).div_(self.std.to(x.device)[:, None, None])

    def extra_repr(self):
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class _Erase(_PixelOp):
    """RandomErasing, torchvision's rejection sampling vectorized over samples and attempts.

    Per sample: with probability p, up to 10 attempts of (area fraction ~ U(scale),
    log aspect ~ U(log ratio)), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect));
    the first attempt with h < H and w < W wins, at a uniform position; none: no erasing.
    """

    ATTEMPTS = 10

    def __init__(
        self, p: float, scale: tuple[float, float], ratio: tuple[float, float], value: Optional[tuple[float, ...]]
    ):
        super().__init__()
        self.p, self.scale, self.ratio = float(p), tuple(map(float, scale)), tuple(map(float, ratio))
        self.value = value  # None: per-pixel standard normal noise ('random')

    def forward(self, x, draw):
        b, c, h, w = x.shape
        dev = x.device
        u_area = draw.rand(b, self.ATTEMPTS).double()
        u_ratio = draw.rand(b, self.ATTEMPTS).double()
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u_ratio)
        eh = torch.round(torch.sqrt(area * aspect)).long()
        ew = torch.round(torch.sqrt(area / aspect)).long()
        ok = (eh < h) & (ew < w)
        first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True (argmax: first max)
        eh = eh.gather(1, first).squeeze(1).clamp(max=h)
        ew = ew.gather(1, first).squeeze(1).clamp(max=w)
        top = draw.below(h - eh + 1, b)
        left = draw.below(w - ew + 1, b)
        apply = (draw.rand(b) < self.p) & ok.any(dim=1)
        r = torch.arange(h, device=dev)
        q = torch.arange(w, device=dev)
        in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None]) & apply[:, None]
        in_cols = (q >= left[:, None]) & (q < (left + ew)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
        if self.value is None:
            value = draw.randn(b, c, h, w)
        else:
            value = torch.tensor(self.value, dtype=x.dtype, device=dev)[:, None, None]
        return torch.where(mask, value, x)

    def extra_repr(self):
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value or 'random'}"


# --- params -> ops ---------------------------------------------------------------------------


def _size(value: Any) -> Size:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _padding(value: Any) -> tuple[int, int, int, int]:
    """torchvision's rule: int, [all], [left/right, top/bottom] or [left, top, right, bottom]."""
    if value is None:
        return 0, 0, 0, 0
    if isinstance(value, int):
        return value, value, value, value
    value = tuple(value)
    if len(value) == 1:
        return value * 4
    if len(value) == 2:
        return value[0], value[1], value[0], value[1]
    return value


def _fill(value: Any) -> tuple[float, ...]:
    if isinstance(value, dict):
        raise _Uncovered("per-type fill")
    if value is None:
        return (0.0,)
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


Ops = list[nn.Module]
Handler = Callable[[dict, Size, str, Optional[dict]], tuple[Ops, Size]]


def _random_crop(kw, size, path, stats) -> tuple[Ops, Size]:
    oh, ow = _size(kw["size"])
    l, t, r, b = _padding(kw["padding"])
    h, w = size
    if kw["pad_if_needed"]:  # as torchvision: pad both sides by the shortfall
        if h + t + b < oh:
            d = oh - (h + t + b)
            t, b = t + d, b + d
        if w + l + r < ow:
            d = ow - (w + l + r)
            l, r = l + d, r + d
    return [
        _Window(
            size, (oh, ow), pad_lt=(l, t), pad_rb=(r, b), mode=kw["padding_mode"], fill=_fill(kw["fill"]), offset=None
        )
    ], (oh, ow)


def _center_crop(kw, size, path, stats) -> tuple[Ops, Size]:
    oh, ow = _size(kw["size"])
    h, w = size
    # torchvision pads with zeros to the crop size first, then rounds the anchor.
    pl, pt = max(ow - w, 0) // 2, max(oh - h, 0) // 2
    pr, pb = (max(ow - w, 0) + 1) // 2, (max(oh - h, 0) + 1) // 2
    top = round((h + pt + pb - oh) / 2.0)
    left = round((w + pl + pr - ow) / 2.0)
    op = _Window(size, (oh, ow), pad_lt=(pl, pt), pad_rb=(pr, pb), mode="constant", fill=(0.0,), offset=(top, left))
    return [op], (oh, ow)


def _pad(kw, size, path, stats) -> tuple[Ops, Size]:
    l, t, r, b = _padding(kw["padding"])
    out = (size[0] + t + b, size[1] + l + r)
    return [
        _Window(size, out, pad_lt=(l, t), pad_rb=(r, b), mode=kw["padding_mode"], fill=_fill(kw["fill"]), offset=(0, 0))
    ], out


def _flip(axis: int) -> Handler:
    def handler(kw, size, path, stats) -> tuple[Ops, Size]:
        return [_Flip(size, axis, float(kw["p"]))], size

    return handler


def _zero(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (int, float)):
        return value == 0
    return all(v == 0 for v in value)


def _affine(kw, size, path, stats) -> tuple[Ops, Size]:
    reasons = []
    if not _zero(kw["degrees"]):
        reasons.append("rotation")
    if kw["scale"] is not None and any(s != 1 for s in kw["scale"]):
        reasons.append("scale")
    if not _zero(kw["shear"]):
        reasons.append("shear")
    if reasons:
        raise _Uncovered("/".join(reasons) + "; only translations are covered")
    if kw["translate"] is None or _zero(kw["translate"]):
        return [], size
    return [_Translate(size, tuple(kw["translate"]), _fill(kw["fill"]))], size


def _erasing(kw, size, path, stats) -> tuple[Ops, Size]:
    value = kw["value"]
    if isinstance(value, str):
        value = None
    elif isinstance(value, (int, float)):
        value = (float(value),)
    else:
        value = tuple(float(v) for v in value)
    return [_Erase(kw["p"], kw["scale"], kw["ratio"], value)], size


def _to_dtype(kw, size, path, stats) -> tuple[Ops, Size]:
    if kw["dtype"] == torch.float32 and kw.get("scale", True):
        return [_ToFloat()], size
    raise _Uncovered("only float32 with scale=True is covered")


def _noop(kw, size, path, stats) -> tuple[Ops, Size]:
    return [], size


def _to_float(kw, size, path, stats) -> tuple[Ops, Size]:
    return [_ToFloat()], size


# Handlers read kwargs resolved by transforms.resolve_kwargs: both paths share the defaults.
_HANDLERS: dict[str, Handler] = {
    "RandomCrop": _random_crop,
    "CenterCrop": _center_crop,
    "Pad": _pad,
    "RandomHorizontalFlip": _flip(1),
    "RandomVerticalFlip": _flip(0),
    "RandomAffine": _affine,
    "RandomErasing": _erasing,
    "ToDtype": _to_dtype,
    "ConvertImageDtype": _to_dtype,
    "ToImage": _noop,
    "PILToTensor": _noop,
    "ToPureTensor": _noop,
    "Identity": _noop,
}

#: Names the fast path covers (RandomAffine: translations only; ToDtype: float32 scaled).
COVERED = tuple(
    sorted([*_HANDLERS, "Normalize", "ToTensor", "Lambda(fn=identity)", "Compose", "AlternatingHorizontalFlip"])
)


class _Planner:
    """Entries -> ops, collecting the uncovered ones instead of stopping at the first."""

    def __init__(self, stats: Optional[dict], check_only: bool):
        self.stats, self.check_only = stats, check_only
        self.missing: list[str] = []

    def walk(self, entries: list, path: str, size: Size) -> tuple[Ops, Size]:
        ops: Ops = []
        for i, entry in enumerate(entries):
            where = f"{path}.{i}"
            name, kwargs = T.parse_entry(entry, where)
            try:
                built, size = self.one(name, kwargs, where, size)
                ops += built
            except _Uncovered as why:
                self.missing.append(f"{name} ({why})" if str(why) else name)
        return ops, size

    def one(self, name: str, kwargs: dict, path: str, size: Size) -> tuple[Ops, Size]:
        if name == T.ALTERNATING_FLIP:  # cifarlab's own, checked by check_transforms
            return [_AlternatingFlip(size)], size
        if name == "Normalize":
            mean, std = T.normalize_args(kwargs, self.stats, path, check_only=self.check_only)
            return [_Normalize(mean, std)], size
        if name == "ToTensor":
            return [_ToFloat()], size
        if name == "Lambda":
            if kwargs.get("fn") == "identity":
                return [], size
            raise _Uncovered(f"fn={kwargs.get('fn')}")
        if name == "Compose":
            return self.walk(kwargs.get("transforms") or [], f"{path}.Compose.transforms", size)
        handler = _HANDLERS.get(name)
        if handler is None:
            raise _Uncovered("")
        return handler(T.resolve_kwargs(name, kwargs, path), size, path, self.stats)


class BatchAugment(nn.Module):
    """A planned list: uint8 [B, C, H, W] -> float32 [B, C, H', W'] scaled to 0..1.

    Normalized where the list has Normalize; deterministic given the generator's seed; the
    output keeps the input's memory format (channels_last in, channels_last out).
    """

    def __init__(self, ops: Ops, in_size: Size, out_size: Size):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)

    def forward(
        self,
        x: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        *,
        index: Optional[torch.Tensor] = None,
        epoch: int = 0,
        seed: int = 0,
    ) -> torch.Tensor:
        """`index` (each sample's index in the image set), `epoch` and `seed` matter only to
        AlternatingHorizontalFlip (see `indexed`)."""
        self._check(x)
        draw = _Draw(generator, x.device, index=index, epoch=epoch, seed=seed)
        return self._run(x, self.ops, draw, _is_channels_last(x))

    @property
    def indexed(self) -> bool:
        """Whether an op depends on the samples' indices and the epoch (AlternatingHorizontalFlip)."""
        return any(isinstance(op, _AlternatingFlip) for op in self.ops)

    @property
    def random(self) -> bool:
        """Whether any op draws random numbers (a source may keep the batches of a list without)."""
        fixed = (_Normalize, _ToFloat)
        return not all(isinstance(op, fixed) or (isinstance(op, _Window) and op.offset is not None) for op in self.ops)

    def bind(self, images: torch.Tensor) -> Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]:
        """`take(idx, generator)`: the same batch as `self(images[idx], generator)`, bit for bit.

        Lists that start with a window (RandomCrop with or without padding, in any padding mode,
        Pad, CenterCrop) and horizontal flips get `_WindowTaker`, which pads the images once so that
        each call copies whole output rows instead of building a per-pixel index: about 3x less
        work a chunk, which at the tutorial's batch of 16 is 5 to 10% of a training run.
        """
        self._check(images)
        taker = _WindowTaker.for_ops(self, images)
        if taker is not None:
            return taker
        return lambda idx, generator=None, **where: self(images[idx], generator, index=idx, **where)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.dtype != torch.uint8 or tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(
                f"BatchAugment expects a uint8 batch [B, C, {self.in_size[0]}, "
                f"{self.in_size[1]}], got {x.dtype} {tuple(x.shape)}"
            )

    def _run(self, cur: torch.Tensor, ops, draw: _Draw, channels_last: bool) -> torch.Tensor:
        b = cur.shape[0]
        rows = cols = None
        fill: Optional[tuple[float, ...]] = None
        for op in ops:
            if isinstance(op, _IndexOp):
                if op.fill is not None and fill is not None and op.fill != fill:
                    cur, rows, cols, fill = _gather(cur, rows, cols, fill), None, None, None
                r, c = op.maps(b, draw)
                rows, cols = _compose(rows, r), _compose(cols, c)
                fill = fill if op.fill is None else op.fill
                continue
            if rows is not None or cols is not None:
                cur, rows, cols, fill = _gather(cur, rows, cols, fill), None, None, None
            if not cur.is_floating_point():
                cur = cur.to(torch.float32).mul_(1.0 / 255)
            cur = op(cur, draw)
        if rows is not None or cols is not None:
            cur = _gather(cur, rows, cols, fill)
        if not cur.is_floating_point():
            cur = cur.to(torch.float32).mul_(1.0 / 255)
        return cur.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def extra_repr(self):
        return f"in_size={self.in_size}, out_size={self.out_size}"


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _WindowTaker:
    """A window-and-flips list over a fixed set of images, one index_select a batch.

    The images are padded once with the window's fill or padding mode (and kept mirrored too when the list
    flips them: a crop of a mirrored image is the mirror of the crop at left' = W' - w - left),
    so every output row of every channel is a contiguous run of the padded tensor: one
    index_select of [B * C * h] rows, instead of the general path's per-pixel index over
    [B, h * w] and a gather of every value. Random numbers are drawn by the same ops in the
    same order, and the pixel ops after the geometry run unchanged, so the output is the
    general path's bit for bit (tests/test_batch_augment.py compares them). Memory: 1.6x the
    decoded images at 32x32 with padding 4, 3.1x with a flip.
    """

    def __init__(
        self,
        aug: BatchAugment,
        images: torch.Tensor,
        window: Optional[_Window],
        flips: list[_Flip],
        rest: list[nn.Module],
    ):
        self.aug, self.window, self.flips, self.rest = aug, window, flips, rest
        self.channels_last = _is_channels_last(images)
        n, c, h, w = images.shape
        pt, pb, pl, pr = (window.pad_t, window.pad_b, window.pad_l, window.pad_r) if window else (0, 0, 0, 0)
        hp, wp = h + pt + pb, w + pl + pr
        padded = torch.empty((n * (2 if flips else 1), c, hp, wp), dtype=torch.uint8, device=images.device)
        if window is not None and window.mode != "constant":  # reflect, edge, symmetric: by their maps
            dev = images.device
            rows = _fold(torch.arange(hp, device=dev) - pt, h, window.mode)
            cols = _fold(torch.arange(wp, device=dev) - pl, w, window.mode)
            padded[:n] = images.index_select(2, rows).index_select(3, cols)
        else:
            if window is not None and window.fill is not None and (pt or pb or pl or pr):
                value = torch.tensor(window.fill, dtype=torch.float64).to(torch.uint8).to(images.device)
                padded[:n] = value.reshape(1, -1, 1, 1)
            padded[:n, :, pt : pt + h, pl : pl + w] = images
        if flips:
            padded[n:] = padded[:n].flip(3)
        self.n, self.c, self.hp, self.wp = n, c, hp, wp
        self.out_h, self.out_w = window.out_size if window else (h, w)
        flat = padded.reshape(-1)
        # row k of this view is the out_w values starting at flat[k]: every window row is one
        self.rows = flat.as_strided((flat.numel() - self.out_w + 1, self.out_w), (1, 1))
        self.row_starts = (
            (
                torch.arange(c, device=images.device)[:, None] * hp
                + torch.arange(self.out_h, device=images.device)[None, :]
            )
            * wp
        ).reshape(-1)

    @classmethod
    def for_ops(cls, aug: BatchAugment, images: torch.Tensor) -> Optional[_WindowTaker]:
        """A taker when the list is [window?] [horizontal flips...] [pixel ops...], else None."""
        geo = list(itertools.takewhile(lambda op: isinstance(op, _IndexOp), aug.ops))
        rest = list(aug.ops[len(geo) :])
        window = geo[0] if geo and isinstance(geo[0], _Window) else None
        flips = geo[1:] if window is not None else geo
        if not geo or any(isinstance(op, _IndexOp) for op in rest):
            return None
        if not all(isinstance(f, _Flip) and f.axis == 1 for f in flips):
            return None
        return cls(aug, images, window, cast("list[_Flip]", flips), rest)  # all _Flip: checked above

    def __call__(
        self, idx: torch.Tensor, generator: Optional[torch.Generator] = None, *, epoch: int = 0, seed: int = 0
    ) -> torch.Tensor:
        dev = self.rows.device
        idx = idx.to(dev)
        b = len(idx)
        draw = _Draw(generator, dev, index=idx, epoch=epoch, seed=seed)
        top, left = self.window.starts(b, draw) if self.window is not None else (0, 0)
        left = torch.as_tensor(left, device=dev).expand(b)
        top = torch.as_tensor(top, device=dev).expand(b)
        image = idx
        if self.flips:
            mirrored = torch.zeros(b, dtype=torch.bool, device=dev)
            for flip in self.flips:
                mirrored ^= flip.coins(b, draw)
            left = torch.where(mirrored, self.wp - self.out_w - left, left)
            image = idx + mirrored.long() * self.n
        first = (image * self.c * self.hp + top) * self.wp + left
        starts = (first[:, None] + self.row_starts[None, :]).reshape(-1)
        cur = self.rows.index_select(0, starts).view(b, self.c, self.out_h, self.out_w)
        return self.aug._run(cur, self.rest, draw, self.channels_last)


def uncovered(entries: list[dict], image_size: Size = (32, 32)) -> list[str]:
    """The entries that keep a list off the fast path, e.g. ['ColorJitter',
    'RandomAffine (rotation; only translations are covered)'], for the fallback's log line."""
    planner = _Planner(stats=None, check_only=True)
    planner.walk(list(entries), "augment", (*image_size,))
    return planner.missing


def plan(entries: list[dict], stats: Optional[dict], key: str, image_size: Size = (32, 32)) -> Optional[BatchAugment]:
    """A BatchAugment if every entry is covered, else None (use build_transform instead).

    Entries are validated first exactly as the per-sample path does, so a bad list fails the
    same way whichever path would have run it.
    """
    T.check_transforms(entries, key, (*image_size,))
    planner = _Planner(stats=stats, check_only=False)
    ops, out_size = planner.walk(list(entries), key, (*image_size,))
    if planner.missing:
        return None
    return BatchAugment(ops, (*image_size,), out_size)
