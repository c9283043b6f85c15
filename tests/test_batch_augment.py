"""The fast path: whole uint8 batches augmented as tensors, checked against torchvision."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cifarlab.augment.batch import BatchAugment, plan, uncovered
from cifarlab.augment.transforms import build_transform
from cifarlab.errors import ParamsError

STATS = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
KEY = "augment.train"
DEFAULT = [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": {"p": 0.5}}, {"Normalize": {}}]


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(n=16, low=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def scaled(x):
    return x.to(torch.float32).mul_(1.0 / 255)


def aug(entries, stats=STATS):
    out = plan(entries, stats, KEY)
    assert isinstance(out, BatchAugment), uncovered(entries)
    return out


def crops_of(padded, out, size=32):
    """For each sample, the (top, left) offsets at which `out` is a crop of `padded`."""
    found = []
    h, w = padded.shape[-2:]
    for p, o in zip(padded, out):
        found.append(
            [
                (t, l)
                for t, l in itertools.product(range(h - size + 1), range(w - size + 1))
                if torch.equal(p[:, t : t + size, l : l + size], o)
            ]
        )
    return found


# --- geometry ---------------------------------------------------------------------------------


def test_flip_with_p1_is_torch_flip_and_p0_is_identity():
    x = batch()
    torch.testing.assert_close(
        aug([{"RandomHorizontalFlip": {"p": 1.0}}])(x, gen()), scaled(x.flip(-1)), rtol=0, atol=0
    )
    torch.testing.assert_close(aug([{"RandomVerticalFlip": {"p": 1.0}}])(x, gen()), scaled(x.flip(-2)), rtol=0, atol=0)
    torch.testing.assert_close(aug([{"RandomHorizontalFlip": {"p": 0.0}}])(x, gen()), scaled(x), rtol=0, atol=0)


def test_flip_p_half_flips_some():
    x = batch(64)
    out = aug([{"RandomHorizontalFlip": {}}])(x, gen())
    flipped = [torch.equal(o, scaled(s.flip(-1))) for o, s in zip(out, x)]
    kept = [torch.equal(o, scaled(s)) for o, s in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_random_crop_is_a_crop_of_the_zero_padded_input_at_varying_offsets():
    x = batch(12, low=1)  # no zeros in the image: the padding is recognisable
    out = aug([{"RandomCrop": {"size": 32, "padding": 4}}])(x, gen())
    padded = F.pad(scaled(x), [4, 4, 4, 4], fill=0)
    found = crops_of(padded, out)
    assert all(len(f) == 1 for f in found), found
    offsets = {f[0] for f in found}
    assert len(offsets) > 6, offsets


@pytest.mark.parametrize("mode", ["reflect", "edge", "symmetric"])
def test_random_crop_padding_modes_match_torchvision_padding(mode):
    x = batch(6)
    entries = [{"RandomCrop": {"size": 32, "padding": [2, 3], "padding_mode": mode}}]
    out = aug(entries)(x, gen())
    padded = F.pad(scaled(x), [2, 3], padding_mode=mode)
    assert all(crops_of(padded, out))


def test_pad_then_random_crop_with_a_fill_and_uneven_padding():
    x = batch(6, low=1)
    entries = [
        {"Pad": {"padding": [1, 2, 3, 4], "fill": [7, 8, 9]}},
        {"RandomCrop": {"size": [30, 28], "pad_if_needed": True}},
    ]
    out = aug(entries)(x, gen())
    padded = scaled(F.pad(tv_tensors.Image(x), [1, 2, 3, 4], fill=[7, 8, 9]))
    for p, o in zip(padded, out):
        assert any(torch.equal(p[:, t : t + 30, l : l + 28], o) for t in range(38 - 30 + 1) for l in range(36 - 28 + 1))


def test_different_fills_in_a_row_match_torchvision():
    x = batch(4)
    entries = [{"Pad": {"padding": 2, "fill": 5}}, {"Pad": {"padding": 1, "fill": 9}}, {"CenterCrop": {"size": 30}}]
    expected = torch.stack([build_transform(entries, KEY, None)(tv_tensors.Image(s)) for s in x])
    torch.testing.assert_close(aug(entries)(x, gen()), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [32, 24, 25, 33, 40])
def test_center_crop_matches_torchvision(size):
    x = batch(4)
    torch.testing.assert_close(
        aug([{"CenterCrop": {"size": size}}])(x, gen()), scaled(F.center_crop(x, [size, size])), rtol=0, atol=0
    )


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_translation_matches_torchvision_affine(interpolation):
    x = batch(16)
    entries = [
        {"RandomAffine": {"degrees": 0, "translate": [0.0625, 0.125], "fill": 3, "interpolation": interpolation}}
    ]
    out = aug(entries)(x, gen())
    shifted = {
        (tx, ty): scaled(
            F.affine(
                tv_tensors.Image(x),
                angle=0.0,
                translate=[tx, ty],
                scale=1.0,
                shear=[0.0, 0.0],
                fill=3,
                interpolation=interpolation,
            )
        )
        for tx in range(-2, 3)
        for ty in range(-4, 5)
    }
    shifts = set()
    for i, o in enumerate(out):
        hits = [shift for shift, y in shifted.items() if torch.equal(y[i], o)]
        assert len(hits) == 1, hits
        shifts.add(hits[0])
    assert len(shifts) > 4


# --- pixel ops --------------------------------------------------------------------------------


def test_normalize_matches_torchvision():
    x = batch(8)
    out = aug([{"Normalize": {}}])(x, gen())
    expected = v2.Normalize(STATS["mean"], STATS["std"])(scaled(x))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    explicit = aug([{"Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}], stats=None)(x)
    torch.testing.assert_close(explicit, scaled(x) * 2 - 1, rtol=0, atol=1e-6)


def test_normalize_without_stats_is_a_params_error():
    with pytest.raises(ParamsError) as err:
        plan(DEFAULT, None, KEY)
    assert err.value.key == "augment.train.2.Normalize"


def test_conversion_entries_are_no_ops_here():
    x = batch(4)
    plain = aug([{"Normalize": {}}])(x, gen())
    for extra in (
        [{"ToTensor": {}}],
        [{"ToImage": {}}, {"ToDtype": {"dtype": "float32", "scale": True}}],
        [{"PILToTensor": {}}, {"ConvertImageDtype": {}}],
    ):
        torch.testing.assert_close(aug(extra + [{"Normalize": {}}])(x, gen()), plain, rtol=0, atol=0)


def _erased_boxes(out):
    """Bounding boxes (top, left, h, w) of the all-zero pixels, checking they fill the box."""
    boxes = []
    for o in out:
        zero = (o == 0).all(0)
        if not zero.any():
            boxes.append(None)
            continue
        r = zero.any(1).nonzero().flatten()
        c = zero.any(0).nonzero().flatten()
        top, left, h, w = r[0].item(), c[0].item(), len(r), len(c)
        assert r[-1] - r[0] + 1 == h and c[-1] - c[0] + 1 == w
        assert zero[top : top + h, left : left + w].all() and zero.sum() == h * w, "not a rectangle"
        boxes.append((top, left, h, w))
    return boxes


def test_random_erasing_p1_erases_a_rectangle_within_scale_and_ratio():
    x = batch(64, low=1)
    scale, ratio = (0.1, 0.2), (0.5, 2.0)
    out = aug([{"RandomErasing": {"p": 1.0, "scale": list(scale), "ratio": list(ratio)}}])(x, gen())
    boxes = _erased_boxes(out)
    assert all(b is not None for b in boxes)
    area = 32 * 32
    for _, _, h, w in boxes:
        # h = round(sqrt(a r)), w = round(sqrt(a / r)) for some a in scale * area, r in ratio
        assert (h - 0.5) * (w - 0.5) <= scale[1] * area and (h + 0.5) * (w + 0.5) >= scale[0] * area
        assert (h - 0.5) / (w + 0.5) <= ratio[1] and (h + 0.5) / (w - 0.5) >= ratio[0]
    assert len({b[:2] for b in boxes}) > 20  # positions vary
    kept = out != 0
    torch.testing.assert_close(out[kept], scaled(x)[kept], rtol=0, atol=0)


def test_random_erasing_area_distribution_matches_torchvision():
    n = 400
    x = batch(n, low=1)
    out = aug([{"RandomErasing": {"p": 1.0}}])(x, gen())
    ours = torch.tensor([b[2] * b[3] / 1024 if b else 0.0 for b in _erased_boxes(out)])
    torch.manual_seed(0)
    erase = v2.RandomErasing(p=1.0)
    theirs = torch.tensor([(erase(scaled(s)) == 0).all(0).float().mean().item() for s in x])
    assert abs(ours.mean() - theirs.mean()) < 0.02, (ours.mean(), theirs.mean())
    assert abs(ours.std() - theirs.std()) < 0.02


def test_random_erasing_p_and_values():
    x = batch(200, low=1)
    half = aug([{"RandomErasing": {"p": 0.5}}])(x, gen())
    erased = sum(b is not None for b in _erased_boxes(half))
    assert 70 < erased < 130
    per_channel = aug([{"RandomErasing": {"p": 1.0, "value": [0.25, 0.5, 0.75]}}])(x[:8], gen())
    changed = (per_channel != scaled(x[:8])).any(1, keepdim=True).expand_as(per_channel)
    values = per_channel.permute(1, 0, 2, 3)[changed.permute(1, 0, 2, 3)].view(3, -1)
    assert torch.equal(values.unique(dim=1).flatten(), torch.tensor([0.25, 0.5, 0.75]))
    noisy = aug([{"RandomErasing": {"p": 1.0, "value": "random"}}])(x[:8], gen())
    assert (noisy < 0).any() and (noisy > 1).any()


def test_random_erasing_that_never_fits_erases_nothing():
    # h = w = round(sqrt(a)) >= 32 for every area a in [0.97, 1] * 1024: all 10 attempts fail
    # and torchvision leaves the image alone rather than erasing all of it.
    x = batch(16, low=1)
    out = aug([{"RandomErasing": {"p": 1.0, "scale": [0.97, 1.0], "ratio": [1.0, 1.0]}}])(x, gen())
    torch.testing.assert_close(out, scaled(x), rtol=0, atol=0)
    # Near that limit some attempts fit (h = 31) and the first one that fits is used.
    near = aug([{"RandomErasing": {"p": 1.0, "scale": [0.9, 1.0], "ratio": [1.0, 1.0]}}])(x, gen())
    boxes = [b for b in _erased_boxes(near) if b is not None]
    assert len(boxes) > 8 and all(h < 32 and w < 32 for _, _, h, w in boxes), boxes


def test_list_order_is_kept_erasing_before_or_after_normalize():
    x = batch(8, low=1)
    before = aug([{"RandomErasing": {"p": 1.0}}, {"Normalize": {}}])(x, gen())
    after = aug([{"Normalize": {}}, {"RandomErasing": {"p": 1.0}}])(x, gen())
    mean, std = torch.tensor(STATS["mean"]), torch.tensor(STATS["std"])
    erased = (after == 0).all(1)
    assert erased.any()
    torch.testing.assert_close(before.permute(0, 2, 3, 1)[erased], (-mean / std).expand(int(erased.sum()), 3))


# --- the module as a whole ----------------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output():
    x = batch(32)
    a = aug(DEFAULT)
    torch.testing.assert_close(a(x, gen(3)), a(x, gen(3)), rtol=0, atol=0)
    assert not torch.equal(a(x, gen(3)), a(x, gen(4)))
    out = a(x)  # the global generator works too
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32


def test_memory_format_is_kept():
    x = batch(8)
    a = aug(DEFAULT)
    plain = a(x, gen())
    cl = a(x.contiguous(memory_format=torch.channels_last), gen())
    assert plain.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    torch.testing.assert_close(plain, cl, rtol=0, atol=0)


def test_deterministic_lists_equal_the_per_sample_path():
    x = batch(6)
    entries = [
        {"Pad": {"padding": 3, "padding_mode": "reflect"}},
        {"CenterCrop": {"size": 30}},
        {"Compose": {"transforms": [{"ToTensor": {}}, {"Normalize": {}}]}},
        {"RandomAffine": {"degrees": [0, 0], "scale": [1, 1]}},
    ]
    expected = torch.stack([build_transform(entries, KEY, STATS)(tv_tensors.Image(s)) for s in x])
    torch.testing.assert_close(aug(entries)(x, gen()), expected, rtol=0, atol=1e-6)


def test_uncovered_transforms_fall_back_and_are_named():
    entries = DEFAULT[:2] + [
        {"ColorJitter": {"brightness": 0.2}},
        {"RandomAffine": {"degrees": 15, "translate": [0.1, 0.1]}},
        {"RandomApply": {"transforms": [{"RandomHorizontalFlip": {}}]}},
        {"Normalize": {}},
    ]
    assert plan(entries, STATS, KEY) is None
    missing = uncovered(entries)
    assert [m.split(" ")[0] for m in missing] == ["ColorJitter", "RandomAffine", "RandomApply"]
    assert "rotation" in missing[1]
    assert uncovered(DEFAULT) == []
    assert uncovered([{"ToDtype": {"dtype": "float16", "scale": True}}]) == [
        "ToDtype (only float32 with scale=True is covered)"
    ]


def test_bad_entries_fail_as_in_the_per_sample_path():
    with pytest.raises(ParamsError) as err:
        plan([{"RandomCrop": {"size": 32, "paddin": 4}}], STATS, KEY)
    assert err.value.key == "augment.train.0.RandomCrop.paddin"


def test_wrong_input_is_refused():
    a = aug(DEFAULT)
    with pytest.raises(ValueError, match="uint8"):
        a(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="32"):
        a(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


# --- bind: the same batches from a set of images, by the window route where it applies ----

ROUTED = [
    [{"RandomCrop": {"size": 32, "padding": 4}}, {"Normalize": {}}],  # the tutorial's
    DEFAULT,
    [
        {"RandomCrop": {"size": 28, "padding": [1, 2, 3, 5], "fill": [10, 20, 30]}},
        {"RandomHorizontalFlip": {"p": 0.5}},
        {"RandomHorizontalFlip": {"p": 0.3}},
    ],
    [{"RandomCrop": {"size": 36, "pad_if_needed": True, "fill": 255}}, {"ToTensor": {}}],
    [{"Pad": {"padding": 2, "fill": 7}}, {"RandomHorizontalFlip": {"p": 1.0}}],
    [{"CenterCrop": {"size": 24}}, {"Normalize": {}}],
    [{"CenterCrop": {"size": 35}}],
    [{"RandomHorizontalFlip": {"p": 0.5}}, {"Normalize": {}}, {"RandomErasing": {"p": 0.7}}],
    [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomErasing": {"p": 1.0, "value": "random"}}, {"Normalize": {}}],
    # any padding mode: the images are padded once by the mode's own index maps
    [{"RandomCrop": {"size": 32, "padding": 4, "padding_mode": "reflect"}}],
    [
        {"RandomCrop": {"size": 32, "padding": [2, 1, 3, 2], "padding_mode": "edge"}},
        {"RandomHorizontalFlip": {"p": 0.5}},
        {"Normalize": {}},
    ],
    [{"Pad": {"padding": 3, "padding_mode": "symmetric"}}, {"RandomHorizontalFlip": {"p": 0.5}}],
]
GENERAL = [
    [{"Normalize": {}}],  # no geometry: nothing to precompute
    [{"RandomHorizontalFlip": {"p": 0.5}}, {"RandomCrop": {"size": 32, "padding": 4}}],
    [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomVerticalFlip": {"p": 0.5}}],
    [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1]}}],
    [{"RandomCrop": {"size": 32, "padding": 4}}, {"Normalize": {}}, {"RandomHorizontalFlip": {"p": 0.5}}],
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("entries", ROUTED + GENERAL, ids=lambda e: "-".join(next(iter(d)) for d in e))
def test_bind_takes_exactly_what_indexing_then_augmenting_gives(entries, channels_last):
    from cifarlab.augment.batch import _WindowTaker

    images = batch(40, seed=1)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    a = aug(entries)
    take = a.bind(images)
    assert isinstance(take, _WindowTaker) == (entries in ROUTED)
    for seed, idx in enumerate([torch.tensor([3, 3, 0, 39, 17]), torch.randperm(40, generator=gen(9))]):
        expected = a(images[idx], gen(seed))
        got = take(idx, gen(seed))
        assert got.shape == expected.shape and got.stride() == expected.stride()
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # bit for bit, same random draws


def test_bind_route_crops_and_mirrors_what_torchvision_would():
    """Independently of the general path: the routed batch is a crop of the padded image,
    mirrored where the coin said so."""
    images = batch(12, seed=2)
    a = aug([{"RandomCrop": {"size": 32, "padding": 4, "fill": 9}}, {"RandomHorizontalFlip": {"p": 0.5}}])
    out = a.bind(images)(torch.arange(12), gen(5))
    padded = F.pad(images, [4], fill=9)
    mirrored = 0
    for k in range(12):
        crops = [padded[k, :, t : t + 32, l : l + 32] for t in range(9) for l in range(9)]
        got = (out[k] * 255).round().to(torch.uint8)
        plain = any(torch.equal(got, c) for c in crops)
        flipped = any(torch.equal(got, c.flip(-1)) for c in crops)
        assert plain or flipped
        mirrored += flipped and not plain
    assert 0 < mirrored < 12


def test_random_says_whether_a_list_draws():
    assert not aug([{"Normalize": {}}]).random
    assert not aug([{"CenterCrop": {"size": 24}}, {"ToTensor": {}}, {"Normalize": {}}]).random
    assert not aug([{"Pad": {"padding": 2}}]).random
    for entries in (
        [{"RandomCrop": {"size": 32, "padding": 4}}],
        [{"RandomHorizontalFlip": {"p": 0.5}}],
        [{"RandomErasing": {"p": 0.5}}],
        [{"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1]}}],
    ):
        assert aug(entries).random, entries
