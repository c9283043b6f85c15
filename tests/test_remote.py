"""Sharing through the default DVC remote, through the real CLI: push, fresh clone, pull, repro.

The project's committed .dvc/config names a local directory remote, `local`, at
`../../cifarlab-dvc-remote` relative to .dvc/, i.e. a `cifarlab-dvc-remote` folder beside the
clone. Here every temp project lives in its own temp folder, so the default remote lands
there too. Also the bad inputs of docs/team.md: an unwritable remote, a missing one, and a
pull of outputs a teammate committed but never pushed.
"""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from cifar_factory import make_archive
from dvc_project import TINY, Project, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REMOTE_DIR = "cifarlab-dvc-remote"


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every workspace file (git and DVC internals excluded)."""
    skip = (".git/", ".dvc/cache/", ".dvc/tmp/")
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cached_outputs(root: Path) -> dict[str, str]:
    """{path: md5} of every output DVC caches (and so pushes): stage outs with cache on, .dvc files."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    result = {}
    for name, stage in stages.items():
        cached = set()
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                if opts.get("cache", True):
                    cached.add(path)
        for out in lock[name].get("outs", []):
            if out["path"] in cached:
                result[out["path"]] = out["md5"]
    for dvcfile in root.rglob("*.dvc"):
        if not dvcfile.is_file() or any(part.startswith(".") for part in dvcfile.relative_to(root).parts):
            continue
        for out in yaml.safe_load(dvcfile.read_text())["outs"]:
            result[(dvcfile.parent / out["path"]).relative_to(root).as_posix()] = out["md5"]
    return result


def in_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def failed_targets(stderr: str) -> list[str]:
    """The paths DVC lists after 'Checkout failed for following targets:'."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "Checkout failed for following targets:" in line)
    targets = []
    for line in lines[start + 1 :]:
        if line.startswith("Is your cache up to date?"):
            break
        targets.append(line.strip())
    return targets


def default_remote(proj: Project) -> tuple[str, str]:
    """(name, resolved url) of the default remote, as DVC resolves it in this checkout."""
    name = proj.dvc("config", "core.remote").stdout.strip()
    return name, proj.dvc("config", f"remote.{name}.url").stdout.strip()


def clone(origin: Project, dest: Path) -> Project:
    dest.parent.mkdir(parents=True, exist_ok=True)
    origin.run("git", "clone", "-q", str(origin.path), str(dest))
    return Project(dest)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """Alice's trained project in <tmp>/team/proj, pushed to the default remote <tmp>/team/cifarlab-dvc-remote."""
    top = tmp_path_factory.mktemp("team")
    archive = make_archive(top / "cifar.tar.gz", per_class=10)
    alice = make_project(top / "proj", archive, TINY)
    assert default_remote(alice) == ("local", str(top / REMOTE_DIR))
    alice.dvc("repro")
    alice.commit("trained")
    push = alice.dvc("push")
    assert "pushed" in push.stdout, push.stdout
    return alice, top / REMOTE_DIR


def test_push_sends_every_cached_output(team):
    alice, remote = team
    outs = cached_outputs(alice.path)
    expected = {
        "data/cifar-10-python.tar.gz",
        "data/meta.json",
        "data/index",
        "data/stats/normalize.json",
        "models",
        "reports/train/summary.txt",
        "reports/train/timing.json",
        "reports/tensorboard/train",
        "reports/eval/report.json",
        "reports/figures",
        "reports/tensorboard/visualize",
        "export/model.onnx",
        "export/MODEL_CARD.md",
    }
    assert expected <= set(outs), sorted(outs)
    for path, md5 in outs.items():
        assert in_remote(remote, md5), f"{path} ({md5}) is not in the remote"
        if md5.endswith(".dir"):
            manifest = json.loads((remote / "files/md5" / md5[:2] / md5[2:]).read_text())
            missing = [f["relpath"] for f in manifest if not in_remote(remote, f["md5"])]
            assert not missing, f"{path}: files not pushed: {missing}"
    lock = yaml.safe_load((alice.path / "dvc.lock").read_text())["stages"]
    for stage, path in (("unpack", "data/png"), ("split", "data/split")):
        md5 = next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)
        assert not in_remote(remote, md5), f"{path} is cache: false and must not be pushed"
    status = alice.dvc("status", "--cloud")
    assert "Cache and remote 'local' are in sync" in status.stdout, status.stdout


def test_fresh_clone_pulls_and_reproduces_without_training(team):
    alice, remote = team
    bob = clone(alice, alice.path.parent / "bob")
    # the clone resolves the same relative URL to the same folder: it sits beside alice's
    assert default_remote(bob) == ("local", str(remote))
    bob.dvc("pull")
    expected = snapshot(alice.path)
    got = snapshot(bob.path)
    for path in cached_outputs(alice.path):
        files = [k for k in expected if k == path or k.startswith(path + "/")]
        assert files, path
        for f in files:
            assert got.get(f) == expected[f], f"{f} differs after pull"

    res = bob.dvc("repro")
    ran = bob.ran(res)
    assert "train" not in ran and set(ran) <= {"unpack", "split"}, res.stdout
    # the rebuilt PNG trees hash exactly as alice's: dvc.lock (data/png, data/split md5) is unchanged
    bob.run("git", "diff", "--exit-code", "dvc.lock")
    for rel in ("data/png", "data/split"):
        assert sorted(p.relative_to(bob.path / rel).as_posix() for p in (bob.path / rel).rglob("*.png")) == sorted(
            p.relative_to(alice.path / rel).as_posix() for p in (alice.path / rel).rglob("*.png")
        )
    assert "Data and pipelines are up to date." in bob.dvc("status").stdout
    metrics = [json.loads(p.dvc("metrics", "show", "--json").stdout) for p in (alice, bob)]
    assert metrics[0] == metrics[1]
    assert '"acc"' in json.dumps(metrics[1]) and "test" in json.dumps(metrics[1])


def test_push_to_unwritable_remote_fails_and_changes_nothing(team, tmp_path):
    alice, _remote = team
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"a regular file: nothing can be created below it, not even by root\n")
    alice.dvc("remote", "add", "--local", "-f", "broken", str(blocker / "remote"))
    try:
        before = snapshot(alice.path)
        res = alice.dvc("push", "-r", "broken", check=False)
        assert res.returncode != 0
        assert "ERROR: unexpected error - [Errno 20] Not a directory" in res.stderr, res.stderr
        assert snapshot(alice.path) == before
        assert blocker.read_bytes().startswith(b"a regular file")
        assert "in sync" in alice.dvc("status", "--cloud").stdout  # the default remote is untouched
    finally:
        alice.dvc("remote", "remove", "--local", "broken")


def test_pull_from_missing_remote_fails_cleanly_then_local_url_fixes_it(team, tmp_path):
    alice, remote = team
    # a clone in another parent folder: its default remote, ../cifarlab-dvc-remote, does not exist
    carol = clone(alice, tmp_path / "elsewhere" / "carol")
    assert default_remote(carol) == ("local", str(tmp_path / "elsewhere" / REMOTE_DIR))
    before = snapshot(carol.path)
    res = carol.dvc("pull", check=False)
    assert res.returncode != 0
    assert "ERROR: failed to pull data from the cloud - Checkout failed for following targets:" in res.stderr
    assert "models" in failed_targets(res.stderr)
    assert snapshot(carol.path) == before, "a failed pull changed or half-wrote the workspace"
    assert not (tmp_path / "elsewhere" / REMOTE_DIR).exists()

    # the fix docs/team.md gives: point this clone (only) at the shared folder
    carol.dvc("remote", "modify", "--local", "local", "url", str(remote))
    carol.dvc("pull")
    assert (carol.path / "models/model.pt").read_bytes() == (alice.path / "models/model.pt").read_bytes()
    assert str(remote) in (carol.path / ".dvc/config.local").read_text()
    carol.run("git", "diff", "--exit-code")  # the committed .dvc/config is untouched


def test_pull_of_outputs_never_pushed(team):
    alice, _remote = team
    # bob is up to date with alice; dave trains a new model, commits, forgets `dvc push`
    bob = clone(alice, alice.path.parent / "bob-np")
    bob.dvc("pull")
    dave = clone(alice, alice.path.parent / "dave")
    dave.dvc("pull")
    (dave.path / "params.yaml").write_text(
        (dave.path / "params.yaml").read_text().replace(f"lr: {TINY['optimizer.lr']}", "lr: 0.03")
    )
    assert "train" in dave.ran(dave.dvc("repro", "train"))
    dave.commit("lr 0.03, not pushed")
    bob.run("git", "pull", "-q", str(dave.path), "main")
    old_model = (bob.path / "models/model.pt").read_bytes()

    # 1. a local edit of an output that is not saved anywhere: DVC refuses to touch anything
    last = bob.path / "models/last.pt"
    original_last = last.read_bytes()
    last.write_bytes(original_last + b"local tweak")
    before = snapshot(bob.path)
    res = bob.dvc("pull", check=False)
    assert res.returncode != 0
    assert "Some of the cache files do not exist neither locally nor on remote" in res.stderr, res.stderr
    assert "Can't remove the following unsaved files without confirmation. Use `--force` to force." in res.stderr
    assert snapshot(bob.path) == before
    last.write_bytes(original_last)

    # 2. outputs saved in the cache: the pull fails, stale outputs it cannot replace are removed
    #    (never half-written), everything else is byte-identical, and the old ones come back
    #    from the local cache with a checkout of the previous dvc.lock
    before = snapshot(bob.path)
    res = bob.dvc("pull", check=False)
    assert res.returncode != 0
    assert "ERROR: failed to pull data from the cloud - Checkout failed for following targets:" in res.stderr
    targets = failed_targets(res.stderr)
    assert "models" in targets, targets
    assert "data/index" not in targets and "data/cifar-10-python.tar.gz" not in targets
    after = snapshot(bob.path)

    def under_target(f):
        return any(f == t or f.startswith(t + "/") for t in targets)

    for f, digest in before.items():
        if under_target(f):
            assert after.get(f) in (None, digest), f"{f} was half-written"
        else:
            assert after.get(f) == digest, f"{f} changed"
    assert set(after) <= set(before), sorted(set(after) - set(before))
    bob.run("git", "checkout", "ORIG_HEAD", "--", "dvc.lock")  # the dvc.lock from before `git pull`
    bob.dvc("checkout")
    assert (bob.path / "models/model.pt").read_bytes() == old_model
    bob.run("git", "checkout", "HEAD", "--", "dvc.lock")

    # 3. the fix: the teammate pushes, the pull succeeds
    dave.dvc("push")
    bob.dvc("pull")
    assert (bob.path / "models/model.pt").read_bytes() == (dave.path / "models/model.pt").read_bytes()
    assert "in sync" in bob.dvc("status", "--cloud").stdout
