"""Train and evaluate through the real dvc CLI on a tiny archive: repro, experiments, resume."""

import csv
import json
import os
import signal
import subprocess

import pytest

from cifar_factory import make_archive
from dvc_project import TINY, make_project

DATA = {"unpack", "split", "index", "stats"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("arc") / "cifar.tar.gz", per_class=10)


@pytest.fixture(scope="module")
def project(tmp_path_factory, archive):
    proj = make_project(tmp_path_factory.mktemp("e2e") / "proj", archive, TINY)
    first = proj.dvc("repro")
    assert DATA | {"train", "evaluate"} <= set(proj.ran(first)), first.stdout
    proj.commit("trained")
    return proj


def test_outputs(project):
    root = project.path
    assert (root / "models/model.pt").is_file() and (root / "models/last.pt").is_file()
    history = (root / "reports/train/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_acc,valid_loss,valid_acc,lr_0")
    assert len(history) == 1 + TINY["train.epochs"]
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    assert set(metrics) == {"test"} and set(metrics["test"]) == {"acc", "loss", "macro_f1"}
    assert 0 <= metrics["test"]["acc"] <= 1
    report = json.loads((root / "reports/eval/report.json").read_text())
    assert report["accuracy"] == metrics["test"]["acc"] and set(report["per_class"]) and "f1" in report["macro"]
    per_class = (root / "reports/eval/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 11
    train = json.loads((root / "reports/train/metrics.json").read_text())
    assert train["complete"] is True and train["epoch"] == TINY["train.epochs"]
    assert set(train) == {"epoch", "complete", "train", "valid"}
    assert (root / "reports/eval/confusion.csv").read_text().startswith("actual,predicted\n")
    assert list((root / "reports/tensorboard/train").glob("events.out.tfevents.*"))
    assert not list((root / "checkpoints").glob("*/checkpoint.pt")), "a finished run prunes its checkpoint"


def test_experiment_reruns_no_data_stage_and_metrics_diff(project):
    res = project.dvc("exp", "run", "-S", "optimizer.lr=0.01")
    ran = set(project.ran(res))
    assert "train" in ran and not (ran & DATA), res.stdout
    diff = project.dvc("metrics", "diff", "--all", "--json")
    changed = json.loads(diff.stdout)
    assert "reports/eval/metrics.json" in changed and "test.acc" in changed["reports/eval/metrics.json"]
    show = project.dvc("exp", "show", "--json")
    assert "optimizer.lr" in show.stdout or "0.01" in show.stdout
    plots = project.dvc("plots", "diff", "HEAD", "--json")
    assert "history.csv" in plots.stdout
    # switching the optimizer by name alone works (SGD's momentum stays with SGD)
    adam = project.dvc("exp", "run", "-S", "optimizer.name=Adam", "-S", "optimizer.lr=0.001")
    assert "train" in project.ran(adam)


def test_run_cache_restores_an_earlier_experiment(project):
    # back to the committed params: DVC restores train from its run cache instead of retraining
    project.run("git", "checkout", "--", "params.yaml")
    res = project.dvc("repro")
    assert "train" not in project.ran(res), res.stdout


def test_killed_training_resumes_to_the_same_metrics(tmp_path, archive):
    params = dict(TINY, **{"train.epochs": 6})
    whole = make_project(tmp_path / "whole", archive, params)
    whole.dvc("repro", "train")
    expected = json.loads((whole.path / "reports/train/metrics.json").read_text())

    proj = make_project(tmp_path / "killed", archive, params)
    proj.dvc("repro", "stats")
    p = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=proj.path,
        env=proj.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed = False
    try:
        for line in p.stdout:
            if line.startswith("epoch 2/"):
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert killed, "training finished before it could be interrupted"
    assert list((proj.path / "checkpoints").glob("*/checkpoint.pt"))
    live = json.loads((proj.path / "reports/train/metrics.json").read_text())
    assert live["complete"] is False and live["epoch"] == 2, live  # the killed run's last finished epoch
    res = proj.dvc("repro", "train")
    assert "resuming from the checkpoint of epoch 2" in res.stdout, res.stdout
    assert json.loads((proj.path / "reports/train/metrics.json").read_text()) == expected
    # the history is rebuilt from the checkpoint: every row as the uninterrupted run's, timings aside
    assert untimed_history(proj.path) == untimed_history(whole.path)
    assert len(untimed_history(proj.path)) == 6


def untimed_history(root) -> list[dict]:
    with open(root / "reports/train/history.csv") as f:
        return [
            {k: v for k, v in row.items() if not k.endswith("seconds") and k != "images_per_second"}
            for row in csv.DictReader(f)
        ]


@pytest.mark.slow
def test_groups_list_and_clipping_through_dvc_exp_run(project):
    """The documented -S forms reach training through the real dvc exp run: a whole
    optimizer.groups list in Hydra syntax and train.clip as a mapping."""
    import yaml

    res = project.dvc(
        "exp",
        "run",
        "-S",
        "++optimizer.groups=[{kind: bias, weight_decay: 0}, {prefix: fc3, lr_mult: 10}]",
        "-S",
        "++train.clip={mode: norm, max: 1.0}",
    )
    assert "train" in project.ran(res), res.stdout
    params = yaml.safe_load((project.path / "params.yaml").read_text())
    assert params["optimizer"]["groups"] == [{"kind": "bias", "weight_decay": 0}, {"prefix": "fc3", "lr_mult": 10}]
    with open(project.path / "reports/train/history.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"lr_0", "lr_1", "lr_2", "grad_norm", "grad_norm_max", "clipped"} <= set(rows[0])
    assert all(float(r["grad_norm"]) > 0 and 0 <= float(r["clipped"]) <= 1 for r in rows)
    # fc3's weight is in group 2 at 10x (its bias went to the bias group, the first match)
    assert all(float(r["lr_2"]) == pytest.approx(10 * float(r["lr_0"]), abs=1e-5) for r in rows)  # csv: 6 decimals
