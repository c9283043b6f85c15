"""params.yaml is strict: every typo and bad value is one ParamsError naming the key."""

import copy
from pathlib import Path

import pytest
import yaml

from cifarlab.errors import ParamsError
from cifarlab.params import OptimizerParams, Params, load_params, parse_params
from dvc_project import preset, set_dotted

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value):
    raw = copy.deepcopy(RAW)
    set_dotted(raw, path, value)
    return raw


def test_project_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.optimizer.lr > 0 and p.data.batches == ["test_batch"]
    assert RAW["optimizer"]["SGD"].items() <= p.optimizer.kwargs_for().items()
    assert p.optimizer.kwargs_for("Adam") == OptimizerParams.DEFAULT_KWARGS["Adam"]
    assert p.model.kwargs_for() == RAW["model"]["cifarlab"]["resnet8"]


def test_params_yaml_holds_the_schema_defaults():
    """One source of truth: params.yaml's values are the schema's defaults, so leaving a key
    out of params.yaml changes nothing, and the docs can quote the schema."""
    assert load_params(ROOT / "params.yaml").model_dump() == Params().model_dump()


def test_params_yaml_holds_only_the_knobs():
    """Each key of params.yaml is a column of `dvc exp show`: at most 30 of them."""

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    keys = list(leaves(RAW))
    assert len(keys) <= 30, keys
    assert "runtime" not in RAW and "fetch" not in RAW  # never-retrain and download settings stay out


def test_argument_sections_merge_over_their_defaults():
    p = parse_params(with_change("optimizer.SGD", {"momentum": 0.5}))
    assert p.optimizer.kwargs_for() == dict(OptimizerParams.DEFAULT_KWARGS["SGD"], momentum=0.5)
    p = parse_params(with_change("model.cifarlab", {"resnet8": {"width": 16}}))
    assert p.model.kwargs_for() == {"width": 16}
    p = parse_params(with_change("scheduler.StepLR", {"gamma": 0.5}))
    assert p.scheduler.kwargs_for("StepLR") == {"step_size": 50, "gamma": 0.5}
    assert parse_params({}).model_dump() == Params().model_dump()  # an empty file is the defaults


@pytest.mark.parametrize(
    "path, value, key, words",
    [
        ("split.sed", 3, "split.sed", "unknown key"),
        ("sed", 3, "sed", "unknown key"),
        ("train.epochz", 3, "train.epochz", "unknown key"),
        ("split.train", -0.1, "split.train", "greater than or equal to 0"),
        ("split.train", 0.7, "split", "sum to 1"),
        ("optimizer.lr", 0, "optimizer.lr", "greater than 0"),
        ("optimizer.lr", "fast", "optimizer.lr", "valid number"),
        ("train.epochs", 0, "train.epochs", "greater than or equal to 1"),
        ("train.batch_size", 2.5, "train.batch_size", "integer"),
        ("train.device", "tpu", "train.device", "auto, cpu"),
        ("data.md5", "abc", "data.md5", "32 hexadecimal"),
        ("data.batches", ["test_batch", "data_batch_9"], "data.batches", "data_batch_9"),
        ("data.batches", [], "data.batches", "at least 1"),
        ("data.batches", ["test_batch", "test_batch"], "data.batches", "twice"),
        ("split.mode", "random", "split.mode", "ratio"),
        ("optimizer.SGD", 0.9, "optimizer", "mapping of keyword arguments"),
        ("model.resnet", {"x": {}}, "model", "cifarlab, tutorial, torchvision"),
        ("augment.train", [{"RandomCrop": {}, "Pad": {}}], "augment.train", "one transform name"),
        ("augment.backend", "gpu", "augment.backend", "tensor"),
        ("optimizer.groups", [{"lr_mult": 10}], "optimizer.groups.0", "prefix"),
        ("train.clip", {"mode": "norm", "max": None}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "value", "max": 0}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "norm", "max": -1.5}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "norm", "max": "big"}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "norm", "max": True}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "norm", "max": float("inf")}, "train.clip.max", "must be a positive number"),
        ("train.clip", {"mode": "clamp", "max": 1}, "train.clip.mode", "'none', 'norm' or 'value'"),
        ("optimizer.groups", [{"kind": "weights"}], "optimizer.groups.0.kind", "bias"),
        ("optimizer.groups", [{"prefix": "fc3", "lr": 0.1, "lr_mult": 10}], "optimizer.groups.0", "not both"),
    ],
)
def test_bad_values_name_the_key(path, value, key, words):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(path, value))
    msg = str(err.value)
    assert msg.startswith(f"params.yaml: {key}:"), msg
    assert words in msg, msg


def test_md5_null_skips():
    assert parse_params(with_change("data.md5", None)).data.md5 is None


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


PRESETS = sorted(p.stem for p in (ROOT / "presets").glob("*.args"))


def test_presets_use_the_override_form_that_always_works():
    """`-S ++key=value` adds or overrides; plain `-S key=value` fails on a key params.yaml
    does not write (e.g. optimizer.SGD.fused), so every preset line uses `++`."""
    for name in PRESETS:
        lines = [ln for ln in (ROOT / "presets" / f"{name}.args").read_text().splitlines() if ln.strip()]
        bad = [ln for ln in lines if not ln.startswith("-S ++")]
        assert lines and not bad, f"presets/{name}.args: lines not of the form '-S ++key=value': {bad}"


@pytest.mark.parametrize("name", PRESETS)
def test_presets_apply_through_dvc_exp_run_and_pass_every_check(name, tmp_path):
    """As the README applies a preset: `dvc exp run -n NAME $(cat presets/NAME.args)`, here
    with --queue, so the real dvc applies the overrides to params.yaml (the same code path
    as a run) without training; the queued params.yaml must then pass every check.
    (The docs harness, tests/test_docs_commands.py, runs them to the end.)"""
    import subprocess

    from cifar_factory import make_archive
    from cifarlab.pipeline.train import check_all
    from dvc_project import make_project

    proj = make_project(tmp_path / "proj", make_archive(tmp_path / "a.tar.gz", per_class=2))
    res = subprocess.run(
        ["bash", "-c", f"dvc exp run --queue -n {name} $(cat presets/{name}.args)"],
        cwd=proj.path,
        env=proj.env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    queued = proj.run("git", "show", "refs/exps/celery/stash:params.yaml").stdout
    raw = yaml.safe_load(queued)
    for dotted, value in preset(name).items():  # every override landed, with its value
        node = raw
        for part in dotted.split("."):
            node = node[part]
        assert node == value, (dotted, node, value)
    check_all(parse_params(raw))
