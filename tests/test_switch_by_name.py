"""Every component the tutorial teaches switches by name alone: `-S scheduler.name=X` for its
six lr schedulers (3.4) and `-S loss.name=Y` for every supported loss trains, with nothing
else written, on top of the project's own params.yaml.

In-process (the train stage's `fit` on a tiny tree, one epoch) for each name; through the
real `dvc exp run` for one scheduler and one loss together (slow).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from cifar_factory import make_archive
from cifarlab.optim.losses import supported_losses
from cifarlab.params import parse_params
from cifarlab.pipeline.train import fit
from dvc_project import ROOT, make_project, set_dotted
from tiny_tree import make_tree, train_paths

pytestmark = pytest.mark.usefixtures("one_thread")

#: The tutorial's six schedulers, section 3.4.
SCHEDULERS = ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "ReduceLROnPlateau", "LambdaLR"]
PROJECT = yaml.safe_load((ROOT / "params.yaml").read_text())
#: Small and quick; none of these keys is a scheduler's or a loss's.
TINY = {
    "model.name": "tutorial.net",
    "train.epochs": 1,
    "train.batch_size": 8,
    "runtime.threads": 1,
    "train.histograms": False,
    "train.device": "cpu",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Smaller than conftest.py's tree: 4 images per class, one epoch for each of many names."""
    return make_tree(tmp_path_factory.mktemp("tree"), per_class=4)


def with_name(section: str, name: str):
    """params.yaml as `dvc exp run -S <section>.name=<name>` leaves it (the key exists, so plain
    -S overrides it), plus the tiny-run keys."""
    raw = copy.deepcopy(PROJECT)
    for dotted, value in TINY.items():  # test plumbing: some are schema defaults params.yaml leaves out
        set_dotted(raw, dotted, value)
    set_dotted(raw, f"{section}.name", name, create=False)  # the key exists: plain -S overrides it
    return parse_params(raw)


def train_one_epoch(tree: Path, out: Path, params) -> dict:
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        history = fit(params, train_paths(tree, out), log=lambda *_: None)["history"]
    finally:
        os.chdir(cwd)
    assert (out / "models" / "model.pt").is_file()
    return history[-1]


def test_the_tutorial_schedulers_are_not_written_in_params_yaml_except_two():
    """What the name-alone tests rely on: most of the six have no section in params.yaml."""
    assert not {"MultiStepLR", "ExponentialLR", "LambdaLR", "CosineAnnealingLR"} & set(PROJECT["scheduler"])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_tutorial_scheduler_trains_an_epoch_from_its_name_alone(tree, tmp_path, name):
    params = with_name("scheduler", name)
    assert params.scheduler.name == name
    last = train_one_epoch(tree, tmp_path, params)
    assert int(last["epoch"]) == 1 and math.isfinite(float(last["train_loss"]))
    assert float(last["lr_0"]) > 0


@pytest.mark.parametrize("name", supported_losses())
def test_every_supported_loss_trains_an_epoch_from_its_name_alone(tree, tmp_path, name):
    params = with_name("loss", name)
    last = train_one_epoch(tree, tmp_path, params)
    assert int(last["epoch"]) == 1 and math.isfinite(float(last["train_loss"]))


@pytest.mark.slow
def test_dvc_exp_run_switches_scheduler_and_loss_by_name(tmp_path):
    """`dvc exp run -S scheduler.name=MultiStepLR -S loss.name=MultiMarginLoss` through the real dvc,
    with neither section written in params.yaml."""
    proj = make_project(tmp_path / "proj", make_archive(tmp_path / "a.tar.gz", per_class=10), params=TINY)
    res = proj.dvc("exp", "run", "train", "-S", "scheduler.name=MultiStepLR", "-S", "loss.name=MultiMarginLoss")
    assert "train" in proj.ran(res)
    written = yaml.safe_load((proj.path / "params.yaml").read_text())
    assert written["scheduler"]["name"] == "MultiStepLR" and "MultiStepLR" not in written["scheduler"]
    assert written["loss"]["name"] == "MultiMarginLoss" and "MultiMarginLoss" not in written["loss"]
    metrics = json.loads((proj.path / "reports/train/metrics.json").read_text())
    assert metrics, "no training metrics"
