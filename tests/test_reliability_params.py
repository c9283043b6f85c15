"""Every key of params.yaml, walked: a wrong type, an out-of-range value, a typo or an unknown
name is one ParamsError naming the key, from the schema (`parse_params`) or, for component
names and arguments, from `cifarlab.pipeline.train.check_all`; never silently accepted.

The keys are read from the shipped params.yaml, so a key added later is walked too, and the
out-of-range table must say something about every numeric key (a test checks it does).
Arguments of a component that is not the chosen one (optimizer.Adam.* while SGD trains) are
checked the way a user meets them: with that component chosen (`optimizer.name: Adam`).
Cases marked xfail are bugs found by this walk, described in docs/reliability.md.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from cifarlab.errors import ParamsError
from cifarlab.params import Params, parse_params
from cifarlab.pipeline.train import check_all
from dvc_project import set_dotted

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
# every key the schema has, params.yaml's and the defaults it leaves out alike
RAW = Params().model_dump(mode="json")
COMPONENTS = ("loss", "optimizer", "scheduler")
MODEL_SOURCES = ("cifarlab", "tutorial", "torchvision")


def leaves(node, path=()):
    """(path, value) for every leaf; lists of mappings (augment.train) are walked by index."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, path + (key,))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, value in enumerate(node):
            yield from leaves(value, path + (i,))
    else:
        yield path, node


def keys(node, path=()):
    """Every mapping key, at every depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            yield from keys(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from keys(value, path + (i,))


def dotted(path) -> str:
    return ".".join(str(p) for p in path)


def activate(raw: dict, path) -> None:
    """Choose the component whose argument `path` is, as a user switching to it would."""
    p = [str(x) for x in path]
    if p[0] in COMPONENTS and len(p) >= 3:
        raw[p[0]]["name"] = p[1]
    if p[:2] == ["model", "init"] and len(p) >= 5:
        raw["model"]["init"][p[2]]["name"] = p[3]
    if len(p) >= 3 and p[0] == "model" and p[1] in MODEL_SOURCES:
        raw["model"]["name"] = f"{p[1]}.{p[2]}"


def changed(path, value, extra: dict | None = None) -> dict:
    raw = copy.deepcopy(RAW)
    activate(raw, path)
    node = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    for key, v in (extra or {}).items():
        set_dotted(raw, key, v, create=False)
    return raw


def renamed(path, new: str) -> dict:
    raw = copy.deepcopy(RAW)
    activate(raw, path)
    node = raw
    for p in path[:-1]:
        node = node[p]
    node.update({(new if k == path[-1] else k): v for k, v in [(k, node.pop(k)) for k in list(node)]})
    return raw


def first_error(raw: dict) -> ParamsError | None:
    """The ParamsError that the schema or the component checks raise, or None if all pass."""
    try:
        check_all(parse_params(raw))
    except ParamsError as err:
        return err
    return None


def names_key(err: ParamsError, key: str) -> bool:
    """The error's key is `key` itself, or the component section `key` is an argument of."""
    return err.key == key or key.rsplit(".", 1)[0] == err.key


def known_bug(request, reason: str | None) -> None:
    """Mark a case as a known bug: strict, so the fix turns it into a failure to remove the mark."""
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def wrong_type(value):
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, (int, float)):
        return "abc"
    if isinstance(value, str):
        return {"not": "a string"}
    if value is None:
        return 5  # model.pretrained: a path or null
    return 7  # lists and mappings


LEAVES = list(leaves(RAW))
NUMERIC = [(p, v) for p, v in LEAVES if isinstance(v, (int, float)) and not isinstance(v, bool)]

# Bugs this walk found (docs/reliability.md, "Found by the params walk"); strict, so a fix shows.
WRONG_TYPE_BUGS: dict[str, str] = {}  # all fixed; a new one goes here with its reason


@pytest.mark.parametrize("path, value", LEAVES, ids=[dotted(p) for p, _ in LEAVES])
def test_every_key_refuses_a_wrong_type(request, path, value):
    key = dotted(path)
    known_bug(request, WRONG_TYPE_BUGS.get(key))
    err = first_error(changed(path, wrong_type(value)))
    assert err is not None, f"{key}: {wrong_type(value)!r} accepted"
    assert names_key(err, key), f"{key}: the error names {err.key!r}: {err}"
    assert str(err).startswith(f"params.yaml: {err.key}: ")


# One out-of-range value per numeric key, with any other change it needs to take effect;
# None where no value is out of range (said why). Every numeric key must be listed.
OUT_OF_RANGE: dict[str, tuple | None] = {
    "seed": (2**64, {}),  # torch.manual_seed and the per-epoch generators take < 2**63
    "split.train": (1.5, {}),
    "train.clip.max": (0, {}),
    "train.clip.norm_type": (0, {}),
    "scheduler.ExponentialLR.gamma": (-1.0, {"scheduler.name": "ExponentialLR"}),
    "split.valid": (-0.1, {}),
    "split.test": (1.5, {}),
    "split.seed": (-1, {}),  # numpy's default_rng takes non-negative seeds only
    "model.init.conv.xavier_normal_.gain": (-1.0, {}),
    "model.init.linear.normal_.mean": (math.nan, {}),
    "model.init.linear.normal_.std": (-1.0, {}),
    "model.init.batchnorm.constant_.val": (math.nan, {}),
    "model.cifarlab.resnet8.width": (1, {}),
    "model.whiten.eps": (0, {}),
    "model.whiten.bias_epochs": (-1, {}),
    "model.whiten.images": (0, {}),
    "train.ema.every": (0, {}),
    "train.ema.start_epoch": (-1, {}),
    "augment.train.0.RandomCrop.size": (41, {}),  # larger than the image padded by 4
    "augment.train.0.RandomCrop.padding": (-1, {}),
    "augment.train.1.RandomHorizontalFlip.p": (1.5, {}),
    "loss.CrossEntropyLoss.label_smoothing": (-0.5, {}),
    "optimizer.lr": (0, {}),
    "optimizer.SGD.momentum": (-0.5, {}),
    "optimizer.SGD.dampening": (0.5, {}),  # with nesterov: true, dampening must be 0
    "optimizer.SGD.weight_decay": (-1.0, {}),
    "optimizer.Adam.weight_decay": (-1.0, {}),
    "optimizer.AdamW.weight_decay": (-1.0, {}),
    "scheduler.OneCycleLR.pct_start": (1.5, {}),
    "scheduler.StepLR.step_size": (0, {}),
    "scheduler.StepLR.gamma": (-0.5, {"scheduler.StepLR.step_size": 1}),  # a negative lr by epoch 2
    "scheduler.ReduceLROnPlateau.factor": (1.5, {}),
    "scheduler.ReduceLROnPlateau.patience": None,  # torch takes any int; a negative one acts as 0
    "train.epochs": (0, {}),
    "train.batch_size": (0, {}),
    "runtime.threads": (-1, {}),
    "runtime.num_workers": (-1, {}),
    "train.nproc": (0, {}),
    "train.log_every_steps": (-1, {}),
    "evaluate.batch_size": (0, {}),
    "visualize.batch_size": (0, {}),
    "visualize.grid_images": (1025, {}),
    "visualize.embedding_images": (0, {}),
    "visualize.kernels_channels": (257, {}),
    "visualize.feature_images": (33, {}),
    "visualize.feature_channels": (65, {}),
    "visualize.gradcam_images": (65, {}),
}
OUT_OF_RANGE_BUGS: dict[str, str] = {}  # all fixed; a new one goes here with its reason


def test_the_out_of_range_table_covers_every_numeric_key():
    assert {dotted(p) for p, _ in NUMERIC} == set(OUT_OF_RANGE)


# keys with an out-of-range value (those without one say why in the table, which a test checks)
BOUNDED = [(p, v) for p, v in NUMERIC if OUT_OF_RANGE.get(dotted(p)) is not None]


@pytest.mark.parametrize("path, value", BOUNDED, ids=[dotted(p) for p, _ in BOUNDED])
def test_every_numeric_key_refuses_an_out_of_range_value(request, path, value):
    key = dotted(path)
    known_bug(request, OUT_OF_RANGE_BUGS.get(key))
    bad, extra = OUT_OF_RANGE[key]
    err = first_error(changed(path, bad, extra))
    assert err is not None, f"{key}: {bad!r} accepted"
    assert names_key(err, key), f"{key}: the error names {err.key!r}: {err}"


# A typo of a key: the misspelt key (or the section holding it) is named, whatever the depth.
KEYS = [p for p in keys(RAW) if isinstance(p[-1], str)]


@pytest.mark.parametrize("path", KEYS, ids=[dotted(p) for p in KEYS])
def test_a_typo_of_any_key_is_an_error(request, path):
    key = dotted(path)
    typo = path[-1] + "x"
    err = first_error(renamed(path, typo))
    assert err is not None, f"{key} misspelt as {typo!r} was accepted"
    typo_key = dotted(path[:-1] + (typo,))
    parent = dotted(path[:-1])
    assert err.key in (typo_key, key) or (err.key in (parent, dotted(path[:-2])) and typo in str(err)), (
        f"{key} -> {typo}: {err}"
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.name", "torchvision.resnet19"),
        ("model.name", "resnet18"),
        ("loss.name", "CrossEntropyLos"),
        ("optimizer.name", "SDG"),
        ("scheduler.name", "OneCycle"),
        ("model.init.conv.name", "kaiming_normall"),
        ("augment.train.0", {"RandomCorp": {"size": 32}}),
        ("augment.eval.0", {"Normalise": {}}),
    ],
)
def test_an_unknown_component_name_lists_the_choices(key, value):
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    err = first_error(changed(path, value))
    assert err is not None and err.key == key, err
    assert err.choices, f"{key}: no choices listed: {err}"


def test_the_shipped_params_pass_every_check():
    assert first_error(copy.deepcopy(RAW)) is None


# Numbers beyond what torch converts (inf where an int is needed, integers beyond float range):
# torch raises OverflowError, which must come out as a ParamsError naming the section.
EXTREME = [
    ("augment.train.0.RandomCrop.size", math.inf, "augment.train.0.RandomCrop"),
    ("optimizer.SGD.weight_decay", 10**400, "optimizer.SGD"),
    ("optimizer.lr", 1e308, "optimizer.SGD"),
    ("model.init.linear.normal_.std", 10**400, "model.init.linear"),
]


@pytest.mark.parametrize("key, value, named", EXTREME, ids=[k for k, _, _ in EXTREME])
def test_numbers_torch_cannot_convert_are_params_errors(key, value, named):
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    err = first_error(changed(path, value))
    assert err is not None, f"{key}: {value!r} accepted"
    assert err.key.startswith(named), err
