"""cifarlab lr-find: the LR range test on a tiny data tree, through the real CLI."""

import json
import os

import pytest

from cifarlab.cli import main
from cifarlab.errors import ParamsError
from cifarlab.lr_find import Sweep, check_range, suggest

# `tree`: conftest.py's tiny data tree
pytestmark = pytest.mark.usefixtures("one_thread")


def test_suggestion_is_a_tenth_of_the_lr_at_the_lowest_smoothed_loss():
    lrs = [10 ** (-5 + i * 0.25) for i in range(25)]
    smoothed = [2.3 - 0.1 * i if i <= 16 else 0.7 + 0.5 * (i - 16) for i in range(25)]
    result = suggest(Sweep(lrs, smoothed, smoothed))
    assert result["lr_at_min_loss"] == lrs[16]
    assert result["suggested_lr"] == pytest.approx(lrs[16] / 10, rel=1e-2)
    assert result["lr_at_steepest_descent"] <= result["lr_at_min_loss"]


@pytest.mark.parametrize("start, end, steps", [(0, 1, 100), (1.0, 0.1, 100), (1e-6, float("inf"), 100), (1e-6, 1, 3)])
def test_bad_range_is_one_clear_error(start, end, steps):
    with pytest.raises(ParamsError):
        check_range(start, end, steps)


def test_lr_find_writes_its_own_folder_and_prints_the_command(tree, tmp_path, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"model": {"name": "tutorial.net"}, "train": {"batch_size": 8}, "runtime": {"threads": 1}})
    )
    before = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        rc = main(
            [
                "lr-find",
                "--params",
                str(params),
                "--out",
                str(tmp_path / "lrf"),
                "--steps",
                "40",
                "--start",
                "1e-4",
                "--end",
                "10",
            ]
        )
    finally:
        os.chdir(cwd)
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "lrf/lr_find.json").read_text())
    assert f"dvc exp run -S optimizer.lr={result['suggested_lr']:g}" in out.splitlines()
    assert result["suggested_lr"] == pytest.approx(result["lr_at_min_loss"] / 10, rel=1e-2)
    curve = result["curve"]
    assert 10 < len(curve["lr"]) <= 40 and curve["lr"] == sorted(curve["lr"]) and curve["lr"][0] == 1e-4
    assert (tmp_path / "lrf/lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")) == before  # nothing else written


def test_lr_find_names_a_missing_data_folder(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("{}\n")
    rc = main(["lr-find", "--data", str(tmp_path / "nope"), "--params", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error:") and "nope" in err and len(err.strip().splitlines()) == 1


def test_lr_find_sweeps_the_whitened_net_the_train_stage_trains(tree):
    """With model.whiten the sweep probes the net as the stage builds it: the first conv set
    from the training images and frozen (a different loss curve from the same seed without)."""
    from cifarlab.lr_find import sweep
    from cifarlab.params import parse_params

    paths = {
        "index": tree / "data/index/train.txt",
        "stats": tree / "data/stats/normalize.json",
        "meta": tree / "data/meta.json",
        "root": tree,
        "start": 1e-3,
        "end": 1.0,
        "steps": 12,
    }
    base = {"model": {"name": "cifarlab.airbench", "cifarlab": {"airbench": {"widths": [8, 16, 16]}}}}
    base["train"] = {"batch_size": 8, "device": "cpu", "amp": False}
    plain = sweep(parse_params(base), log=lambda *_: None, **paths)
    logs: list[str] = []
    whitened = sweep(
        parse_params({**base, "model": {**base["model"], "whiten": {"enabled": True}}}), log=logs.append, **paths
    )
    assert any(line.startswith("model.whiten: first conv 'whiten' (24 filters, 2x2)") for line in logs), logs
    assert len(whitened.losses) == len(plain.losses) == 12
    assert whitened.losses[0] != plain.losses[0]
