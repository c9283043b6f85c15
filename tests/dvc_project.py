"""A throwaway copy of this project in a temp git repo, driven through the real dvc CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY = [
    "dvc.yaml",
    "params.yaml",
    "stages",
    "src",
    ".dvc/config",
    ".dvc/.gitignore",
    ".gitignore",
    "data/.gitignore",
    "data/cifar-10-python.tar.gz.dvc",
    "reports",
    "presets",
]


class Project:
    def __init__(self, path: Path):
        self.path = path
        self.env = dict(
            os.environ,
            PYTHONPATH=str(path / "src"),
            DVC_NO_ANALYTICS="1",
            GIT_AUTHOR_NAME="t",
            GIT_AUTHOR_EMAIL="t@t",
            GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@t",
            PYTHONUNBUFFERED="1",
        )
        # stages call `python`: make it this interpreter, whatever PATH says
        bindir = Path(sys.executable).parent
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(list(cmd), cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check)

    def cifarlab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "cifarlab.cli", *args, check=check)

    def commit(self, message: str = "change") -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)

    def ran(self, result: subprocess.CompletedProcess) -> list[str]:
        """Names of the stages a dvc repro/exp run executed (not skipped or restored)."""
        return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")]


def make_project(dest: Path, archive: Path, params: dict | None = None, source: Path = ROOT) -> Project:
    """A temp git repo holding `source`'s pipeline (this checkout, or another revision's tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in COPY:
        src = source / rel
        if not src.exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, target)
    proj = Project(dest)
    if params:
        set_params(proj, params)
    proj.run("git", "init", "-q", "-b", "main")
    proj.cifarlab("get-archive", "--from", str(archive), "--set-md5")
    proj.commit("project")
    return proj


def set_dotted(raw, dotted: str, value, create: bool = True) -> None:
    """Set `a.b.0.c` in nested dicts and lists (as `dvc exp run -S` addresses params);
    create=False: every parent must already exist (KeyError otherwise)."""
    node = raw
    *parents, last = dotted.split(".")
    for p in parents:
        if isinstance(node, list):
            node = node[int(p)]
        elif create:
            node = node.setdefault(p, {})
        else:
            node = node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def set_params(proj: Project, values: dict, out: Path | None = None) -> None:
    """Set dotted keys in the project's params.yaml (a YAML round trip: comments are dropped);
    with `out`, write the result there and leave params.yaml as it is."""
    import yaml

    path = proj.path / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        set_dotted(raw, dotted, value)
    (out or path).write_text(yaml.safe_dump(raw, sort_keys=False))


# A configuration that trains in seconds on a tiny archive, for end-to-end tests.
TINY = {
    "model.name": "tutorial.net",
    "train.epochs": 3,
    "train.batch_size": 16,
    "runtime.threads": 1,
    "optimizer.lr": 0.02,
    "evaluate.batch_size": 64,
}


def dvc_stages() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_cmd(stage: str) -> list[str]:
    """The stage's command as dvc.yaml writes it, with this interpreter for `python`."""
    import shlex

    cmd = shlex.split(dvc_stages()[stage]["cmd"])
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


def stage_outs(stage: str) -> list[str]:
    """Every path a stage declares it writes: outs, metrics and plots."""
    outs = []
    for kind in ("outs", "metrics", "plots"):
        for entry in dvc_stages()[stage].get(kind, []):
            outs.append(entry if isinstance(entry, str) else next(iter(entry)))
    return outs


def preset(name: str) -> dict:
    """presets/<name>.args as a dict of dotted keys (the values `dvc exp run -S` would set)."""
    import yaml

    out = {}
    for tok in (ROOT / "presets" / f"{name}.args").read_text().split():
        if tok == "-S":
            continue
        key, value = tok.split("=", 1)
        key = key.lstrip("+")  # `++key` (add or override) and `+key` (add): Hydra's prefixes
        # Hydra's override syntax for a list of one-key dicts, read as YAML flow style
        out[key] = (
            yaml.safe_load(value.replace(":", ": ").replace(",", ", "))
            if value.startswith("[")
            else yaml.safe_load(value)
        )
    return out


# --- comparing workspaces (the reliability tests) -------------------------------------------


def files_of(root: Path, rel: str) -> dict[str, str] | None:
    """{path: md5} of the file or every file under the folder `rel`; None if it is absent."""
    p = root / rel
    if not p.exists():
        return None
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def snapshot(root: Path, paths: list[str]) -> dict[str, str]:
    """md5 of every file under `paths`; an absent path is recorded as "absent"."""
    out = {}
    for rel in paths:
        out.update(files_of(root, rel) or {rel: "absent"})
    return out


def temp_leftovers(root: Path, skip: tuple[str, ...] = (".git", ".dvc")) -> list[str]:
    """Temporary siblings (cifarlab.atomic's `.<name>.*.tmp` / `.old`) anywhere outside `skip`."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if not (set(p.relative_to(root).parts) & set(skip)) and (p.name.endswith(".tmp") or p.name.endswith(".old"))
    )


def run_stage(proj: Project, stage: str, params: dict | None = None) -> subprocess.CompletedProcess:
    """The stage's command from dvc.yaml, run directly; `params` (dotted keys) go in a params file
    beside the project, so params.yaml itself stays as it is."""
    cmd = stage_cmd(stage)
    if params:
        alt = proj.path.parent / f"params-{abs(hash(str(sorted(params.items(), key=str))))}.yaml"
        set_params(proj, params, out=alt)
        cmd += ["--params", str(alt)]
    return subprocess.run(cmd, cwd=proj.path, env=proj.env, capture_output=True, text=True, timeout=300)


def assert_fails_cleanly(
    proj: Project, stage: str, *words: str, params: dict | None = None, outs: list[str] | None = None
) -> str:
    """Run the stage, expect one `error:` line with `words`, the outputs (default: all the stage
    declares) unchanged and no temporary files left; return the line."""
    outs = stage_outs(stage) if outs is None else outs
    before = snapshot(proj.path, outs)
    res = run_stage(proj, stage, params)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 1, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert snapshot(proj.path, outs) == before, "the previous outputs changed"
    assert temp_leftovers(proj.path) == []
    print(f"{stage}: {lines[0]}")  # the message users see (pytest -s shows them all)
    return lines[0]


#: Outputs that hold clock times by design: present, but not byte-comparable between runs.
TIMED = (
    "reports/tensorboard/",
    "reports/train/timing.json",
    "reports/train/history.csv",
    "export/MODEL_CARD.md",
)  # the card quotes the training time


def lock_outs(root: Path, comparable_only: bool = False) -> dict[str, str]:
    """{output path: md5} from dvc.lock; `comparable_only` leaves out the TIMED ones."""
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {
        o["path"]: o["md5"]
        for stage in lock["stages"].values()
        for o in stage.get("outs", [])
        if not (comparable_only and o["path"].startswith(TIMED))
    }
