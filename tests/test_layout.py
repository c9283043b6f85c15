"""The import rule of docs/architecture.md, enforced: imports only go down the layers.

Each top-level part of src/cifarlab (a folder or a module) may import the parts listed for
it, and anything inside itself. A new part must be added here, which is the moment to decide
where it sits.
"""

import ast
from pathlib import Path

import pytest

from code_deps import PACKAGE, ROOT, USER, imports

BASE = {"errors", "atomic", "params"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": set(),
    "params": {"errors"},
    "register": {"errors"},
    "data": BASE,
    "archive": BASE | {"data"},
    "optim": BASE | {"data", "register"},
    "augment": BASE | {"data", "register"},
    "models": BASE | {"data", "register"},
    "artifact": BASE | {"models", "augment", "data"},
    "engine": BASE | {"optim", "augment", "models", "data", "artifact"},
    "viz": BASE | {"engine", "models", "augment", "data", "artifact"},
    "stage": BASE,
    "gather": BASE,
    "predict": BASE | {"artifact", "engine", "augment", "models", "data"},
    "lr_find": BASE | {"engine", "optim", "augment", "models", "data"},
    "pipeline": BASE
    | {"stage", "artifact", "engine", "optim", "augment", "models", "viz", "data", "archive", "register"},
    "cli": BASE
    | {"archive", "gather", "predict", "lr_find", "pipeline", "artifact", "engine", "models", "augment", "data"},
    "__main__": {"cli"},
}
STAGE_SCRIPTS_MAY_IMPORT = {"pipeline", "params", "stage"}
#: The user package (src/cifarlab_user/) sits beside the components: it registers with
#: `register` and may reuse what the components hold, never the layers that run them.
USER_MAY_IMPORT = BASE | {"register", "data", "models", "augment", "optim"}


def _part(module: str) -> str:
    return module.split(".")[1] if module.startswith("cifarlab.") else ""


def _parts_of_package() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }


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


def test_only_register_imports_the_user_package():
    """cifarlab reaches your code one way: cifarlab.register imports it when a name is resolved."""
    users = {
        p.relative_to(ROOT).as_posix() for p in _modules() if any(m.split(".")[0] == USER.name for m in imports(p))
    }
    assert users == {"src/cifarlab/register.py"}, users


@pytest.mark.parametrize("path", sorted(USER.rglob("*.py")), ids=lambda p: p.relative_to(USER).as_posix())
def test_the_user_package_imports_only_components(path):
    bad = sorted(m for m in imports(path) if _part(m) and _part(m) not in USER_MAY_IMPORT)
    assert not bad, f"{path.relative_to(ROOT)} may not import {bad}; allowed: {sorted(USER_MAY_IMPORT)}"


def test_only_stages_and_cli_import_pipeline():
    users = {
        p.relative_to(ROOT).as_posix()
        for p in _modules()
        if any(_part(m) == "pipeline" for m in imports(p)) and "pipeline" not in p.parts
    }
    assert users <= {"src/cifarlab/cli.py"}, users


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("[!_]*.py")), ids=lambda p: p.name)
def test_stage_scripts_are_thin(script):
    """A stage script parses its arguments and calls its pipeline module; the logic lives in src."""
    parts = {_part(m) for m in imports(script)}
    assert parts <= STAGE_SCRIPTS_MAY_IMPORT, (script.name, parts)
    assert f"cifarlab.pipeline.{script.stem}" in imports(script) or any(
        m.startswith(f"cifarlab.pipeline.{script.stem}") for m in imports(script)
    ), script.name
    # statements, not lines: the formatter spreads one add_argument call over several lines
    statements = sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(script.read_text())))
    assert statements <= 25, f"{script.name}: {statements} statements; move logic to cifarlab.pipeline"


def test_the_rule_catches_an_upward_import(tmp_path):
    """Guard the guard: an engine module importing pipeline is reported."""
    probe = PACKAGE / "engine" / "_probe_upward.py"
    probe.write_text("from cifarlab.pipeline.train import fit\n")
    try:
        with pytest.raises(AssertionError, match="may not import"):
            test_imports_go_down(probe)
    finally:
        probe.unlink()


def _functions(paths):
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _where(path: Path, fn) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{fn.lineno} {fn.name}"


def _too_long_or_wide(paths) -> list[str]:
    too_long, too_many = [], []
    for path, fn in _functions(paths):
        if fn.end_lineno - fn.lineno + 1 > 80:
            too_long.append(f"{_where(path, fn)} ({fn.end_lineno - fn.lineno + 1} lines)")
        positional = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        if len(positional) > 5:
            too_many.append(f"{_where(path, fn)} ({', '.join(positional)})")
    return too_long + too_many


def _unexplained_local_imports(paths) -> list[str]:
    """Imports inside a function with no comment saying why: a comment on the import's first
    line, on another import of the same run of imports, or on the line just above the run."""
    bad = []
    for path, fn in _functions(paths):
        lines = path.read_text().splitlines()
        local = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
        first_lines = {n.lineno: n for n in local}
        for node in local:
            run = [node]
            while (prev := next((n for n in local if n.end_lineno == run[0].lineno - 1), None)) is not None:
                run.insert(0, prev)
            while (nxt := first_lines.get(run[-1].end_lineno + 1)) is not None:
                run.append(nxt)
            commented = any("#" in lines[n.lineno - 1] for n in run)
            if not commented and not lines[run[0].lineno - 2].lstrip().startswith("#"):
                bad.append(f"{_where(path, fn)}: line {node.lineno} `{lines[node.lineno - 1].strip()}`")
    return sorted(set(bad))


def test_functions_fit_on_a_screen_and_take_keywords_past_five():
    """No function in src/ over 80 lines; past five positional parameters, keyword-only ones."""
    found = _too_long_or_wide(_modules())
    assert not found, "\n".join(found)


def test_imports_inside_functions_say_why():
    """Imports sit at the module's top; one inside a function is lazy on purpose (start-up time,
    an optional or platform module, the order matplotlib needs) and a comment says so."""
    found = _unexplained_local_imports(_modules())
    assert not found, "\n".join(found)


def test_the_function_rules_catch_a_planted_violation(tmp_path):
    """Guard the guards: a long function, a wide one and an unexplained lazy import are reported;
    the same code within the rules is not."""
    probe = tmp_path / "probe.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    probe.write_text(
        f"def long():\n{body}\n\ndef wide(a, b, c, d, e, f):\n    pass\n\n\n"
        "def lazy():\n    import json\n\n    return json\n"
    )
    found = _too_long_or_wide([probe])
    assert any("long (81 lines)" in f for f in found) and any("wide (a, b, c, d, e, f)" in f for f in found)
    assert [f.split(" ", 1)[1] for f in _unexplained_local_imports([probe])] == ["lazy: line 89 `import json`"]
    short = "".join(f"    x{i} = {i}\n" for i in range(79))
    probe.write_text(
        f"def short():\n{short}\n\ndef narrow(a, b, c, d, e, *, f):\n    pass\n\n\n"
        "def lazy():\n    # lazy: a reason\n    import json\n    import os\n\n    return json, os\n"
    )
    assert _too_long_or_wide([probe]) == [] and _unexplained_local_imports([probe]) == []
