"""Every command in a ```bash block of the docs runs as typed.

The docs are README.md, docs/**/*.md, presets/README.md and bench/README.md. A ```bash
block holds runnable commands only; synopses, placeholders and output examples go in
```text blocks (`test_bash_blocks_hold_runnable_commands_only` refuses `<name>`
placeholders, `[--option]` brackets and `a / b` alternatives in them).

`test_doc_commands_run_as_typed` runs, for each file, its bash blocks in order, in one fresh
temp project (a copy of this one in a temp git repo, tests/dvc_project.py), through the
real `dvc`, `cifarlab`, `python`, `git` and `tensorboard` commands, and fails on the first
command with a non-zero exit. The docs build on themselves (the README's `dvc repro`, then
`dvc exp run ...`, then `dvc metrics diff`...), so blocks of one file share the project;
variables live within a block. What the harness prepares, once, before the first block
(`TINY_DATA` and `prepare`):

* the data: a tiny archive in the official layout (tests/cifar_factory.py), six batches of
  300 images (30 per class); params.yaml unpacks test_batch only (split 240/30/30), the
  standard-protocol preset all six; DVC-tracked by `cifarlab get-archive --set-md5`;
* params.yaml, committed: `TINY_PARAMS` (the tutorial's small Net, one epoch, small
  pictures), so a whole pipeline takes seconds; a command's own `-S` overrides and presets
  apply on top (`presets/tutorial.args` trains its 20 epochs, on the 240 images);
* a bare git repository as `origin` (with push.autoSetupRemote) for `git push`, and the
  two pictures `cifarlab predict photo.jpg another.png` reads.

Long-running servers: `tensorboard` is a shell function wrapping the real binary; it starts
the server on a free loopback port (the command's own arguments plus `--host`/`--port`),
waits up to `SERVER_TIMEOUT` s until it answers HTTP (`/data/logdir` and `/data/runs`),
then stops it; no answer is a failure. Commands that start DVC queue workers in the
background are followed, after the file's last block, by a wait for the queue to empty and
a check that no experiment failed.

`SKIP` lists what cannot run here, each with its reason, keyed by the file and the exact
command text (whitespace collapsed, comment included): an edited or new command is never
skipped silently, and a stale entry fails the lint test.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cifar_factory import make_archive
from dvc_project import ROOT, make_project

#: The docs whose ```bash blocks run.
DOC_FILES = sorted(
    {
        ROOT / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *[p for p in (ROOT / "presets" / "README.md", ROOT / "bench" / "README.md") if p.exists()],
    }
)

#: The tiny data every block runs on: images per class in the archive (split 8:1:1).
TINY_DATA = 30
#: all six, as the official archive has them: params.yaml reads test_batch only, and
#: presets/standard.args (the standard protocol) all six
BATCHES = ("test_batch", *(f"data_batch_{i}" for i in range(1, 6)))  # test_batch first: the same images as before
#: params.yaml of the temp project, before the first block (dotted keys).
TINY_PARAMS = {
    "model.name": "tutorial.net",
    "train.epochs": 1,
    "train.batch_size": 32,
    "evaluate.batch_size": 100,
    "visualize.batch_size": 100,
    "visualize.grid_images": 16,
    "visualize.embedding_images": 30,
    "visualize.gradcam_images": 4,
}
#: Seconds a server gets to answer HTTP; seconds one block may run.
SERVER_TIMEOUT = 90
BLOCK_TIMEOUT = 900

_INSTALLS = "installs a DVC plugin from the internet into the environment (no network, and the venv is shared)"
#: (doc, exact command text, whitespace collapsed) -> why it does not run here. Reviewed.
SKIP = {
    (
        "docs/architecture.md",
        "python tests/code_deps.py",
    ): "a tool in the test folder of this repository, which the temp project does not copy "
    "(tests/test_dvc_yaml.py checks what it writes)",
    (
        "README.md",
        "bash scripts/pipeline.sh # the whole pipeline on real CIFAR-10 (downloads the official archive)",
    ): "downloads the official 163 MB archive from the internet",
    (
        "README.md",
        "bash scripts/test.sh # the test suite: pytest, unit + end-to-end through the real dvc CLI + real data",
    ): "the test suite itself (this harness is part of it)",
    (
        "README.md",
        "bash scripts/test.sh # everything: what CI runs (`.ci/run`)",
    ): "the test suite itself (this harness is part of it)",
    (
        "README.md",
        'bash scripts/test.sh -m "not slow" # the quick part: unit tests and end-to-end tests on tiny data (about 9 minutes on 2 cores)',
    ): "the test suite itself (this harness is part of it)",
    (
        "README.md",
        "bash scripts/test.sh -m slow # only the slow ones: real CIFAR-10, torchrun with 2 processes, visualize end to end",
    ): "the test suite itself (this harness is part of it)",
    (
        "README.md",
        ".venv/bin/python -m pytest tests/test_archive.py -q # one module, once set up",
    ): "the test suite itself (the temp project has no tests/ and no .venv)",
    (
        "README.md",
        "torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host0:29400 --nproc-per-node 4 \\ "
        "stages/train.py --index data/index --stats data/stats/normalize.json --meta data/meta.json \\ "
        "--models models --reports reports/train --tensorboard reports/tensorboard/train",
    ): "several machines: it waits for a second node at host0:29400 (tests/test_ddp.py runs torchrun on one)",
    (
        "docs/team.md",
        "dvc remote modify --local local url /mnt/team/cifarlab-dvc-remote # writes .dvc/config.local (git-ignored)",
    ): "a shared disk at /mnt/team that this machine does not have; every later push of the page would go there",
    ("docs/team.md", 'pip install "dvc[s3]" # the dvc-s3 plugin'): _INSTALLS,
    ("docs/team.md", 'pip install "dvc[gs]"'): _INSTALLS,
    ("docs/team.md", 'pip install "dvc[azure]"'): _INSTALLS,
    ("docs/team.md", 'pip install "dvc[ssh]"'): _INSTALLS,
    (
        "docs/team.md",
        "dvc push # send everything to the new cloud default",
    ): "a real cloud remote (the bucket or server above does not exist; tests/test_s3_remote.py pushes to a local S3 server)",
}


# --------------------------------------------------------------------------- extraction


@dataclass
class Block:
    doc: str  # path relative to the repository root
    line: int  # line of the opening fence
    lang: str
    text: str


_FENCE = re.compile(r"^([ \t]*)```([\w-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file (indented ones too, dedented)."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        indent = m.group(1)
        body = "".join(
            ln[len(indent) :] if ln.startswith(indent) else ln for ln in m.group(3).splitlines(keepends=True)
        )
        out.append(Block(str(path.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, m.group(2), body))
    return out


def bash_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in ("bash", "sh", "shell", "console")]


def commands(text: str) -> list[str]:
    """The top-level commands of a block: lines joined until bash parses them as complete
    (continuation lines, multi-line quotes, loops). Blank and comment-only lines drop out."""
    out, acc = [], []
    for line in text.splitlines():
        if not acc and (not line.strip() or line.lstrip().startswith("#")):
            continue
        acc.append(line)
        candidate = "\n".join(acc)
        if candidate.endswith("\\"):
            continue
        check = subprocess.run(["bash", "-n", "-c", candidate], capture_output=True, text=True)
        if check.returncode == 0 and "here-document" not in check.stderr:  # an open <<EOF is not complete
            out.append(candidate)
            acc = []
    if acc:
        out.append("\n".join(acc))  # unparsable: bash reports it when the block runs
    return out


def key(command: str) -> str:
    return " ".join(command.split())


_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1[^\n]*\n.*?^\s*\2\s*$", re.S | re.M)


def code_parts(command: str) -> tuple[str, str]:
    """(the command without its comments, the same with quoted text blanked out).

    A here-document's body is a program's input (Python, say), not shell: it is left out."""
    command = _HEREDOC.sub(lambda m: m.group(0).split("\n", 1)[0], command)
    code, unquoted, quote, prev = [], [], None, " "
    i = 0
    while i < len(command):
        c = command[i]
        if quote is None and c == "#" and (prev.isspace() or prev in ";&|("):
            while i < len(command) and command[i] != "\n":
                i += 1
            continue
        if c == "\\" and quote != "'" and i + 1 < len(command):
            code.append(command[i : i + 2])
            unquoted.append("__" if quote is None else "")
            prev = command[i + 1]
            i += 2
            continue
        if quote is None and c in "'\"":
            quote = c
        elif quote == c:
            quote = None
        code.append(c)
        unquoted.append(c if quote is None and c not in "'\"" else ("" if c not in "'\"" else "Q"))
        prev = c
        i += 1
    return "".join(code), "".join(unquoted)


_PLACEHOLDER = re.compile(r"<[A-Za-z][\w .:/-]*>")
_BRACKET = re.compile(r"(?<![\w$\]])\[(?:--?[A-Za-z]|\.\.\.|[A-Za-z][\w-]*\])")
_ALTERNATIVE = re.compile(r"\S\s+/\s+\S")


def lint(command: str) -> list[str]:
    """Why a command is not runnable as typed (empty: fine)."""
    code, unquoted = code_parts(command)
    problems = []
    for m in _PLACEHOLDER.finditer(code):
        problems.append(f"placeholder {m.group(0)!r}")
    for m in _BRACKET.finditer(unquoted):
        problems.append(f"option bracket at {unquoted[m.start() : m.start() + 12]!r}")
    for m in _ALTERNATIVE.finditer(unquoted):
        problems.append(f"alternative {m.group(0)!r} (one command per line)")
    return problems


def all_commands() -> list[tuple[Block, str]]:
    return [(b, c) for path in DOC_FILES for b in bash_blocks(path) for c in commands(b.text)]


# --------------------------------------------------------------------------- fast checks


def test_bash_blocks_hold_runnable_commands_only():
    bad = [f"{b.doc}:{b.line}: {c.splitlines()[0]!r}: {', '.join(p)}" for b, c in all_commands() if (p := lint(c))]
    assert not bad, "not runnable as typed (use a ```text block, or a real value):\n" + "\n".join(bad)


def test_a_here_document_stays_one_command():
    assert commands("python - <<'EOF'\nimport json\nprint(1)\nEOF\nls") == [
        "python - <<'EOF'\nimport json\nprint(1)\nEOF",
        "ls",
    ]


def test_lint_leaves_here_documents_alone():
    assert not lint("python - <<'EOF'\nx = a[None]\nprint(x / 2)\nEOF")
    assert lint("python - <<'EOF'\nx = 1\nEOF\ndvc exp apply <exp>")


def test_lint_catches_the_offending_forms():
    assert lint("dvc exp apply <exp> && git commit -am x")
    assert lint("python bench/speed.py [--full] [--target 0.85]")
    assert lint("dvc push / dvc pull")
    assert lint("cp FILE [DEST]")
    assert not lint("dvc exp run -S 'optimizer.lr=0.01,0.05'   # a / b in a comment, <exp> too")
    assert not lint("python -c 'print([x for x in (1, 2)][0] / 2)'")
    assert not lint('echo "$best" 2>&1 < /dev/null && [ -f params.yaml ]')


def test_commands_split_as_bash_parses_them():
    text = "a \\\n  b\n# note\nx=$(python -c '\nprint(1)\n')\nwhile false; do\n  :\ndone\necho hi   # c\n"
    assert commands(text) == [
        "a \\\n  b",
        "x=$(python -c '\nprint(1)\n')",
        "while false; do\n  :\ndone",
        "echo hi   # c",
    ]


def test_skip_list_names_existing_commands_only():
    present = {(b.doc, key(c)) for b, c in all_commands()}
    stale = [k for k in SKIP if k not in present]
    assert not stale, f"skip entries that match no documented command (edit or remove them): {stale}"
    assert all(reason.strip() for reason in SKIP.values())


def test_every_preset_runs_in_a_documented_command():
    """Each presets/*.args is applied as the README says, in a command the harness runs."""
    ran = [key(c) for b, c in all_commands() if (b.doc, key(c)) not in SKIP]
    for args in sorted((ROOT / "presets").glob("*.args")):
        pattern = re.compile(rf"dvc exp run -n \S+ \$\(cat presets/{re.escape(args.name)}\)")
        assert any(pattern.search(c) for c in ran), f"no documented command runs presets/{args.name}"


# --------------------------------------------------------------------------- the harness

_PRELUDE = r"""
__harness_mark() { echo "+++ harness $(date +%s.%N) command $1: $2" >&2; }
__harness_check() {
  if [ "$1" -ne 0 ]; then echo "+++ harness: command $2 exited $1" >&2; exit "$1"; fi
}
# tensorboard runs as typed, on a free loopback port, until it answers HTTP; then it stops.
tensorboard() {
  local port log pid rc
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$(mktemp "$HARNESS_TMP/tensorboard.XXXX.log")
  command tensorboard "$@" --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
  pid=$!
  python - "$port" "$pid" "$HARNESS_SERVER_TIMEOUT" <<'PY'
import json, os, sys, time, urllib.request
port, pid, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while True:
    try:
        base = f"http://127.0.0.1:{port}"
        logdir = json.load(urllib.request.urlopen(base + "/data/logdir", timeout=10))["logdir"]
        runs = json.load(urllib.request.urlopen(base + "/data/runs", timeout=10))
        print(f"tensorboard answered on port {port}: logdir {logdir}, runs {runs}")
        break
    except Exception as exc:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(f"tensorboard exited before answering HTTP ({exc})")
        if time.monotonic() > deadline:
            sys.exit(f"tensorboard did not answer HTTP within {limit:.0f} s ({exc})")
        time.sleep(0.5)
PY
  rc=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  [ "$rc" -eq 0 ] || cat "$log" >&2
  return "$rc"
}
"""


def script(block: Block, first: int) -> tuple[str, list[str]]:
    """The block as a bash script: every command checked for a non-zero exit, skipped ones
    replaced by a line saying why; returns (script, the commands)."""
    cmds = commands(block.text)
    # bash's defaults, as a user's shell has them: no pipefail (`while dvc queue status | grep -q
    # ...` would end early when grep's early exit breaks dvc's pipe), no errexit (it skips the
    # failures inside `a && b` lists): the exit status of every command is checked instead
    lines = ['. "$HARNESS_PRELUDE"']
    for n, cmd in enumerate(cmds, first):
        reason = SKIP.get((block.doc, key(cmd)))
        label = cmd.splitlines()[0][:100].replace("'", "")
        lines.append(f"__harness_mark {n} '{label}'")
        if reason:
            lines.append(f"echo 'skipped: {reason}'")
            continue
        lines.append(cmd)
        lines.append(f"__harness_check $? {n}")
    lines.append("__harness_mark end 'end of block'")
    return "\n".join(lines) + "\n", cmds


def prepare(tmp: Path):
    """The temp project every block of one doc runs in (see the module docstring)."""
    from PIL import Image

    archive = make_archive(tmp / "cifar-10-python.tar.gz", batches=BATCHES, per_class=TINY_DATA, learnable=True)
    origin = tmp / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    proj = make_project(tmp / "cifarlab", archive, params=TINY_PARAMS)
    proj.run("git", "remote", "add", "origin", str(origin))
    proj.run("git", "config", "push.autoSetupRemote", "true")
    Image.new("RGB", (64, 48), (200, 120, 40)).save(proj.path / "photo.jpg")
    Image.new("RGBA", (20, 30), (30, 90, 200, 255)).save(proj.path / "another.png")
    return proj


def wait_for_queue(proj, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = proj.dvc("queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, f"the DVC queue did not empty in {timeout} s:\n{status}"
        time.sleep(5)


def _docs_with_commands() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in DOC_FILES if bash_blocks(p)]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("doc", _docs_with_commands())
def test_doc_commands_run_as_typed(doc, tmp_path):
    start = time.monotonic()
    proj = prepare(tmp_path)
    env = dict(
        proj.env,
        HARNESS_PRELUDE=str(tmp_path / "prelude.sh"),
        HARNESS_TMP=str(tmp_path),
        HARNESS_SERVER_TIMEOUT=str(SERVER_TIMEOUT),
    )
    (tmp_path / "prelude.sh").write_text(_PRELUDE)
    timings, queued, n = [], False, 1
    for block in bash_blocks(ROOT / doc):
        text, cmds = script(block, n)
        n += len(cmds)
        queued = queued or any("dvc queue start" in c for c in cmds)
        path = tmp_path / f"block{block.line}.sh"
        path.write_text(text)
        log_path = tmp_path / f"block{block.line}.log"
        t0 = time.monotonic()
        # output to a file, not a pipe: queue workers inherit it and outlive the block
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                ["bash", str(path)],
                cwd=proj.path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = "timeout"
        output = log_path.read_text()
        timings.append((block.line, time.monotonic() - t0, output))
        if rc != 0:
            failed = re.findall(r"\+\+\+ harness: command (\d+) exited", output)
            which = cmds[int(failed[-1]) - (n - len(cmds))] if failed else "(see output)"
            pytest.fail(f"{doc}:{block.line}: {which!r} failed ({rc}):\n{output[-6000:]}")
    if queued:
        status = wait_for_queue(proj)
        assert "Failed" not in status, f"{doc}: a queued experiment failed:\n{status}"
    report = [f"{doc}: {time.monotonic() - start:.0f} s in all"]
    for line, secs, output in timings:
        report.append(f"  block at line {line}: {secs:.1f} s")
        marks = re.findall(r"\+\+\+ harness ([\d.]+) command (\w+): (.*)", output)
        for (t, _, label), (nxt, _, _) in itertools.pairwise(marks):
            report.append(f"    {float(nxt) - float(t):6.1f} s  {label}")
    print("\n".join(report))


@pytest.mark.parametrize(
    "text, ok",
    [
        ("true\nfalse && true\ntrue\n", False),  # set -e would let a failing && list pass
        ("x=$(false)\n", False),  # an assignment's status is its command's
        ('x=1\n[ "$x" = 1 ]\n', True),  # variables live within a block
        ("ls /nonexistent-dir\n", False),
    ],
)
def test_a_block_fails_on_any_failing_command(tmp_path, text, ok):
    (tmp_path / "prelude.sh").write_text(_PRELUDE)
    body, _ = script(Block("x.md", 1, "bash", text), 1)
    res = subprocess.run(
        ["bash", "-c", body],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, HARNESS_PRELUDE=str(tmp_path / "prelude.sh")),
    )
    assert (res.returncode == 0) == ok, res.stderr
