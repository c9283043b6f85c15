"""dvc.yaml must declare exactly the code each stage runs, or DVC reruns too much or too little."""

import subprocess
import sys

import pytest
import yaml

from code_deps import PACKAGE, ROOT, USER, check_declared, declaration

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
DATA_STAGES = ["unpack", "split", "index", "stats"]
#: The stages that resolve model, transform or loss names, and so run the user package.
NAME_STAGES = ["train", "evaluate", "export", "visualize"]
USER_FOLDER = USER.relative_to(ROOT).as_posix()


def _script(name: str) -> str:
    return DVC[name]["cmd"].split()[1]


@pytest.mark.parametrize("name", list(DVC))
def test_declared_code_covers_the_imports_and_nothing_else(name):
    problems = check_declared(_script(name), DVC[name]["deps"])
    assert not problems, f"stage {name}: " + "; ".join(problems) + " (fix: python tests/code_deps.py)"


@pytest.mark.parametrize("name", list(DVC))
def test_each_stage_has_its_script_and_its_pipeline_module(name):
    deps = DVC[name]["deps"]
    assert f"stages/{name}.py" in deps and f"src/cifarlab/pipeline/{name}.py" in deps


def test_torch_stages_declare_whole_folders():
    """The point of the layout: the pipeline's shape reads at a glance, a handful of code lines a stage."""
    for name in ("train", "evaluate", "visualize"):
        code = [d for d in DVC[name]["deps"] if d.startswith(("src/", "stages/")) and d != USER_FOLDER]
        assert sum((ROOT / d).is_dir() for d in code) >= 2, (name, code)
        assert len(code) <= 18, (name, code)  # evaluate: 18 since engine/tta.py (shared with visualize)


@pytest.mark.parametrize("name", list(DVC))
def test_the_stages_that_resolve_names_declare_the_user_package(name):
    """Editing src/cifarlab_user/ reruns exactly the stages that can run it (derived, not hand-written)."""
    assert (USER_FOLDER in DVC[name]["deps"]) == (name in NAME_STAGES), (name, DVC[name]["deps"])
    assert (USER_FOLDER in declaration(_script(name))) == (name in NAME_STAGES)


def test_a_new_user_module_counts_for_every_stage_that_runs_the_package():
    """Guard the guard: a module dropped into the user package is covered by the folder, imported or not."""
    extra = USER / "_probe_new.py"
    extra.write_text("X = 1\n")
    try:
        for name in NAME_STAGES:
            assert not check_declared(_script(name), DVC[name]["deps"]), name
            deps = [d for d in DVC[name]["deps"] if d != USER_FOLDER]
            assert any("_probe_new.py" in p for p in check_declared(_script(name), deps)), name
    finally:
        extra.unlink()


def test_the_check_catches_a_folder_holding_an_unused_module(tmp_path, monkeypatch):
    """Guard the guard: a module dropped into a folder only train declares makes the check fail."""
    extra = PACKAGE / "optim" / "_probe_unused.py"
    extra.write_text("X = 1\n")
    try:
        problems = check_declared(_script("train"), DVC["train"]["deps"])
    finally:
        extra.unlink()
    assert any("_probe_unused.py" in p for p in problems)
    # and an import the declaration misses
    deps = [d for d in DVC["evaluate"]["deps"] if d != "src/cifarlab/engine/loop.py"]
    assert any("engine/loop.py" in p for p in check_declared(_script("evaluate"), deps))


def test_declaration_is_what_code_deps_writes():
    for name in DVC:
        code = [d for d in DVC[name]["deps"] if d.startswith(("src/", "stages/"))]
        assert code == declaration(_script(name)), f"stage {name}: run `python tests/code_deps.py`"


def test_bytecode_is_ignored_by_dvc():
    """Folder deps would change with every __pycache__ Python writes, unless DVC ignores it."""
    ignore = (ROOT / ".dvcignore").read_text().splitlines()
    assert "__pycache__/" in ignore and "*.pyc" in ignore


@pytest.mark.parametrize("name", DATA_STAGES)
def test_data_stages_do_not_import_torch(name):
    script = ROOT / _script(name)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'stages')!r}); import runpy; "
        f"runpy.run_path({str(script)!r}, run_name='probe'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{name} imports torch (1-4 s of start-up for nothing)"
