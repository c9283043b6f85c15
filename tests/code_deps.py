"""The cifarlab source files a stage script can run: a static walk of every import.

Imports inside functions count too (stages import torch-heavy modules lazily), and so do
packages' __init__ files that hold code. Walking the AST is exact for this code base and
fast: it never imports torch.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not str(path).startswith(str(SRC)):
                    continue
                pkg = _package_of(path).split(".")
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == "cifarlab" or m.startswith("cifarlab.")}


def _has_code(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def closure(script: Path) -> set[str]:
    """Repo-relative paths of every cifarlab file `script` may import (and thereby run)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        for mod in _imports(f):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                target = _module_file(".".join(parts[:i]))
                if target is not None and target not in seen:
                    seen.add(target)
                    todo.append(target)
    return {p.relative_to(ROOT).as_posix() for p in seen if p.name != "__init__.py" or _has_code(p)}


def fix_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> list[str]:
    """Rewrite each stage's code deps in dvc.yaml to its exact closure; return the stages changed.

    Run `python tests/code_deps.py` after adding an import to a stage's code.
    """
    import re

    import yaml

    text = path.read_text()
    changed = []
    for name, stage in yaml.safe_load(text)["stages"].items():
        script = stage["cmd"].split()[1]
        data = [d for d in stage["deps"] if not d.endswith(".py")]
        code = [script] + sorted(closure(ROOT / script))
        if set(code) == {d for d in stage["deps"] if d.endswith(".py")}:
            continue
        block = "    deps:\n" + "".join(f"      - {d}\n" for d in data + code)
        pattern = re.compile(r"(  %s:\n(?:    [^\n]*\n)*?)    deps:\n(?:      - [^\n]*\n)+" % re.escape(name))
        text, n = pattern.subn(lambda m: m.group(1) + block, text, count=1)
        assert n == 1, f"could not find the deps of stage {name}"
        changed.append(name)
    path.write_text(text)
    return changed


if __name__ == "__main__":
    print("updated:", ", ".join(fix_dvc_yaml()) or "nothing")
