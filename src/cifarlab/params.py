"""The schema of params.yaml: every key is checked before a stage does any work.

Structure, types and ranges are checked here with pydantic, without importing torch, so the
data stages stay fast. Component *names* (an optimizer, a loss, a transform...) are open sets
defined by torch and torchvision: their builders check them against the library itself and
raise the same `ParamsError`, naming the key, the value and the choices.

A component section holds `name` plus one mapping of keyword arguments per candidate name::

    optimizer:
      name: SGD
      SGD: {momentum: 0.9}
      Adam: {betas: [0.9, 0.999]}

so `dvc exp run -S optimizer.name=Adam` switches without leaving SGD's arguments behind.

This schema holds every default. params.yaml holds only the knobs people turn (each of its
keys is a column of `dvc exp show`); a key it leaves out keeps the default below, and
`dvc exp run -S ++key=value` sets it. Keyword-argument sections merge key by key over their
defaults (`DEFAULT_KWARGS`), so `-S ++optimizer.SGD.nesterov=false` keeps SGD's other defaults.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cifarlab.errors import ParamsError

DEFAULT_PARAMS = "params.yaml"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
BATCHES = TRAIN_BATCHES + ("test_batch",)


def _check_device(v: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
    return v


class _Strict(BaseModel):
    """A section whose every key is known: a typo is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def merge(defaults: dict, given: dict) -> dict:
    """`given` over `defaults`, mapping by mapping (lists and scalars replace)."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class _Component(BaseModel):
    """`name` plus per-name keyword-argument mappings (the extra keys), over DEFAULT_KWARGS."""

    model_config = ConfigDict(extra="allow")
    name: str
    #: keyword arguments a name gets unless params.yaml says otherwise, argument by argument
    DEFAULT_KWARGS: ClassVar[dict[str, dict[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, defaults in cls.DEFAULT_KWARGS.items():
            given = data.get(name, {})
            if isinstance(given, dict):  # anything else is left for the validator to name
                out[name] = merge(defaults, given)
        return out

    @model_validator(mode="after")
    def _extras_are_mappings(self):
        for key, value in (self.model_extra or {}).items():
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"'{key}' must be a mapping of keyword arguments for {key}, not {value!r}")
        return self

    def kwargs_for(self, name: Optional[str] = None) -> dict[str, Any]:
        """The keyword arguments written for `name` (the chosen one by default)."""
        return dict((self.model_extra or {}).get(name or self.name) or {})


class DataParams(_Strict):
    archive: str = "data/cifar-10-python.tar.gz"
    md5: Optional[str] = OFFICIAL_MD5
    batches: list[str] = Field(default_factory=lambda: ["test_batch"], min_length=1)

    @field_validator("md5")
    @classmethod
    def _md5_hex(cls, v):
        if v is not None and (v == "null" or v == ""):
            return None
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", v):
            raise ValueError("must be 32 hexadecimal digits, or null to skip the check")
        return v.lower() if v else v

    @field_validator("batches")
    @classmethod
    def _known_batches(cls, v):
        for b in v:
            if b not in BATCHES:
                raise ValueError(f"unknown batch {b!r}; choices: {', '.join(BATCHES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a batch twice: {v}")
        return v


class SplitParams(_Strict):
    mode: Literal["ratio", "standard"] = "ratio"
    train: float = Field(default=0.8, ge=0, le=1)
    valid: float = Field(default=0.1, ge=0, le=1)
    test: float = Field(default=0.1, ge=0, le=1)
    seed: int = Field(default=0, ge=0, lt=2**32)  # numpy's generators take non-negative seeds

    @model_validator(mode="after")
    def _ratios(self):
        if self.mode == "ratio":
            total = self.train + self.valid + self.test
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                raise ValueError(
                    f"train + valid + test must sum to 1, got {self.train} + {self.valid} + {self.test} = {total:g}"
                )
        elif self.train + self.valid <= 0:
            raise ValueError("standard mode splits the training batches train:valid; both are 0")
        return self


class FetchParams(_Strict):
    """Where `cifarlab get-archive` downloads from; no stage reads it, so it never reruns one."""

    url: str = OFFICIAL_URL


class ConvInit(_Component):
    name: str = "default"
    DEFAULT_KWARGS = {"kaiming_normal_": {"mode": "fan_out", "nonlinearity": "relu"}, "xavier_normal_": {"gain": 1.0}}


class LinearInit(_Component):
    name: str = "default"
    DEFAULT_KWARGS = {"normal_": {"mean": 0.0, "std": 0.01}}


class NormInit(_Component):
    name: str = "default"
    DEFAULT_KWARGS = {"constant_": {"val": 1.0}}


class InitParams(_Strict):
    conv: ConvInit = Field(default_factory=ConvInit)
    linear: LinearInit = Field(default_factory=LinearInit)
    batchnorm: NormInit = Field(default_factory=NormInit)


MODEL_SOURCES = ("cifarlab", "tutorial", "torchvision", "user")


class WhitenParams(_Strict):
    """model.whiten: the first conv initialized from the training images' patch whitening
    (airbench94, issue 22); its weight is frozen, its bias trained for `bias_epochs` epochs."""

    enabled: bool = False
    eps: float = Field(default=5e-4, gt=0)
    #: epochs the first conv's bias trains before it is frozen too; null: it trains throughout
    bias_epochs: Optional[int] = Field(default=3, ge=0)
    #: training images the patch covariance is estimated from (the first ones of train.txt)
    images: int = Field(default=5000, ge=1)


class ModelParams(_Strict):
    model_config = ConfigDict(extra="allow", validate_default=True)
    name: str = "cifarlab.resnet8"
    pretrained: Optional[str] = None
    freeze: list[str] = Field(default_factory=list)
    channels_last: bool = True
    init: InitParams = Field(default_factory=InitParams)
    whiten: WhitenParams = Field(default_factory=WhitenParams)
    # model.<source>.<arch>: that model's keyword arguments (a mapping, or null for none);
    # declared fields, so a wrong type is reported at its own key (model.tutorial.resnet34)
    cifarlab: dict[str, Optional[dict[str, Any]]] = Field(default_factory=lambda: {"resnet8": {"width": 32}})
    tutorial: dict[str, Optional[dict[str, Any]]] = Field(default_factory=dict)
    torchvision: dict[str, Optional[dict[str, Any]]] = Field(default_factory=dict)
    user: dict[str, Optional[dict[str, Any]]] = Field(default_factory=dict)  # src/cifarlab_user's models

    @model_validator(mode="before")
    @classmethod
    def _merge_source_defaults(cls, data):
        """model.cifarlab.resnet8.width: 16 keeps the other defaults of model.cifarlab."""
        if isinstance(data, dict) and isinstance(data.get("cifarlab"), dict):
            data = {**data, "cifarlab": merge({"resnet8": {"width": 32}}, data["cifarlab"])}
        return data

    @model_validator(mode="after")
    def _no_other_keys(self):
        for key in self.model_extra or {}:
            raise ValueError(f"unknown key '{key}'; model arguments live under one of {', '.join(MODEL_SOURCES)}")
        return self

    def sources(self) -> dict[str, dict[str, Optional[dict[str, Any]]]]:
        """{source: {arch: kwargs}} for the argument sections written."""
        return {src: getattr(self, src) for src in MODEL_SOURCES if getattr(self, src)}

    def kwargs_for(self, name: Optional[str] = None) -> dict[str, Any]:
        """Arguments for a model `source.arch`, written at model.<source>.<arch>."""
        name = name or self.name
        source, _, arch = name.partition(".")
        if source not in MODEL_SOURCES:
            return {}
        return dict(getattr(self, source).get(arch) or {})


class AugmentParams(_Strict):
    backend: Literal["tensor", "pil"] = "tensor"
    train: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"RandomCrop": {"size": 32, "padding": 2, "padding_mode": "reflect"}},
            {"RandomHorizontalFlip": {"p": 0.5}},
            {"Normalize": {}},
        ]
    )
    eval: list[dict[str, Any]] = Field(default_factory=lambda: [{"Normalize": {}}])

    @field_validator("train", "eval")
    @classmethod
    def _one_name_each(cls, v):
        for i, entry in enumerate(v):
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(
                    f"entry {i} must be one transform name with its arguments, like "
                    f"'- RandomCrop: {{size: 32, padding: 4}}', not {entry!r}"
                )
        return v


class LossParams(_Component):
    name: str = "CrossEntropyLoss"
    DEFAULT_KWARGS = {"CrossEntropyLoss": {"label_smoothing": 0.1}}


class ParamGroup(BaseModel):
    """One entry of optimizer.groups: which parameters (prefix, kind or both), and their args.

    Any other key is an argument of the chosen optimizer for this group (momentum,
    weight_decay, betas...), checked against its signature in cifarlab.optim.optimizers.
    """

    model_config = ConfigDict(extra="allow", validate_default=True)
    prefix: Optional[str] = Field(default=None, min_length=1)
    kind: Optional[Literal["bias", "norm", "norm_bias", "norm_weight"]] = None
    lr_mult: Optional[float] = Field(default=None, gt=0)
    lr: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _selects_and_one_lr(self):
        if self.prefix is None and self.kind is None:
            raise ValueError(
                "a group needs a prefix (a module path like fc3), a kind "
                "(bias, norm, norm_bias or norm_weight), or both"
            )
        if self.lr is not None and self.lr_mult is not None:
            raise ValueError("give lr (the group's own) or lr_mult (times optimizer.lr), not both")
        return self

    def kwargs(self) -> dict[str, Any]:
        """The optimizer arguments this group sets besides its lr."""
        return dict(self.model_extra or {})

    def group_lr(self, base: float) -> float:
        return self.lr if self.lr is not None else base * (self.lr_mult or 1.0)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in (("prefix", self.prefix), ("kind", self.kind)) if v)


class OptimizerParams(_Component):
    name: str = "SGD"
    lr: float = Field(default=0.47, gt=0)
    groups: list[ParamGroup] = Field(default_factory=list)
    #: true: every weight_decay (optimizer.<Name> and each group's) is the fraction the weights
    #: shrink by per step at the group's base lr; torch is given weight_decay / lr (issue 22)
    decouple_weight_decay: bool = False
    DEFAULT_KWARGS = {
        "SGD": {"momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0005},
        "Adam": {"weight_decay": 0.0},
        "AdamW": {"weight_decay": 0.05},
    }


class SchedulerParams(_Component):
    name: str = "OneCycleLR"
    #: the tutorial's values (3.4 and its training script) for the arguments torch requires,
    #: so that `-S scheduler.name=X` alone switches to any of them
    DEFAULT_KWARGS = {
        "OneCycleLR": {"pct_start": 0.25},
        "StepLR": {"step_size": 50, "gamma": 0.1},
        "MultiStepLR": {"milestones": [30, 80, 120]},
        "ExponentialLR": {"gamma": 0.95},
        "LambdaLR": {"lr_lambda": "0.95 ** epoch"},
        "ReduceLROnPlateau": {"monitor": "valid_loss", "factor": 0.1, "patience": 5},
    }


class ClipParams(_Strict):
    """train.clip: gradient clipping after backward (after unscaling under fp16 autocast)."""

    mode: Literal["none", "norm", "value"] = "none"
    max: Any = 1.0  # checked below, so every bad value gets the same one line
    norm_type: float = Field(default=2.0, gt=0)

    @field_validator("max")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, str):  # YAML reads 1e-3 (no dot) as text
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(
                "must be a positive number, the largest gradient norm (mode norm) or element (mode value) to allow"
            )
        return float(v)


class EmaParams(_Strict):
    """train.ema: an exponential moving average of the weights (torch.optim.swa_utils), which
    validation and the saved model use; with lookahead, the average is copied back into the
    trained weights at each update (hlb-cifar10 / airbench94's lookahead, issue 22)."""

    #: weight of the old average at each update; 0 or null: off
    decay: Optional[float] = Field(default=None, ge=0, lt=1)
    every: int = Field(default=5, ge=1)  # optimizer steps between updates
    start_epoch: int = Field(default=0, ge=0)  # updates begin with this epoch (0: the first)
    lookahead: bool = False

    @property
    def on(self) -> bool:
        return bool(self.decay)


class TrainParams(_Strict):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=1)
    device: str = "auto"
    amp: bool = True
    nproc: int = Field(default=1, ge=1)
    compile: bool = False
    histograms: bool = True
    #: per-layer activation std and gradient norm on a fixed validation batch, at step 0 and
    #: after every epoch (TensorBoard `layers/*`, reports/train/layers.csv); never changes the training
    diagnostics: bool = True
    #: train loss and learning rate in TensorBoard every this many steps (`step/*`); 0: off
    log_every_steps: int = Field(default=50, ge=0)
    clip: ClipParams = Field(default_factory=ClipParams)
    ema: EmaParams = Field(default_factory=EmaParams)

    _device = field_validator("device")(lambda cls, v: _check_device(v))


class RuntimeParams(_Strict):
    """How fast, never what: no stage declares this section, so changing it never reruns one."""

    threads: int = Field(default=0, ge=0)
    num_workers: int = Field(default=0, ge=0)


class EvaluateParams(_Strict):
    batch_size: int = Field(default=500, ge=1)
    #: test-time augmentation, logits averaged: flip (image and mirror), flip_translate (also
    #: one-pixel translations with reflection, airbench94's weights 0.5, 0.25, 0.25); issue 22
    tta: Literal["none", "flip", "flip_translate"] = "flip_translate"


class VisualizeParams(_Strict):
    """What the visualize stage draws. Layer names and class indices depend on the model and
    the data, so the stage checks them against the loaded model (cifarlab.viz.layers)."""

    device: str = "cpu"
    batch_size: int = Field(default=250, ge=1)
    classes: list[int | str] = Field(default_factory=list)
    grid_images: int = Field(default=64, ge=1, le=1024)
    embedding_images: int = Field(default=500, ge=1)
    kernels_layer: str = Field(default="auto", min_length=1)
    kernels_channels: int = Field(default=16, ge=1, le=256)
    feature_layers: list[str] | str = "auto"
    feature_images: int = Field(default=3, ge=1, le=32)
    feature_channels: int = Field(default=8, ge=1, le=64)
    gradcam_layer: str = Field(default="auto", min_length=1)
    gradcam_images: int = Field(default=8, ge=1, le=64)

    _device = field_validator("device")(lambda cls, v: _check_device(v))

    @field_validator("feature_layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, str):
            return v if v == "auto" else [v]
        if not v or any(not name for name in v):
            raise ValueError("must be auto or a non-empty list of layer names")
        return v


class Params(_Strict):
    # below 2**32: per-epoch seeds are derived as seed * 1_000_003 + epoch and must fit torch's int64
    seed: int = Field(default=0, ge=0, lt=2**32)
    data: DataParams = Field(default_factory=DataParams)
    fetch: FetchParams = Field(default_factory=FetchParams)
    split: SplitParams = Field(default_factory=SplitParams)
    model: ModelParams = Field(default_factory=ModelParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    loss: LossParams = Field(default_factory=LossParams)
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    scheduler: SchedulerParams = Field(default_factory=SchedulerParams)
    train: TrainParams = Field(default_factory=TrainParams)
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    visualize: VisualizeParams = Field(default_factory=VisualizeParams)


#: How pydantic tags the member of a union a value was tried against (`list[str]`, `str`):
#: a type, not a key, so it is left out of the key an error names.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|tuple\[.*\])$")


def _key(loc) -> str:
    return ".".join(
        str(p)
        for p in loc
        if not str(p).startswith("function-after") and not (isinstance(p, str) and _UNION_TAG.match(p))
    )


def _format(err: Mapping[str, Any], siblings: Sequence[Mapping[str, Any]] = ()) -> ParamsError:
    loc = _key(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    # a value that fits no member of a union: one message per member, all at the same key
    others = [e["msg"].removeprefix("Value error, ") for e in siblings if _key(e["loc"]) == loc]
    if others:
        msg = " or ".join(dict.fromkeys([msg, *others]))
    if err["type"] == "extra_forbidden":
        return ParamsError(loc or "<top>", "unknown key (a typo?); remove it or fix its name")
    value = err.get("input")
    shown = value if isinstance(value, (int, float, str, bool)) or value is None else None
    return ParamsError(loc or "<top>", msg, shown if err["type"] != "missing" else None)


def parse_params(raw: Any) -> Params:
    """Validate an already-loaded mapping; raise ParamsError on the first problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("<top>", "params.yaml must be a mapping of sections", type(raw).__name__)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise _format(errors[0], errors[1:]) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError("<file>", f"{path} does not exist") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError("<file>", f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)
