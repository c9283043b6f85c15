"""`cifarlab tensorboard-gather` on a real DVC repository with real experiments.

A one-stage pipeline writes a train and a visualize TensorBoard run whose values depend on a
param; `dvc exp run -S` makes experiments of it. Gathering must copy each experiment's own
runs (read back with TensorBoard's reader), through DVC, into OUT/<experiment>/<run>.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlab.errors import CifarlabError
from cifarlab.gather import gather
from dvc_project import Project

WRITER = """
import yaml
from torch.utils.tensorboard import SummaryWriter

x = yaml.safe_load(open("params.yaml"))["x"]
for run in ("train", "visualize"):
    w = SummaryWriter(f"reports/tensorboard/{run}")
    w.add_scalar(f"{run}/x", x, 0)
    if run == "train":
        w.add_hparams({"x": x}, {"hparam/double": 2 * x}, run_name=".")
    w.close()
"""

DVC_YAML = """stages:
  runs:
    cmd: python write_runs.py
    deps: [write_runs.py]
    params: [x]
    outs: [reports/tensorboard/train, reports/tensorboard/visualize]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("gather") / "repo"
    root.mkdir()
    proj = Project(root)
    (root / "write_runs.py").write_text(WRITER)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("x: 1\n")
    proj.run("git", "init", "-q", "-b", "main")
    proj.dvc("init", "-q")
    proj.dvc("repro", "-q")
    proj.commit("baseline")
    proj.dvc("exp", "run", "-q", "-S", "x=2", "-n", "two")
    proj.dvc("exp", "run", "-q", "-S", "x=3", "-n", "three")
    return proj


def value(run_dir: Path, tag: str) -> float:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc.Scalars(tag)[0].value


def test_gathers_everything_exp_show_lists(repo, tmp_path):
    out = tmp_path / "out"
    lines = []
    done = gather(out, repo=str(repo.path), log=lines.append)
    assert set(done) == {"workspace", "main", "two", "three"}
    assert all(runs == ["train", "visualize"] for runs in done.values())
    expected = {"main": 1, "two": 2, "three": 3, "workspace": 3}  # the last exp run left x=3 in the workspace
    for name, x in expected.items():
        assert value(out / name / "train", "train/x") == x
        assert value(out / name / "visualize", "visualize/x") == x
    acc = EventAccumulator(str(out / "two/train"))
    acc.Reload()
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")  # one hparams row per experiment
    assert lines[-1] == f"tensorboard --logdir {out}"


def test_gathers_only_the_named_ones(repo, tmp_path):
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    done = gather(out, ["two", "workspace"], repo=str(repo.path), log=lambda *_: None)
    assert list(done) == ["two", "workspace"]
    assert sorted(p.name for p in out.iterdir()) == ["old", "two", "workspace"]
    assert value(out / "two/visualize", "visualize/x") == 2


def test_unknown_name_fails_before_copying_anything(repo, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CifarlabError) as err:
        gather(out, ["two", "nope"], repo=str(repo.path), log=lambda *_: None)
    msg = str(err.value)
    assert "nope" in msg and "two" in msg and "three" in msg  # names the listed ones
    assert not out.exists() or not any(out.iterdir())


def test_cli(repo, tmp_path):
    out = tmp_path / "cli"
    (out / "stale").mkdir(parents=True)
    res = repo.run(sys.executable, "-m", "cifarlab.cli", "tensorboard-gather", str(out), "three", "--clean")
    assert "three: train, visualize" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["three"]
    assert value(out / "three/train", "train/x") == 3
    bad = repo.run(sys.executable, "-m", "cifarlab.cli", "tensorboard-gather", str(out), "nope", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: nope: not a revision or experiment")
