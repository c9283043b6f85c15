"""The `cifarlab` command as users meet it: --version, `python -m cifarlab`, help written for
users on the top level, help text on every option of every command and stage script, and
`predict --json` (one object per file; a broken file reported, the others still classified;
exit status 1 when any file failed)."""

from __future__ import annotations

import argparse
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cifar_factory import CLASSES
from cifarlab.cli import main as cli
from code_deps import ROOT
from test_export import make_model_file


class Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        a.dest
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())
    ]


def cli_parser(monkeypatch) -> argparse.ArgumentParser:
    def capture(self, *args, **kwargs):
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as exc:
        cli([])
    return exc.value.parser


def test_every_cli_option_has_help(monkeypatch):
    parsers = dict(_parsers(cli_parser(monkeypatch), "cifarlab"))
    assert {"cifarlab predict", "cifarlab export", "cifarlab get-archive", "cifarlab tensorboard-gather"} <= set(
        parsers
    )
    missing = {name: _undocumented(p) for name, p in parsers.items() if _undocumented(p)}
    assert not missing, missing


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("[!_]*.py")), ids=lambda p: p.name)
def test_every_stage_script_option_has_help(monkeypatch, script):
    def capture(self, *args, **kwargs):
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.syspath_prepend(str(ROOT / "stages"))
    with pytest.raises(Captured) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert not _undocumented(exc.value.parser), (script.name, _undocumented(exc.value.parser))


def test_version_and_python_m(tmp_path):
    env_run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=60)
    via_m = subprocess.run([sys.executable, "-m", "cifarlab", "--version"], **env_run)
    assert via_m.returncode == 0 and via_m.stdout.startswith("cifarlab "), via_m
    version = via_m.stdout.split()[1]
    assert version[0].isdigit() or version == "unknown", version
    top = subprocess.run([sys.executable, "-m", "cifarlab", "--help"], **env_run)
    assert top.returncode == 0
    assert top.stdout.startswith("usage: cifarlab ")  # not __main__.py
    for command in ("get-archive", "predict", "export", "tensorboard-gather"):
        assert f"\n    {command}" in top.stdout, command
    # written for users: what the tool is for, no notes about how it is implemented
    assert "dvc repro" in top.stdout and "imports only" not in top.stdout
    none = subprocess.run([sys.executable, "-m", "cifarlab"], **env_run)
    assert none.returncode == 2 and "required: COMMAND" in none.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("cli") / "model.pt", "tutorial.net")


def test_predict_json_reports_each_file_and_goes_on(model, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    other = tmp_path / "other.jpg"
    Image.new("L", (20, 20), 90).save(other)
    files = [good, broken, tmp_path / "missing.png", other]
    assert cli(["predict", *map(str, files), "--model", str(model), "--top-k", "2", "--json"]) == 1
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["path"] for r in records] == [str(f) for f in files]
    for r in (records[0], records[3]):
        assert set(r) == {"path", "top_k"} and len(r["top_k"]) == 2
        assert all(set(t) == {"class", "probability"} and t["class"] in CLASSES for t in r["top_k"])
        probs = [t["probability"] for t in r["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert set(records[1]) == {"path", "error"} and "not a readable image" in records[1]["error"]
    assert "no such file" in records[2]["error"]
    assert captured.err == ""

    assert cli(["predict", str(good), str(other), "--model", str(model), "--json"]) == 0  # all good: 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_predict_text_reports_a_broken_file_on_stderr_and_goes_on(model, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    assert cli(["predict", str(broken), str(good), "--model", str(model)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and captured.out.count("\n") == 1
    assert captured.err.strip() == f"error: {broken}: not a readable image (UnidentifiedImageError)"


def test_predict_bad_top_k_is_one_line_before_any_file(model, tmp_path, capsys):
    assert cli(["predict", str(tmp_path / "x.png"), "--model", str(model), "--top-k", "0", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == "error: --top-k must be between 1 and 10, got 0"
