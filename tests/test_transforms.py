"""The per-sample path: params entries -> torchvision.transforms.v2 pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from cifarlab.augment.transforms import (
    LAMBDAS,
    NOT_PER_IMAGE,
    StackCrops,
    build_transform,
    check_transforms,
    is_multicrop,
    transform_names,
)
from cifarlab.errors import ParamsError

STATS = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
KEY = "augment.train"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def img():
    g = torch.Generator().manual_seed(1)
    return tv_tensors.Image(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g))


@pytest.fixture
def linear_file(tmp_path):
    """An identity whitening on 8x8 images (D = 3*8*8), small enough to be fast."""
    path = tmp_path / "zca.npz"
    d = 3 * 8 * 8
    np.savez(path, transformation_matrix=np.eye(d, dtype=np.float32), mean_vector=np.full(d, 0.5, dtype=np.float32))
    return str(path)


def run(entries, image, stats=STATS):
    out = build_transform(entries, KEY, stats)(image)
    assert type(out) is torch.Tensor, "the pipeline must return a plain tensor"
    assert out.dtype == torch.float32
    return out


# --- the tutorial's 22 transforms (chapter 1.6) and the extras the project names -------------

TUTORIAL = {
    "CenterCrop": ([{"CenterCrop": {"size": 24}}], (3, 24, 24)),
    "RandomCrop": ([{"RandomCrop": {"size": 32, "padding": 4}}], (3, 32, 32)),
    "RandomResizedCrop": ([{"RandomResizedCrop": {"size": 28, "interpolation": "bicubic"}}], (3, 28, 28)),
    "FiveCrop": ([{"FiveCrop": {"size": 24}}, {"Lambda": {"fn": "stack_crops"}}], (5, 3, 24, 24)),
    "TenCrop": ([{"TenCrop": {"size": 24}}, {"Lambda": {"fn": "stack_crops"}}], (10, 3, 24, 24)),
    "RandomHorizontalFlip": ([{"RandomHorizontalFlip": {"p": 0.5}}], (3, 32, 32)),
    "RandomVerticalFlip": ([{"RandomVerticalFlip": None}], (3, 32, 32)),
    "RandomRotation": ([{"RandomRotation": {"degrees": 15, "interpolation": "bilinear"}}], (3, 32, 32)),
    "Resize": ([{"Resize": {"size": [40, 36]}}], (3, 40, 36)),
    "Normalize": ([{"Normalize": {}}], (3, 32, 32)),
    "ToTensor": ([{"ToTensor": {}}], (3, 32, 32)),
    "Pad": ([{"Pad": {"padding": [1, 2, 3, 4], "padding_mode": "reflect"}}], (3, 38, 36)),
    "ColorJitter": ([{"ColorJitter": {"brightness": 0.4, "hue": [-0.1, 0.1]}}], (3, 32, 32)),
    "Grayscale": ([{"Grayscale": {}}], (3, 32, 32)),
    "LinearTransformation": ([{"Resize": {"size": 8}}, {"LinearTransformation": {"file": "@"}}], (3, 8, 8)),
    "RandomAffine": ([{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}], (3, 32, 32)),
    "RandomGrayscale": ([{"RandomGrayscale": {"p": 1.0}}], (3, 32, 32)),
    "ToPILImage": ([{"ToPILImage": {}}, {"ColorJitter": {"contrast": 0.5}}, {"ToTensor": {}}], (3, 32, 32)),
    "Lambda": ([{"Lambda": {"fn": "identity"}}], (3, 32, 32)),
    "RandomChoice": (
        [{"RandomChoice": {"transforms": [{"RandomRotation": {"degrees": 5}}, {"Pad": {"padding": 0}}], "p": [1, 3]}}],
        (3, 32, 32),
    ),
    "RandomApply": ([{"RandomApply": {"transforms": [{"ColorJitter": {"brightness": 0.4}}], "p": 1.0}}], (3, 32, 32)),
    "RandomOrder": (
        [{"RandomOrder": {"transforms": [{"RandomHorizontalFlip": {}}, {"RandomVerticalFlip": {}}]}}],
        (3, 32, 32),
    ),
}
EXTRAS = {
    "RandomErasing": ([{"RandomErasing": {"p": 1.0, "value": "random"}}], (3, 32, 32)),
    "AutoAugment": ([{"AutoAugment": {"policy": "CIFAR10"}}], (3, 32, 32)),
    "TrivialAugmentWide": ([{"TrivialAugmentWide": {"interpolation": "nearest"}}], (3, 32, 32)),
    "RandAugment": ([{"RandAugment": {"num_ops": 2, "magnitude": 9}}], (3, 32, 32)),
    "AugMix": ([{"AugMix": {"severity": 3}}], (3, 32, 32)),
}


def test_the_tutorial_has_22():
    assert len(TUTORIAL) == 22


def _fill_file(entries, path):
    return [{n: ({"file": path} if kw == {"file": "@"} else kw)} for e in entries for n, kw in e.items()]


@pytest.mark.parametrize("name", sorted({**TUTORIAL, **EXTRAS}))
@pytest.mark.parametrize("as_pil", [False, True], ids=["tensor", "pil"])
def test_claimed_transform_builds_and_runs(name, as_pil, img, linear_file):
    entries, shape = {**TUTORIAL, **EXTRAS}[name]
    entries = _fill_file(entries, linear_file)
    check_transforms(entries, KEY)
    torch.manual_seed(0)
    out = run(entries, F.to_pil_image(img) if as_pil else img)
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()


# --- every v2 Transform class, with default or small known arguments -------------------------

KNOWN_KWARGS = {
    "CenterCrop": {"size": 24},
    "RandomCrop": {"size": 28},
    "FiveCrop": {"size": 24},
    "TenCrop": {"size": 24},
    "RandomResizedCrop": {"size": 32},
    "Resize": {"size": 32},
    "RandomResize": {"min_size": 30, "max_size": 34},
    "RandomShortestSize": {"min_size": 32},
    "ScaleJitter": {"target_size": [32, 32]},
    "Pad": {"padding": 2},
    "RandomRotation": {"degrees": 10},
    "RandomAffine": {"degrees": 10},
    "GaussianBlur": {"kernel_size": 3},
    "JPEG": {"quality": [50, 90]},
    "RandomAdjustSharpness": {"sharpness_factor": 2.0},
    "RandomPosterize": {"bits": 4},
    "RandomSolarize": {"threshold": 0.5},
    "UniformTemporalSubsample": {"num_samples": 1},
    "ToDtype": {"dtype": "float32", "scale": True},
    "ConvertBoundingBoxFormat": {"format": "XYXY"},
    "SetClampingMode": {"clamping_mode": "soft"},
    "Normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
    "Lambda": {"fn": "identity"},
    "LinearTransformation": {"file": "@"},
    "Compose": {"transforms": [{"RandomHorizontalFlip": {}}]},
    "RandomApply": {"transforms": [{"RandomHorizontalFlip": {}}]},
    "RandomChoice": {"transforms": [{"RandomHorizontalFlip": {}}]},
    "RandomOrder": {"transforms": [{"RandomHorizontalFlip": {}}]},
}
# Output sizes other than [3, 32, 32]; random-size ones give None (any H, W).
SHAPES = {
    "CenterCrop": (3, 24, 24),
    "RandomCrop": (3, 28, 28),
    "FiveCrop": (5, 3, 24, 24),
    "TenCrop": (10, 3, 24, 24),
    "Pad": (3, 36, 36),
    "LinearTransformation": (3, 8, 8),
    "RandomResize": None,
    "ScaleJitter": None,
    "RandomZoomOut": None,
}


@pytest.mark.parametrize("name", transform_names())
def test_every_v2_transform(name, img, linear_file):
    entries = [{name: _fill_file([{name: KNOWN_KWARGS.get(name, {})}], linear_file)[0][name]}]
    if name == "LinearTransformation":
        entries = [{"Resize": {"size": 8}}] + entries
    torch.manual_seed(0)
    out = run(entries, img)
    shape = SHAPES.get(name, (3, 32, 32))
    if shape is None:
        assert out.shape[0] == 3 and out.dim() == 3
    else:
        assert tuple(out.shape) == shape
    assert (out.min() >= 0.0 and out.max() <= 1.0) or name in ("Normalize", "LinearTransformation")


def test_walk_covers_the_tutorial_and_rejects_batch_transforms():
    names = set(transform_names())
    assert set(TUTORIAL) | set(EXTRAS) <= names
    assert not names & set(NOT_PER_IMAGE)
    with pytest.raises(ParamsError) as err:
        check_transforms([{"MixUp": {}}], KEY)
    assert err.value.key == "augment.train.0" and "batch" in str(err.value)


# --- conversions, Normalize and stats --------------------------------------------------------


def test_normalize_takes_the_stats(img):
    out = run([{"Normalize": {}}], img)
    expected = (img.float() / 255 - torch.tensor(STATS["mean"])[:, None, None]) / torch.tensor(STATS["std"])[
        :, None, None
    ]
    torch.testing.assert_close(out, expected)


def test_normalize_given_explicitly_ignores_the_stats(img):
    out = run([{"Normalize": {"mean": [0, 0, 0], "std": [0.5, 0.5, 0.5]}}], img)
    torch.testing.assert_close(out, img.float() / 255 / 0.5)


def test_normalize_without_stats_names_the_key(img):
    with pytest.raises(ParamsError) as err:
        build_transform([{"RandomHorizontalFlip": {}}, {"Normalize": {}}], "augment.eval", None)
    assert err.value.key == "augment.eval.1.Normalize" and "stats" in str(err.value)
    check_transforms([{"Normalize": {}}], "augment.eval")  # the stats are the stage's business
    with pytest.raises(ParamsError, match="both mean and std"):
        build_transform([{"Normalize": {"mean": [0.5, 0.5, 0.5]}}], KEY, STATS)


def test_float_conversion_goes_right_before_the_first_float_transform():
    t = build_transform([{"ColorJitter": {"brightness": 0.2}}, {"RandomErasing": {}}, {"Normalize": {}}], KEY, STATS)
    kinds = [type(x).__name__ for x in t.transforms]
    assert kinds == ["ColorJitter", "ToImage", "ToDtype", "RandomErasing", "Normalize", "ToPureTensor"]


def test_output_is_scaled_even_without_a_conversion(img):
    out = run([{"RandomHorizontalFlip": {"p": 0.0}}], img)
    torch.testing.assert_close(out, img.float() / 255)


def test_to_tensor_after_pil_scales(img):
    out = run([{"ToPILImage": {}}, {"ToTensor": {}}, {"Normalize": {"mean": [0] * 3, "std": [1] * 3}}], img)
    torch.testing.assert_close(out, img.float() / 255)


def test_pil_input_and_jpeg_after_floats(img):
    out = run([{"ToTensor": {}}, {"JPEG": {"quality": 95}}, {"Normalize": {}}], F.to_pil_image(img))
    assert out.shape == (3, 32, 32)


def test_grayscale_keeps_three_channels_unless_told(img):
    out = run([{"Grayscale": {}}], img)
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[2])
    assert run([{"Grayscale": {"num_output_channels": 1}}], img).shape == (1, 32, 32)


def test_enum_and_dtype_arguments_are_converted(img):
    t = build_transform(
        [{"AutoAugment": {"policy": "CIFAR10"}}, {"Resize": {"size": 16, "interpolation": "nearest"}}], KEY, None
    )
    auto, resize = t.transforms[0], t.transforms[1]
    assert auto.policy is v2.AutoAugmentPolicy.CIFAR10
    assert resize.interpolation is InterpolationMode.NEAREST
    t = build_transform([{"ToDtype": {"dtype": "float64", "scale": True}}], KEY, None)
    assert t(img).dtype == torch.float64  # the user's explicit dtype is kept


# --- multi-crop -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,n", [("FiveCrop", 5), ("TenCrop", 10)])
def test_multicrop_stacks_and_counts(name, n, img):
    with_lambda = [{name: {"size": 24}}, {"Lambda": {"fn": "stack_crops"}}, {"Normalize": {}}]
    without = [{name: {"size": 24}}, {"Normalize": {}}]
    assert is_multicrop(with_lambda) == is_multicrop(without) == n
    a, b = run(with_lambda, img), run(without, img)
    assert a.shape == b.shape == (n, 3, 24, 24)
    torch.testing.assert_close(a, b)
    first = F.to_dtype(F.five_crop(img, 24)[0], torch.float32, scale=True)
    torch.testing.assert_close(a[0], F.normalize(first, STATS["mean"], STATS["std"]))
    assert is_multicrop([{"RandomCrop": {"size": 32}}]) == 1


def test_stack_crops_of_pil_crops(img):
    crops = F.five_crop(F.to_pil_image(img), 24)
    assert StackCrops()(crops).shape == (5, 3, 24, 24)
    assert set(LAMBDAS) == {"stack_crops", "identity"}


def test_multicrop_inside_a_random_container_is_refused():
    with pytest.raises(ParamsError) as err:
        check_transforms([{"RandomApply": {"transforms": [{"FiveCrop": {"size": 24}}]}}], KEY)
    assert err.value.key == "augment.train.0.RandomApply.transforms.0.FiveCrop"


# --- nesting ----------------------------------------------------------------------------------


def test_nested_containers_run(img):
    entries = [
        {
            "RandomChoice": {
                "transforms": [
                    {"RandomApply": {"p": 1.0, "transforms": [{"Normalize": {}}, {"RandomErasing": {"p": 1.0}}]}},
                    {"Compose": {"transforms": [{"ToPILImage": {}}, {"Grayscale": {}}]}},
                ]
            }
        }
    ]
    check_transforms(entries, KEY)
    for seed in range(4):
        torch.manual_seed(seed)
        assert run(entries, img).shape == (3, 32, 32)


def test_nested_errors_name_the_path():
    entries = [
        {"RandomCrop": {"size": 32}},
        {"RandomCrop": {"size": 32}},
        {"RandomApply": {"transforms": [{"ColorJitter": {"brightnes": 0.4}}]}},
    ]
    with pytest.raises(ParamsError) as err:
        check_transforms(entries, KEY)
    assert err.value.key == "augment.train.2.RandomApply.transforms.0.ColorJitter.brightnes"
    assert "brightness" in err.value.choices


# --- errors -----------------------------------------------------------------------------------


def test_bad_name():
    with pytest.raises(ParamsError) as err:
        check_transforms([{"RandomCrp": {"size": 32}}], KEY)
    assert err.value.key == "augment.train.0" and err.value.value == "RandomCrp"
    assert "RandomCrop" in err.value.choices


def test_bad_kwarg_names_the_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_transforms([{"RandomCrop": {"size": 32, "paddin": 4}}], KEY)
    assert err.value.key == "augment.train.0.RandomCrop.paddin"
    assert {"padding", "padding_mode", "fill"} <= set(err.value.choices)


def test_missing_and_invalid_values():
    with pytest.raises(ParamsError, match=r"missing required argument.*size"):
        check_transforms([{"RandomCrop": {}}], KEY)
    with pytest.raises(ParamsError) as err:
        check_transforms([{"RandomHorizontalFlip": {}}, {"RandomCrop": {"size": 40}}], KEY)
    assert err.value.key == "augment.train.1.RandomCrop" and "32x32" in str(err.value)
    with pytest.raises(ParamsError) as err:
        check_transforms([{"Resize": {"size": 16, "interpolation": "cubicle"}}], KEY)
    assert err.value.key == "augment.train.0.Resize.interpolation" and "BICUBIC" in err.value.choices
    with pytest.raises(ParamsError):
        check_transforms([{"AutoAugment": {"policy": "MNIST"}}], KEY)
    with pytest.raises(ParamsError, match="mapping"):
        check_transforms([{"RandomCrop": 32}], KEY)


def test_check_does_not_move_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_transforms([{"RandomCrop": {"size": 32, "padding": 4}}, {"AutoAugment": {}}], KEY)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("fn", ["__import__('os').system('true')", "lambda x: x", "print", ["stack_crops"]])
def test_unsafe_lambda_is_refused(fn):
    with pytest.raises(ParamsError) as err:
        check_transforms([{"Lambda": {"fn": fn}}], KEY)
    assert err.value.key == "augment.train.0.Lambda.fn"
    with pytest.raises(ParamsError) as err:
        check_transforms([{"Lambda": {"lambd": "stack_crops"}}], KEY)
    assert err.value.key == "augment.train.0.Lambda.lambd"


def test_linear_transformation_file_checks(tmp_path, linear_file, img):
    out = run([{"Resize": {"size": 8}}, {"LinearTransformation": {"file": linear_file}}], img)
    torch.testing.assert_close(out, F.to_dtype(F.resize(img, [8, 8]), torch.float32, scale=True) - 0.5)
    key = "augment.train.0.LinearTransformation.file"
    cases = {}
    np.save(tmp_path / "single.npy", np.eye(3))
    cases["single .npy array"] = str(tmp_path / "single.npy")
    np.savez(tmp_path / "rect.npz", transformation_matrix=np.zeros((6, 3)), mean_vector=np.zeros(6))
    cases["square"] = str(tmp_path / "rect.npz")
    np.savez(tmp_path / "mean.npz", transformation_matrix=np.eye(6), mean_vector=np.zeros(5))
    cases["mean_vector"] = str(tmp_path / "mean.npz")
    np.savez(tmp_path / "nomean.npz", transformation_matrix=np.eye(6))
    cases["no 'mean_vector'"] = str(tmp_path / "nomean.npz")
    np.savez(
        tmp_path / "pickled.npz", transformation_matrix=np.array([{"a": 1}], dtype=object), mean_vector=np.zeros(1)
    )
    cases["cannot be read"] = str(tmp_path / "pickled.npz")
    cases["does not exist"] = str(tmp_path / "absent.npz")
    for message, path in cases.items():
        with pytest.raises(ParamsError, match=message) as err:
            build_transform([{"LinearTransformation": {"file": path}}], KEY, None)
        assert err.value.key == key
    with pytest.raises(ParamsError) as err:  # D = 192 but a 32x32 image has 3072 values
        check_transforms([{"LinearTransformation": {"file": linear_file}}], KEY)
    assert err.value.key == "augment.train.0.LinearTransformation"
