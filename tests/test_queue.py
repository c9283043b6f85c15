"""Experiment sweeps through DVC's queue, through the real CLI, as docs/team.md teaches them.

A grid sweep queued with `-S a=x,y -S b=u,v`, run by two workers (`dvc queue start --jobs 2`,
the lock-race pitfall of DVC issues 8417 and 10673: both experiments must succeed), listed by
`dvc exp show`, compared by `dvc plots diff`, and the best one picked by the block of
docs/team.md, applied and branched. Also the documented one-worker-per-GPU recipe.
"""

import json
import re
import subprocess
import time

import pytest
import yaml

from cifar_factory import make_archive
from dvc_project import ROOT, TINY, Project, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LRS = ("0.01", "0.05")


def sh(proj: Project, command: str, timeout: float = 180) -> str:
    """Run a shell command in the project, its output to a file, not a pipe: the queue workers that
    `dvc queue start` spawns inherit its stdout and stderr, and a captured pipe would stay open
    (and this call blocked) until the last worker exits."""
    log = proj.path.parent / "sh.log"
    with open(log, "w") as out:
        res = subprocess.run(
            ["bash", "-c", command], cwd=proj.path, env=proj.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    text = log.read_text()
    assert res.returncode == 0, f"{command} failed ({res.returncode}):\n{text}"
    return text


def queue_status(proj: Project) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status`."""
    rows = {}
    for line in proj.dvc("queue", "status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in {"Queued", "Running", "Success", "Failed"} and parts[0] != "Task":
            rows[parts[1]] = parts[-1]
    return rows


def wait_for_queue(proj: Project, names, timeout: float) -> dict[str, str]:
    """Poll `dvc queue status` until none of `names` is queued or running (docs/team.md's wait loop)."""
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(proj)
        if all(status.get(n) in {"Success", "Failed"} for n in names):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"queue did not finish in {timeout:.0f} s: {status}")
        time.sleep(3)


def stop_workers(proj: Project, timeout: float = 60) -> None:
    """Stop the queue's workers and wait (bounded) until none is left running."""
    proj.dvc("queue", "stop", check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = proj.dvc("queue", "status", check=False).stdout
        if "Worker status: 0 active, 0 idle" in out:
            return
        time.sleep(2)


def finished_experiments(proj: Project) -> dict[str, dict]:
    """{name: exp show data} of the experiments that ran from the queue."""
    exps = {}
    for base in json.loads(proj.dvc("exp", "show", "--json").stdout):
        for exp in base.get("experiments") or []:
            for rev in exp["revs"]:
                exps[rev["name"]] = {"state": (exp.get("executor") or {}).get("state"), **rev["data"]}
    return exps


def docs_block(marker: str) -> str:
    """The first ```bash block after the line of docs/team.md that contains `marker`."""
    text = (ROOT / "docs/team.md").read_text()
    after = text[text.index(marker) :]
    return re.search(r"```bash\n(.*?)\n *```", after, re.S).group(1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    top = tmp_path_factory.mktemp("queue")
    proj = make_project(top / "proj", make_archive(top / "cifar.tar.gz", per_class=10), TINY)
    proj.dvc("repro")
    proj.commit("baseline")  # queued experiments copy only what git and DVC track

    # the documented 2 x 2 grid queues four experiments, one per combination
    grid = proj.dvc("exp", "run", "--queue", "-S", "optimizer.lr=0.01,0.05", "-S", "optimizer.name=SGD,Adam")
    combos = re.findall(r"\['optimizer\.lr=([^']+)', 'optimizer\.name=([^']+)'\]", grid.stdout)
    assert sorted(combos) == sorted((lr, name) for lr in LRS for name in ("SGD", "Adam")), grid.stdout
    assert len(queue_status(proj)) == 4
    proj.dvc("queue", "remove", "--queued")
    assert queue_status(proj) == {}

    # the sweep this test runs: two experiments, two workers; `evaluate` as the target keeps it
    # short (train and evaluate rerun; visualize keeps the baseline's pictures)
    res = proj.dvc("exp", "run", "--queue", "evaluate", "-S", f"optimizer.lr={','.join(LRS)}", "-n", "lr")
    names = re.findall(r"Queued experiment '([^']+)'", res.stdout)
    assert names == ["lr-1", "lr-2"], res.stdout
    started = time.monotonic()
    assert "Started '2' new experiments task queue workers." in sh(proj, "dvc queue start --jobs 2")
    try:
        status = wait_for_queue(proj, names, timeout=480)
    finally:
        stop_workers(proj)
    print(f"sweep of 2 with --jobs 2: {time.monotonic() - started:.0f} s")
    return proj, names, status


def test_two_workers_run_every_experiment(sweep):
    proj, names, status = sweep
    logs = {n: proj.dvc("queue", "logs", n, check=False).stdout for n in names}
    assert all(status[n] == "Success" for n in names), f"{status}\n" + "\n".join(logs.values())
    for log in logs.values():
        assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log, log
        # the experiment reuses the committed index and stats (only the uncached PNG trees are rebuilt)
        assert "Stage 'stats' didn't change, skipping" in log and "Running stage 'stats'" not in log, log


def test_exp_show_lists_the_sweep(sweep):
    proj, names, _ = sweep
    exps = finished_experiments(proj)
    assert set(names) <= set(exps), sorted(exps)
    lrs = set()
    for name in names:
        data = exps[name]
        assert data["state"] == "success"
        lrs.add(str(data["params"]["params.yaml"]["data"]["optimizer"]["lr"]))
        assert 0 <= data["metrics"]["reports/eval/metrics.json"]["data"]["test"]["acc"] <= 1
    assert lrs == set(LRS)
    table = proj.dvc("exp", "show", "--md", "--sort-by", "reports/eval/metrics.json:test.acc", "--sort-order", "desc")
    assert all(n in table.stdout for n in names), table.stdout


def test_plots_diff_compares_the_sweep(sweep, tmp_path):
    proj, names, _ = sweep
    res = proj.dvc("plots", "diff", *names, "--json")
    plots = json.loads(res.stdout)
    text = json.dumps(plots)
    assert all(n in text for n in names), text[:2000]
    assert "history.csv" in text and "confusion.csv" in text
    diff = json.loads(proj.dvc("metrics", "diff", *names, "--json").stdout)
    assert "reports/train/metrics.json" in diff, diff
    html = proj.dvc("plots", "diff", *names, "-o", str(tmp_path / "sweep_plots"))
    assert (tmp_path / "sweep_plots" / "index.html").is_file(), html.stdout


def test_pick_best_apply_and_branch_as_documented(sweep):
    proj, names, _ = sweep
    exps = finished_experiments(proj)

    def score(name):
        m = exps[name]["metrics"]["reports/eval/metrics.json"]["data"]
        return (m["test"]["acc"], -m["test"]["loss"])

    expected = max(names, key=score)
    res = proj.run("bash", "-euo", "pipefail", "-c", docs_block("pick-best:"))
    assert f"best experiment: {expected}" in res.stdout, res.stdout + res.stderr

    best = exps[expected]
    params = yaml.safe_load((proj.path / "params.yaml").read_text())
    assert params["optimizer"]["lr"] == best["params"]["params.yaml"]["data"]["optimizer"]["lr"]
    lock = yaml.safe_load((proj.path / "dvc.lock").read_text())["stages"]
    models = next(o["md5"] for o in lock["train"]["outs"] if o["path"] == "models")
    assert models == best["outs"]["models"]["hash"]
    assert (
        json.loads((proj.path / "reports/eval/metrics.json").read_text())
        == best["metrics"]["reports/eval/metrics.json"]["data"]
    )
    assert "Data and pipelines are up to date." in proj.dvc("status", "evaluate").stdout
    branch_params = yaml.safe_load(proj.run("git", "show", "sweep-best:params.yaml").stdout)
    assert branch_params["optimizer"]["lr"] == params["optimizer"]["lr"]


def test_one_worker_per_gpu_recipe(tmp_path):
    """docs/team.md: each `CUDA_VISIBLE_DEVICES=i dvc queue start --jobs i+1` adds a worker that sees GPU i."""
    proj = Project(tmp_path / "toy")
    proj.path.mkdir()
    proj.run("git", "init", "-q", "-b", "main")
    proj.dvc("init", "-q")
    (proj.path / "params.yaml").write_text("v: 0\n")
    # each experiment holds its worker until the test releases it, so each worker takes exactly one
    release = tmp_path / "release"
    proj.env["RELEASE"] = str(release)
    (proj.path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "s": {
                        "cmd": 'for i in $(seq 900); do [ -e "$RELEASE" ] && break; sleep 0.2; done; '
                        'echo "$CUDA_VISIBLE_DEVICES" > seen.txt',
                        "params": ["v"],
                        "outs": ["seen.txt"],
                    }
                }
            }
        )
    )
    proj.commit("toy")
    proj.dvc("exp", "run", "--queue", "-S", "v=1,2", "-n", "gpu")
    block = docs_block("one-job-per-GPU:")
    starts = [
        line.split("#")[0].strip()
        for line in block.splitlines()
        if "dvc queue start" in line or "until dvc queue status" in line
    ]
    assert len(starts) == 3, block
    try:
        for cmd in starts:
            sh(proj, cmd)
        deadline = time.monotonic() + 180
        while list(queue_status(proj).values()).count("Running") < 2:
            assert time.monotonic() < deadline, queue_status(proj)
            time.sleep(1)
        release.touch()
        status = wait_for_queue(proj, ["gpu-1", "gpu-2"], timeout=120)
    finally:
        release.touch()
        stop_workers(proj)
    assert set(status.values()) == {"Success"}, status
    seen = set()
    for data in finished_experiments(proj).values():
        md5 = data["outs"]["seen.txt"]["hash"]
        seen.add((proj.path / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text().strip())
    assert seen == {"0", "1"}, seen
