"""The DVC user's daily loop through the real `dvc`: a readable `dvc exp show`, each plot once,
a baseline from the README's own flow, every params key rerunning exactly its readers, and
training that is visible while it runs (`dvc exp show --json` polled during `dvc exp run`)."""

from __future__ import annotations

import copy
import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cifar_factory import make_archive
from cifarlab.params import Params
from dvc_project import TINY, make_project, set_dotted
from test_docs_commands import bash_blocks, code_parts, commands

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

#: which stages read each params section: dvc.yaml declares exactly these, and a change of any
#: key in a section must rerun exactly these stages (runtime and fetch: none, by design)
READERS = {
    "seed": {"train", "evaluate", "visualize", "export"},
    "data": {"unpack", "export"},
    "fetch": set(),
    "split": {"split", "export"},
    "model": {"train", "export"},
    "augment": {"train", "visualize", "export"},
    "loss": {"train", "export"},
    "optimizer": {"train", "export"},
    "scheduler": {"train", "export"},
    "train": {"train", "evaluate", "export"},
    "runtime": set(),
    "evaluate": {"evaluate"},
    "visualize": {"visualize"},
}
#: single keys a stage declares without their section: visualize predicts as evaluate does
KEY_READERS = {"evaluate.tta": {"evaluate", "visualize"}}
REQUIRED_METRICS = {"test.acc", "test.loss", "test.macro_f1", "valid.best_acc", "valid.best_epoch", "train.loss"}


def leaves(node, prefix=""):
    """Dotted keys of every leaf (a list counts as one value, as params.yaml writes it)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


def other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value + value[:1] if value else ["x"]
    if isinstance(value, dict):
        return {"x": 1}
    return f"{value}x"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The README's flow up to its baseline: `dvc repro`, then commit everything."""
    tmp = tmp_path_factory.mktemp("table")
    proj = make_project(tmp / "proj", make_archive(tmp / "a.tar.gz", per_class=10), TINY)
    proj.dvc("repro")
    proj.run("bash", "-c", readme_command("git add -A && git commit"))
    return proj


def readme_command(start: str) -> str:
    """The README's own command that starts with `start` (so this test follows the docs as typed)."""
    found = [c for b in bash_blocks(ROOT / "README.md") for c in commands(b.text) if c.startswith(start)]
    assert found, f"the README no longer has a command starting {start!r}"
    return code_parts(found[0])[0].strip()  # without its comment


def test_every_params_key_reruns_exactly_the_stages_that_read_it(baseline):
    """Each key of the schema (params.yaml's and the defaults it leaves out), changed alone:
    `dvc status` must name exactly its section's readers. Stages declare whole sections, so a
    key params.yaml does not write (added with -S ++) counts too."""
    declared = {
        name: set(stage.get("params", []))
        for name, stage in yaml.safe_load((baseline.path / "dvc.yaml").read_text())["stages"].items()
    }
    assert {s for stages in READERS.values() for s in stages} <= set(declared)
    for section, stages in READERS.items():
        assert {n for n, secs in declared.items() if section in secs} == stages, section
    for key, stages in KEY_READERS.items():
        assert {n for n, secs in declared.items() if secs & {key, key.split(".")[0]}} == stages, key
    original = (baseline.path / "params.yaml").read_text()
    raw, defaults = yaml.safe_load(original), Params().model_dump(mode="json")
    wrong = []
    try:
        for key in leaves(defaults):
            changed = copy.deepcopy(raw)
            set_dotted(changed, key, other_value(_get(raw, key, _get(defaults, key))))
            (baseline.path / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
            status = json.loads(baseline.dvc("status", "--json").stdout or "{}")
            rerun = {
                name
                for name, why in status.items()
                if any(isinstance(w, dict) and "params.yaml" in (w.get("changed deps") or {}) for w in why)
            }
            expected = KEY_READERS.get(key, READERS[key.split(".")[0]])
            if rerun != expected:
                wrong.append(f"{key}: reruns {sorted(rerun)}, expected {sorted(expected)}")
    finally:
        (baseline.path / "params.yaml").write_text(original)
    assert not wrong, "\n".join(wrong)


def _get(node, key: str, default=None):
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def test_exp_show_is_a_table_a_person_reads(baseline):
    baseline.dvc("exp", "run", "-S", "optimizer.lr=0.05")
    rows = json.loads(baseline.dvc("exp", "show", "--json").stdout)
    data = rows[0]["data"]
    params = list(leaves(data["params"]["params.yaml"]["data"]))
    metrics = [m for path in data["metrics"].values() for m in leaves(path["data"])]
    assert len(params) <= 30, params
    assert len(metrics) <= 10, metrics
    assert set(metrics) >= REQUIRED_METRICS, metrics
    assert not any("per_class" in m or "seconds" in m for m in metrics), metrics
    # a baseline row (the committed run) beside the experiment
    assert len(rows) >= 2 and rows[1]["data"]["metrics"], "no baseline row"
    table = baseline.dvc("exp", "show", "--only-changed").stdout
    width = max(len(line) for line in table.splitlines())  # characters, not bytes: the rules are multi-byte
    acc = [
        _get(r["data"]["metrics"].get("reports/eval/metrics.json", {}).get("data", {}), "test.acc") for r in rows[:2]
    ]
    assert None not in acc, acc
    # --only-changed: the changed param, and test.acc exactly when it changed
    assert "optimizer.lr" in table and ("test.acc" in table) == (acc[0] != acc[1]), (acc, table)
    assert width <= 250, f"{width} characters wide:\n{table}"
    diff = json.loads(baseline.run("bash", "-c", readme_command("dvc metrics diff") + " --json").stdout)
    # test.loss: it changes with the lr even where the tiny net's accuracy does not (the diff
    # lists changed metrics only)
    loss = diff["reports/eval/metrics.json"]["test.loss"]
    assert loss["old"] is not None and loss["new"] is not None, diff  # numbers on both sides


def test_each_plot_is_drawn_once_with_a_title(baseline):
    shown = json.loads(baseline.dvc("plots", "show", "--json").stdout)["data"]
    vega = {pid: p[0]["content"] for pid, p in shown.items() if p and p[0].get("type") == "vega"}
    titles = [
        c.get("title", {}).get("text") if isinstance(c.get("title"), dict) else c.get("title") for c in vega.values()
    ]
    assert sorted(t for t in titles if t) == sorted(
        [
            "Loss",
            "Accuracy",
            "Learning rate",
            "Confusion matrix (test split)",
            "Per-class F1 (test split)",
            "Activation std per layer (each epoch)",
            "Gradient norm per layer",
        ]
    ), titles
    assert not any(pid.startswith("dvc.yaml::") for pid in vega), list(vega)  # no stage plot drawn twice
    assert all(t for t in titles), list(vega)


def live_readings(rows) -> list[tuple[int, bool]]:
    """(epoch, complete) of every train metrics.json `dvc exp show --json` reports, at any depth."""
    found = []
    if isinstance(rows, dict):
        metrics = (rows.get("metrics") or {}).get("reports/train/metrics.json") or {}
        if isinstance(metrics.get("data"), dict) and "epoch" in metrics["data"]:
            found.append((metrics["data"]["epoch"], metrics["data"]["complete"]))
        for value in rows.values():
            found += live_readings(value)
    elif isinstance(rows, list):
        for value in rows:
            found += live_readings(value)
    return found


@pytest.mark.parametrize("how", [["exp", "run"], ["exp", "run", "--temp"]], ids=["workspace", "temp"])
def test_training_is_visible_while_it_runs(tmp_path, how):
    """`dvc exp show --json`, polled at most every 0.5 s as DVC's VS Code extension does, shows
    the running experiment's metrics epoch by epoch, marked complete only at the end: in the
    workspace, and in a --temp run's copy (which DVC reads while it runs)."""
    params = dict(
        TINY,
        **{
            "model.name": "cifarlab.resnet8",
            "model.cifarlab.resnet8.width": 48,
            "train.epochs": 4,
            "train.batch_size": 32,
            "train.amp": False,
        },
    )
    proj = make_project(tmp_path / "proj", make_archive(tmp_path / "a.tar.gz", per_class=200), params)
    proj.dvc("repro", "stats")
    proj.commit("data stages")
    run = subprocess.Popen(
        ["dvc", *how], cwd=proj.path, env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[tuple[int, bool]] = []
    try:
        while run.poll() is None:
            started = time.monotonic()
            out = proj.dvc("exp", "show", "--json", check=False)
            if out.returncode == 0 and out.stdout.strip():
                seen += [r for r in live_readings(json.loads(out.stdout)) if not r[1]]
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    finally:
        output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert len({epoch for epoch, _ in seen}) >= 2, f"saw {seen} while training; output:\n{output}"
    seconds = [
        float(line.split(" s, ")[0].rsplit(" ", 1)[1])
        for line in output.splitlines()
        if line.startswith("epoch ") and " s, " in line
    ]
    assert seconds and min(seconds) >= 3.0, f"epochs too short to test live polling: {seconds}"


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere(tmp_path):
    proj = make_project(
        tmp_path / "proj", make_archive(tmp_path / "a.tar.gz", per_class=10), dict(TINY, **{"train.epochs": 2})
    )
    proj.dvc("repro", "stats")
    cmd = yaml.safe_load((proj.path / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    # on a pseudo-terminal: tqdm's bar (carriage returns, steps, images/s and the running loss)
    out, rc = run_on_a_terminal(["bash", "-c", cmd], cwd=proj.path, env=proj.env)
    assert rc == 0, out[-3000:]
    assert "\r" in out and "img/s, loss" in out and "epoch 1/2" in out, out[-2000:]
    # without one (CI, dvc queue logs, a file): plain per-epoch lines, no bar at all
    plain = proj.run("bash", "-c", cmd)
    assert "\r" not in plain.stdout + plain.stderr and "img/s, loss" not in plain.stdout + plain.stderr
    assert sum(line.startswith("epoch ") for line in plain.stdout.splitlines()) == 2, plain.stdout


def run_on_a_terminal(cmd: list[str], *, cwd: Path, env: dict) -> tuple[str, int]:
    """Run `cmd` with a pseudo-terminal as its stdin, stdout and stderr; (what it wrote, exit status)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), proc.wait(timeout=300)
