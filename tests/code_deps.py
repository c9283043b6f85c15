"""Which cifarlab code a stage script runs, and how dvc.yaml declares it.

`closure` is a static walk of every import (imports inside functions count too: stages
import torch-heavy modules lazily), packages' __init__ files that hold code included. It
parses the AST and never imports torch.

dvc.yaml declares a stage's code by folder where the stage imports every module of it, and
file by file elsewhere (the data stages use a few modules each; the top-level helpers).
`check_declared` holds it to both directions: every module the stage imports is covered,
and nothing declared holds a module the stage never imports, so an edit reruns exactly the
stages that run the edited code. `python tests/code_deps.py` rewrites the declarations.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "cifarlab"
USER = SRC / "cifarlab_user"
OURS = ("cifarlab", "cifarlab_user")


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    parts.pop()  # the module's own name, or __init__
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every cifarlab or user-package module (or module.name) that `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not path.is_relative_to(SRC):
                    continue
                pkg = _package_of(path).split(".")
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in OURS}


def has_code(path: Path) -> bool:
    """False for an __init__.py that holds at most a docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def closure(script: Path) -> set[str]:
    """Repo-relative paths of every cifarlab file `script` may import (and thereby run)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        for mod in imports(f):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                target = _module_file(".".join(parts[:i]))
                # the user package: cifarlab.register imports every module of it
                reached = (
                    sorted(USER.rglob("*.py"))
                    if target is not None and target.is_relative_to(USER)
                    else [target]
                    if target is not None
                    else []
                )
                for t in reached:
                    if t not in seen:
                        seen.add(t)
                        todo.append(t)
    return {p.relative_to(ROOT).as_posix() for p in seen if p.name != "__init__.py" or has_code(p)}


def folder_modules(folder: str) -> set[str]:
    """The code files of a declared folder (empty __init__ files run nothing and do not count)."""
    return {
        p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py" or has_code(p)
    }


def declaration(script: str) -> list[str]:
    """What dvc.yaml should declare for a stage script: its subpackages used whole, its other files."""
    used = closure(ROOT / script)
    code = [script] + sorted(u for u in used if u.startswith("src/cifarlab/pipeline/"))
    used -= set(code)
    folders = sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    for folder in [*folders, USER]:
        rel = folder.relative_to(ROOT).as_posix()
        mods = folder_modules(rel)
        if mods and mods <= used:
            code.append(rel)
            used -= mods
    return code + sorted(used)


def check_declared(script: str, deps: list[str]) -> list[str]:
    """The problems with a stage's declared code: uncovered imports, declarations it never runs."""
    used = closure(ROOT / script) | {script}
    code = [d for d in deps if d.startswith(("src/", "stages/"))]
    covered: set[str] = set()
    problems = []
    for d in code:
        if (ROOT / d).is_dir():
            mods = folder_modules(d)
            unused = sorted(mods - used)
            if unused:
                problems.append(f"folder {d} holds modules the stage never imports: {unused}")
            covered |= mods
        elif d not in used:
            problems.append(f"{d} is declared but the stage never imports it")
        else:
            covered.add(d)
    missing = sorted(used - covered)
    if missing:
        problems.append(f"imported but not declared: {missing}")
    return problems


def fix_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> list[str]:
    """Rewrite each stage's code deps in dvc.yaml to `declaration`; return the stages changed."""
    import yaml

    text = path.read_text()
    changed = []
    for name, stage in yaml.safe_load(text)["stages"].items():
        script = stage["cmd"].split()[1]
        data = [d for d in stage["deps"] if not d.startswith(("src/", "stages/"))]
        code = declaration(script)
        if code == [d for d in stage["deps"] if d.startswith(("src/", "stages/"))]:
            continue
        block = "    deps:\n" + "".join(f"      - {d}\n" for d in data + code)
        pattern = re.compile(rf"(  {re.escape(name)}:\n(?:    [^\n]*\n)*?)    deps:\n(?:      - [^\n]*\n)+")
        text, n = pattern.subn(lambda m, block=block: m.group(1) + block, text, count=1)
        assert n == 1, f"could not find the deps of stage {name}"
        changed.append(name)
    path.write_text(text)
    return changed


if __name__ == "__main__":
    print("updated:", ", ".join(fix_dvc_yaml()) or "nothing")
