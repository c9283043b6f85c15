"""params.yaml `augment.train` / `augment.eval` lists -> torchvision.transforms.v2 pipelines.

This is the per-sample path: the tutorial's own way of augmenting (chapter 1.6), one image at
a time. A list entry is one transform name with its keyword arguments::

    - RandomCrop: {size: 32, padding: 4}
    - RandomApply: {p: 0.5, transforms: [{ColorJitter: {brightness: 0.4}}]}

Names are looked up on `torchvision.transforms.v2` itself rather than in a table of our own,
so every v2 transform is available and a new torchvision release adds its new ones for free;
then among the user package's transforms (`cifarlab.register.register_transform`, e.g. the
course's `AddPepperNoise` in src/cifarlab_user/transforms.py), which never shadow a v2 name.
Only what YAML cannot say is translated here (enum names, dtypes, a matrix in a file, the
tutorial's lambdas), and every mistake becomes a `ParamsError` naming the key path, e.g.
`augment.train.0.RandomCrop.paddin`, so a typo stops the stage before any work is done.

The pipeline always returns a float tensor scaled to 0..1 (normalized where the list says):
a `ToDtype(float32, scale=True)` is inserted wherever a transform needs floats and the list
did not convert yet, and at the end, so lists written for v1 (`ToTensor` in the middle) and
lists without any conversion both work.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from cifarlab import register
from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError, RegistrationError

# v2 classes that cannot work on a lone image: they need labels, boxes, key points or a batch.
# Rejected with the reason instead of failing on the first image, deep in a DataLoader worker.
NOT_PER_IMAGE = {
    "Transform": "the abstract base class, not a transform",
    "MixUp": "mixes a batch and its labels; not a per-image transform",
    "CutMix": "mixes a batch and its labels; not a per-image transform",
    "RandomIoUCrop": "needs bounding boxes (detection only)",
    "SanitizeBoundingBoxes": "needs bounding boxes and labels (detection only)",
    "SanitizeKeyPoints": "needs key points (detection only)",
}

# Transforms whose output is several crops; evaluation averages the crops' predictions.
MULTICROP = {"FiveCrop": 5, "TenCrop": 10}

# Transforms that hold a nested list of entries under `transforms:`.
CONTAINERS = ("Compose", "RandomApply", "RandomChoice", "RandomOrder")

# What a transform needs its input to be: "float" (a float tensor, as Normalize requires),
# "tensor" (no PIL kernel) or "uint8" (JPEG encodes bytes). The conversion is inserted only
# where the list has not already made it.
NEEDS = {
    "Normalize": "float",
    "RandomErasing": "float",
    "LinearTransformation": "float",
    "GaussianNoise": "tensor",
    "JPEG": "uint8",
}

# Keyword arguments given as strings in YAML that torchvision wants as enums.
ENUM_ARGS: dict[str, type[enum.Enum]] = {
    "interpolation": InterpolationMode,
    "policy": v2.AutoAugmentPolicy,
}

#: cifarlab's own entry (issue 22): horizontal flips that alternate between epochs. It needs
#: each image's index and the epoch, so only the batch path (augment/batch.py) runs it.
ALTERNATING_FLIP = "AlternatingHorizontalFlip"

DTYPES = ("float32", "float64", "float16", "bfloat16", "uint8", "int8", "int16", "int32", "int64")


class StackCrops(v2.Transform):
    """The tutorial's `Lambda(lambda crops: torch.stack([ToTensor()(c) for c in crops]))`.

    A `v2.Lambda` would be applied to each crop separately (v2 walks the input's leaves), so
    stacking the tuple that FiveCrop/TenCrop returns needs a transform that sees the whole
    tuple. PIL crops become uint8 tensors; a single image passes through unchanged.
    """

    def forward(self, *inputs: Any) -> Any:
        crops = inputs[0] if len(inputs) == 1 else inputs
        if not isinstance(crops, (list, tuple)):
            return crops
        tensors = [F.to_image(c) if isinstance(c, PIL.Image.Image) else c for c in crops]
        return tv_tensors.Image(torch.stack([t.as_subclass(torch.Tensor) for t in tensors]))


def _identity(x: Any) -> Any:
    return x


# The only functions `Lambda: {fn: NAME}` may name: user text is never evaluated.
LAMBDAS: dict[str, Callable[[], v2.Transform]] = {
    "stack_crops": StackCrops,
    "identity": lambda: v2.Lambda(_identity),
}


def user_transforms() -> dict[str, register.Entry]:
    """The user package's transforms by name; one that reuses a v2 name is a RegistrationError."""
    entries = register.registered("transform")
    for name, entry in entries.items():
        if hasattr(v2, name):
            raise RegistrationError(
                f"{entry.where} registers transform '{name}', which clashes with the "
                f"built-in torchvision.transforms.v2.{name}: register it under another name"
            )
    return entries


def transform_names() -> list[str]:
    """The v2 names an entry may use: the Transform classes that work on a lone image."""
    return sorted(
        name
        for name in dir(v2)
        if isinstance(getattr(v2, name), type)
        and issubclass(getattr(v2, name), v2.Transform)
        and name not in NOT_PER_IMAGE
    )


def _target(name: str) -> Callable[..., Any]:
    """The class (or function) an entry name builds: v2's, else the user package's."""
    return getattr(v2, name, None) or user_transforms()[name].target


def parse_entry(entry: Any, path: str) -> tuple[str, dict[str, Any]]:
    """One list entry -> (name, kwargs), checking its shape and that the name exists."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ParamsError(
            path,
            "must be one transform name with its arguments, like '- RandomCrop: {size: 32, padding: 4}'",
            None if isinstance(entry, dict) else entry,
        )
    ((name, kwargs),) = entry.items()
    if name in NOT_PER_IMAGE:
        raise ParamsError(path, f"{name} cannot be used here: {NOT_PER_IMAGE[name]}", name)
    cls = getattr(v2, str(name), None)
    user = user_transforms()
    if name != ALTERNATING_FLIP and not (isinstance(cls, type) and issubclass(cls, v2.Transform)) and name not in user:
        raise ParamsError(path, "unknown transform", name, transform_names() + [ALTERNATING_FLIP] + sorted(user))
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ParamsError(f"{path}.{name}", "must be a mapping of keyword arguments", kwargs)
    return name, dict(kwargs)


def _to_python(value: Any) -> Any:
    """YAML lists -> tuples (torchvision accepts sequences; tuples are what its defaults use)."""
    if isinstance(value, list):
        return tuple(_to_python(v) for v in value)
    return value


def _convert(name: str, arg: str, value: Any, path: str) -> Any:
    """One keyword argument from YAML to what torchvision expects."""
    where = f"{path}.{name}.{arg}"
    if arg in ENUM_ARGS and isinstance(value, str):
        kind = ENUM_ARGS[arg]
        for member in kind:
            if value.lower() in (member.name.lower(), str(member.value).lower()):
                return member
        raise ParamsError(where, f"unknown {kind.__name__}", value, [m.name for m in kind])
    if arg == "dtype" and isinstance(value, str):
        if value not in DTYPES:
            raise ParamsError(where, "unknown dtype", value, DTYPES)
        return getattr(torch, value)
    return _to_python(value)


def _signature(name: str) -> inspect.Signature:
    sig = inspect.signature(_target(name))
    return sig.replace(
        parameters=[p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    )


def _check_kwargs(
    name: str, kwargs: dict, path: str, accepted: Iterable[str] | None = None, required: Iterable[str] | None = None
) -> None:
    """Unknown keyword arguments are errors naming the accepted ones; so are missing ones."""
    sig = _signature(name)
    if accepted is None:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            return
        accepted = list(sig.parameters)
    accepted = list(accepted)
    for arg in kwargs:
        if arg not in accepted:
            raise ParamsError(f"{path}.{name}.{arg}", "unknown argument", arg, accepted)
    if required is None:
        required = [
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
    missing = [r for r in required if r not in kwargs]
    if missing:
        raise ParamsError(f"{path}.{name}", "missing required argument(s): " + ", ".join(missing))


def resolve_kwargs(name: str, kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    """Checked and converted kwargs with the signature's defaults filled in.

    The batch path reads its parameters from here so both paths agree on every default.
    """
    _check_kwargs(name, kwargs, path)
    converted = {k: _convert(name, k, v, path) for k, v in kwargs.items()}
    bound = _signature(name).bind_partial(**converted)
    bound.apply_defaults()
    return dict(bound.arguments)


def _construct(name: str, path: str, *args: Any, **kwargs: Any) -> v2.Transform:
    try:
        return _target(name)(*args, **kwargs)
    except (*TORCH_ARGUMENT_ERRORS, KeyError) as exc:
        raise ParamsError(f"{path}.{name}", f"invalid arguments: {exc}") from None


def _stats_vector(stats: dict, field: str, path: str) -> tuple[float, ...]:
    values = stats.get(field) if isinstance(stats, dict) else None
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    ):
        raise ParamsError(path, f"the stats' '{field}' must be 3 finite numbers", values)
    if field == "std" and any(v <= 0 for v in values):
        raise ParamsError(path, "the stats' 'std' must be positive", values)
    return tuple(float(v) for v in values)


def normalize_args(
    kwargs: dict[str, Any], stats: dict | None, path: str, check_only: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a Normalize entry: as written, or from the stats when both are left out."""
    where = f"{path}.Normalize"
    _check_kwargs("Normalize", kwargs, path, required=())
    given = [k for k in ("mean", "std") if k in kwargs]
    if len(given) == 1:
        raise ParamsError(where, "give both mean and std, or neither to take them from the stats")
    if given:
        mean, std = (_to_python(kwargs[k]) for k in ("mean", "std"))
        for field, vec in (("mean", mean), ("std", std)):
            if not isinstance(vec, tuple) or not all(isinstance(v, (int, float)) for v in vec):
                raise ParamsError(f"{where}.{field}", "must be a list of numbers, one per channel", vec)
        if any(v == 0 for v in std):
            raise ParamsError(f"{where}.std", "must not contain 0", std)
        return tuple(map(float, mean)), tuple(map(float, std))
    if stats is None:
        if check_only:
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        raise ParamsError(
            where,
            "no mean/std given and no stats to take them from (run the stats stage or write mean: [...], std: [...])",
        )
    return _stats_vector(stats, "mean", where), _stats_vector(stats, "std", where)


def load_linear(file: Any, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """LinearTransformation's matrix and mean vector from an .npz (a matrix cannot live in YAML).

    Loaded with allow_pickle=False: a params file must never be able to run code.
    """
    where = f"{path}.LinearTransformation.file"
    if not isinstance(file, str) or not file:
        raise ParamsError(where, "must be the path of an .npz file", file)
    if not Path(file).is_file():
        raise ParamsError(where, "file does not exist", file)
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ParamsError(
                where,
                "must be an .npz archive holding transformation_matrix and "
                "mean_vector (np.savez), not a single .npy array",
                file,
            )
        with data:
            files = list(data.files)
            arrays = {k: np.asarray(data[k]) for k in ("transformation_matrix", "mean_vector") if k in files}
    except (OSError, ValueError, EOFError) as exc:
        raise ParamsError(where, f"cannot be read as an .npz archive: {exc}", file) from None
    for k in ("transformation_matrix", "mean_vector"):
        if k not in arrays:
            raise ParamsError(where, f"holds no '{k}' array", file, files)
    matrix, mean = arrays["transformation_matrix"], arrays["mean_vector"]
    if not (np.issubdtype(matrix.dtype, np.number) and np.issubdtype(mean.dtype, np.number)):
        raise ParamsError(where, "arrays must be numeric", file)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ParamsError(where, f"transformation_matrix must be square D x D, is {matrix.shape}", file)
    if mean.reshape(-1).shape[0] != matrix.shape[0]:
        raise ParamsError(where, f"mean_vector must have D = {matrix.shape[0]} values, has {mean.size}", file)
    if matrix.shape[0] % 3:
        raise ParamsError(where, f"D = {matrix.shape[0]} must be 3 x H x W for RGB images", file)
    return (torch.as_tensor(matrix, dtype=torch.float32), torch.as_tensor(mean.reshape(-1), dtype=torch.float32))


def _to_float() -> list[v2.Transform]:
    """PIL or any tensor -> float32 0..1 (idempotent on float32, so safe wherever inserted)."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


class _Compiler:
    """Walks the entries, builds each transform and tracks what the data is after each.

    The tracked state is "pil", "uint8", "float" or "unknown" (the input: PIL or uint8, or
    whatever a random container may leave); conversions are inserted only where a transform
    needs something the state does not guarantee. All of them are idempotent.
    """

    def __init__(self, stats: dict | None, check_only: bool):
        self.stats = stats
        self.check_only = check_only
        self.steps: list[tuple[str, list]] = []  # (path, transforms) per top-level entry

    def compile(self, entries: Any, path: str, state: str, top: bool) -> tuple[list, str]:
        """A list of entries, chained: each sees what the previous one left."""
        if not isinstance(entries, (list, tuple)):
            raise ParamsError(path, "must be a list of transforms", entries)
        out: list = []
        crops = 0
        for i, entry in enumerate(entries):
            where = f"{path}.{i}"
            name, kwargs = parse_entry(entry, where)
            if name in MULTICROP:
                if crops:
                    raise ParamsError(f"{where}.{name}", "only one FiveCrop/TenCrop per list")
                crops = MULTICROP[name]
            built, state = self.one(name, kwargs, where, state, top)
            out += built
            if top:
                self.steps.append((f"{where}.{name}", built))
        if crops and not any(isinstance(t, StackCrops) for t in out):
            out.append(StackCrops())
        return out, state

    def one(self, name: str, kwargs: dict, path: str, state: str, top: bool) -> tuple[list, str]:
        """One entry, preceded by the conversion it needs; returns (transforms, state after)."""
        if not top and (name in MULTICROP or (name == "Lambda" and kwargs.get("fn") == "stack_crops")):
            raise ParamsError(
                f"{path}.{name}", "multi-crop must be a top-level entry so every image gives the same number of crops"
            )
        out: list = []
        user = user_transforms()
        need = user[name].options["needs"] if name in user else NEEDS.get(name)
        if need == "float" and state != "float":
            out, state = _to_float(), "float"
        elif need == "tensor" and state in ("pil", "unknown"):
            out, state = [v2.ToImage()], ("uint8" if state == "pil" else "unknown")
        elif need == "uint8" and state != "uint8":
            out, state = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)], "uint8"
        special = getattr(self, f"_build_{name}", None)
        if special is not None:
            built, state = special(kwargs, path, state)
        elif name in CONTAINERS:
            built, state = self._container(name, kwargs, path, state)
        else:
            full = resolve_kwargs(name, kwargs, path)
            built, state = [_construct(name, path, **full)], _state_after(name, full, state)
        return out + built, state

    def _container(self, name: str, kwargs: dict, path: str, state: str) -> tuple[list, str]:
        _check_kwargs(name, kwargs, path)
        where = f"{path}.{name}.transforms"
        rest = {k: _convert(name, k, v, path) for k, v in kwargs.items() if k != "transforms"}
        if name == "Compose":
            nested, end = self.compile(kwargs["transforms"], where, state, top=False)
            return [_construct(name, path, nested, **rest)], end
        # The children run independently (RandomChoice, RandomOrder) or maybe not at all
        # (RandomApply): each is compiled from the same state and carries its own conversions;
        # after the container the state is known only if no child changes it.
        entries = kwargs["transforms"]
        if not isinstance(entries, (list, tuple)) or not entries:
            raise ParamsError(where, "must be a non-empty list of transforms", entries)
        children, ends = [], set()
        for j, entry in enumerate(entries):
            child_name, child_kwargs = parse_entry(entry, f"{where}.{j}")
            built, end = self.one(child_name, child_kwargs, f"{where}.{j}", state, top=False)
            children.append(built[0] if len(built) == 1 else v2.Compose(built))
            ends.add(end)
        after = state if ends == {state} else "unknown"
        return [_construct(name, path, children, **rest)], after

    # -- entries YAML cannot express directly ------------------------------------------------

    def _build_ToTensor(self, kwargs, path, state):
        """v2.ToTensor is deprecated (and leaves tensors as uint8): ToImage + ToDtype instead."""
        _check_kwargs("ToTensor", kwargs, path)
        return _to_float(), "float"

    def _build_Grayscale(self, kwargs, path, state):
        """3 output channels by default, so models built for RGB still get 3 channels."""
        kwargs = {"num_output_channels": 3, **kwargs}
        full = resolve_kwargs("Grayscale", kwargs, path)
        return [_construct("Grayscale", path, **full)], state

    def _build_Normalize(self, kwargs, path, state):
        mean, std = normalize_args(kwargs, self.stats, path, self.check_only)
        inplace = bool(kwargs.get("inplace", False))
        return [_construct("Normalize", path, mean=mean, std=std, inplace=inplace)], "float"

    def _build_LinearTransformation(self, kwargs, path, state):
        _check_kwargs("LinearTransformation", kwargs, path, accepted=["file"], required=["file"])
        matrix, mean = load_linear(kwargs["file"], path)
        return [_construct("LinearTransformation", path, matrix, mean)], "float"

    def _build_AlternatingHorizontalFlip(self, kwargs, path, state):
        """Checked here (no arguments, training lists only); run only by the batch path."""
        for arg in kwargs:
            raise ParamsError(f"{path}.{ALTERNATING_FLIP}.{arg}", "unknown argument (it takes none)", arg)
        if path.startswith("augment.eval"):
            raise ParamsError(
                f"{path}.{ALTERNATING_FLIP}",
                "is a training augmentation (it alternates between epochs); evaluation lists cannot use it",
            )
        if not self.check_only:
            raise ParamsError(
                f"{path}.{ALTERNATING_FLIP}",
                "runs only on the batch path (it needs each "
                "image's index and the epoch): use augment.backend: tensor and only entries the "
                "batch path covers (docs/params/augment.md)",
            )
        return [], state

    def _build_Lambda(self, kwargs, path, state):
        _check_kwargs("Lambda", kwargs, path, accepted=["fn"], required=["fn"])
        fn = kwargs["fn"]
        if not isinstance(fn, str) or fn not in LAMBDAS:
            raise ParamsError(
                f"{path}.Lambda.fn",
                "only named functions can be used (user code is never evaluated)",
                fn if isinstance(fn, str) else None,
                LAMBDAS,
            )
        after = "uint8" if fn == "stack_crops" and state == "pil" else state
        return [LAMBDAS[fn]()], after


def _state_after(name: str, full: dict, state: str) -> str:
    """What a plain (non-special) transform leaves: only conversions change the state."""
    if name == "ToPILImage":
        return "pil"
    if name in ("ToImage", "PILToTensor"):
        return "uint8" if state == "pil" else state
    if name in ("ToDtype", "ConvertImageDtype"):
        dtype = full.get("dtype")
        if isinstance(dtype, torch.dtype):
            return "float" if dtype.is_floating_point else "uint8" if dtype == torch.uint8 else "unknown"
        return "unknown"
    return state


def check_transforms(entries: list[dict], key: str, image_size: tuple[int, int] = (32, 32)) -> None:
    """Validate every name and keyword argument of a list, nested lists included.

    Builds the (cheap) torchvision objects so their own range checks run, then runs the list
    once on a blank image, entry by entry, so what only fails on data (a crop larger than the
    image, a matrix of the wrong size) is caught now and blamed on its entry. A Normalize
    without mean/std is accepted here: the stats are only known to the stage.
    """
    compiler = _Compiler(stats=None, check_only=True)
    compiler.compile(entries, key, "unknown", top=True)
    x: Any = tv_tensors.Image(torch.zeros((3, *image_size), dtype=torch.uint8))
    with torch.random.fork_rng(devices=[]):  # a check must not move the training's RNG
        torch.manual_seed(0)
        for where, transforms in compiler.steps:
            try:
                for t in transforms:
                    x = t(x)
            except Exception as exc:  # torchvision raises many types; all mean bad arguments
                raise ParamsError(where, f"fails on a {image_size[0]}x{image_size[1]} image: {exc}") from None


def build_transform(entries: list[dict], key: str, stats: dict | None) -> v2.Compose:
    """The per-sample pipeline: uint8 image tensor or PIL image -> float32 tensor 0..1.

    Output is [3, H, W], or [ncrops, 3, H, W] after FiveCrop/TenCrop (stacked automatically
    when the list does not say `Lambda: {fn: stack_crops}` itself).
    """
    built, state = _Compiler(stats=stats, check_only=False).compile(entries, key, "unknown", top=True)
    if state != "float":
        built += _to_float()
    built.append(v2.ToPureTensor())
    return v2.Compose(built)


def is_multicrop(entries: list[dict]) -> int:
    """How many crops each image gives (1, or 5/10 after FiveCrop/TenCrop), for averaging."""
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1:
            (name,) = entry
            if name in MULTICROP:
                return MULTICROP[name]
    return 1
