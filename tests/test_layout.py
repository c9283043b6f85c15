"""The import rule of docs/architecture.md, enforced: imports only go down the layers.

Each top-level part of src/cifarlab (a folder or a module) may import the parts listed for
it, and anything inside itself. A new part must be added here, which is the moment to decide
where it sits.
"""
from pathlib import Path

import pytest

from code_deps import PACKAGE, ROOT, imports

BASE = {"errors", "atomic", "params"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": set(),
    "params": {"errors"},
    "data": BASE,
    "archive": BASE | {"data"},
    "optim": BASE | {"data"},
    "augment": BASE | {"data"},
    "models": BASE | {"data"},
    "artifact": BASE | {"models", "augment", "data"},
    "engine": BASE | {"optim", "augment", "models", "data", "artifact"},
    "viz": BASE | {"engine", "models", "augment", "data", "artifact"},
    "stage": BASE,
    "gather": BASE,
    "predict": BASE | {"artifact", "engine", "augment", "models", "data"},
    "lr_find": BASE | {"engine", "optim", "augment", "models", "data"},
    "pipeline": BASE | {"stage", "artifact", "engine", "optim", "augment", "models", "viz", "data", "archive"},
    "cli": BASE | {"archive", "gather", "predict", "lr_find", "pipeline", "artifact", "engine", "models", "augment", "data"},
    "__main__": {"cli"},
}
STAGE_SCRIPTS_MAY_IMPORT = {"pipeline", "params", "stage"}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _parts_of_package() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_place_in_the_rule():
    assert _parts_of_package() == set(ALLOWED), "add the new part to ALLOWED (and docs/architecture.md)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_go_down(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__init__.py":
        return
    bad = sorted(m for m in imports(path) if _part(m) and _part(m) != own and _part(m) not in ALLOWED[own])
    assert not bad, f"{path.relative_to(ROOT)} ({own}) may not import {bad}; allowed: {sorted(ALLOWED[own])}"


def test_only_stages_and_cli_import_pipeline():
    users = {p.relative_to(ROOT).as_posix() for p in _modules()
             if any(_part(m) == "pipeline" for m in imports(p)) and "pipeline" not in p.parts}
    assert users <= {"src/cifarlab/cli.py"}, users


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("[!_]*.py")), ids=lambda p: p.name)
def test_stage_scripts_are_thin(script):
    """A stage script parses its arguments and calls its pipeline module; the logic lives in src."""
    parts = {_part(m) for m in imports(script)}
    assert parts <= STAGE_SCRIPTS_MAY_IMPORT, (script.name, parts)
    assert f"cifarlab.pipeline.{script.stem}" in imports(script) or any(
        m.startswith(f"cifarlab.pipeline.{script.stem}") for m in imports(script)), script.name
    assert len(script.read_text().splitlines()) <= 45, f"{script.name}: move logic to cifarlab.pipeline"


def test_the_rule_catches_an_upward_import(tmp_path):
    """Guard the guard: an engine module importing pipeline is reported."""
    probe = PACKAGE / "engine" / "_probe_upward.py"
    probe.write_text("from cifarlab.pipeline.train import fit\n")
    try:
        with pytest.raises(AssertionError, match="may not import"):
            test_imports_go_down(probe)
    finally:
        probe.unlink()


def _functions():
    import ast

    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_functions_fit_on_a_screen_and_take_keywords_past_five():
    """No function in src/ over 80 lines; past five positional parameters, keyword-only ones."""
    too_long, too_many = [], []
    for path, fn in _functions():
        where = f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}"
        if fn.end_lineno - fn.lineno + 1 > 80:
            too_long.append(f"{where} ({fn.end_lineno - fn.lineno + 1} lines)")
        positional = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        if len(positional) > 5:
            too_many.append(f"{where} ({', '.join(positional)})")
    assert not too_long and not too_many, "\n".join(too_long + too_many)
